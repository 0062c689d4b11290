"""Toy-MLP of seed 000 (sec. 4.1 and appendix F.4.4): fully connected ReLU layers, width 512.

Layers ``fc1 .. fc{depth}`` (each ``Linear -> ReLU``; ``fc1`` flattens its input) and ``out``
(``Linear`` to the logits). Shapes: ``(N, *input_shape) -> (N, num_classes)``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

from torch import nn

from .base import LayeredNet, register_model


@register_model("mlp")
def mlp(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, width: int = 512,
        depth: int = 5, inplace_relu: bool = True) -> LayeredNet:
    """Toy-MLP: ``depth`` hidden layers of ``width`` units (seed 000 F.4.4: five layers, 512 units).

    The ReLUs are in-place by default (as in many public models), which is why hooks must clone.
    """
    if int(width) < 1 or int(depth) < 1:
        raise ValueError(f"mlp needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    d_in = int(math.prod(int(s) for s in input_shape))
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    prev = d_in
    for i in range(1, int(depth) + 1):
        mods = [nn.Flatten()] if i == 1 else []
        mods += [nn.Linear(prev, int(width)), nn.ReLU(inplace=inplace_relu)]
        layers[f"fc{i}"] = nn.Sequential(*mods)
        prev = int(width)
    layers["out"] = nn.Linear(prev, int(num_classes))
    return LayeredNet(layers, input_shape, num_classes)
