"""Toy-MLP of Sakamoto & Sato 2024 (sec. 4.1, appendix F.4.4) and the toy model of their sec. 4.2.

``mlp``: layers ``fc1 .. fc{depth}`` (each ``Linear -> ReLU``; ``fc1`` flattens its input) and
``out`` (``Linear`` to the logits). ``toy-linear``: a bias-free linear first layer ``w``
(z_1 = W x on the flattened input, W square) followed by the same hidden layers and ``out``.
Shapes: ``(N, *input_shape) -> (N, num_classes)``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .base import LayeredNet, register_model


class FlatLinear(nn.Linear):
    """``nn.Linear`` on the flattened input: (N, *shape) -> (N, out_features); parameters as nn.Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x.flatten(1))


def _hidden_layers(d_in: int, width: int, depth: int, inplace_relu: bool, flatten_first: bool
                   ) -> "OrderedDict[str, nn.Module]":
    """``fc1 .. fc{depth}``: Linear(prev, width) -> ReLU each (``fc1`` flattens first if asked)."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    prev = int(d_in)
    for i in range(1, int(depth) + 1):
        mods = [nn.Flatten()] if (i == 1 and flatten_first) else []
        mods += [nn.Linear(prev, int(width)), nn.ReLU(inplace=inplace_relu)]
        layers[f"fc{i}"] = nn.Sequential(*mods)
        prev = int(width)
    return layers


def _check(width: int, depth: int, num_classes: int) -> None:
    if int(width) < 1 or int(depth) < 1:
        raise ValueError(f"mlp needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


@register_model("mlp")
def mlp(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, width: int = 512,
        depth: int = 5, inplace_relu: bool = True) -> LayeredNet:
    """Toy-MLP: ``depth`` hidden layers of ``width`` units (F.4.4: five layers, 512 units).

    The ReLUs are in-place by default (as in many public models), which is why hooks must clone.
    """
    _check(width, depth, num_classes)
    d_in = int(math.prod(int(s) for s in input_shape))
    layers = _hidden_layers(d_in, width, depth, inplace_relu, flatten_first=True)
    layers["out"] = nn.Linear(int(width), int(num_classes))
    return LayeredNet(layers, input_shape, num_classes)


@register_model("toy-linear")
def toy_linear(input_shape: Sequence[int] = (2,), num_classes: int = 2, width: int = 512, depth: int = 5,
               inplace_relu: bool = True) -> LayeredNet:
    """The toy model of Sakamoto & Sato 2024 sec. 4.2 (Figure 4): z_1 = W x, then the Toy-MLP.

    Layer ``w`` is a bias-free linear map R^d -> R^d of the flattened input (d = 2 for the
    ``toy-rings`` data), so W is the 2 x 2 matrix whose rank collapses under layer-wise training
    with a linear auxiliary classifier and weight decay on W (eq. 9-10); its parameter is
    ``w.weight``. Then ``fc1 .. fc{depth}`` (Linear -> ReLU, ``width`` units) and ``out``.
    ``extract --layers all`` sees ``w, fc1, ..., out``.
    """
    _check(width, depth, num_classes)
    shape = tuple(int(s) for s in input_shape)
    d = int(math.prod(shape))
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(w=FlatLinear(d, d, bias=False))
    layers.update(_hidden_layers(d, width, depth, inplace_relu, flatten_first=False))
    layers["out"] = nn.Linear(int(width), int(num_classes))
    return LayeredNet(layers, shape, num_classes)
