"""LeNet5 (LeCun et al. 1998) as used in Sakamoto & Sato 2024 sec. 4.1: two conv layers and three linear layers.

Layers: ``conv1`` (Conv5x5 -> ReLU -> MaxPool2), ``conv2`` (Conv5x5 -> ReLU -> MaxPool2),
``fc1`` (Flatten -> Linear -> ReLU), ``fc2`` (Linear -> ReLU), ``out`` (Linear -> logits).
Padding adapts to the input size: 32x32 (CIFAR) uses none, 28x28 (MNIST) pads ``conv1`` by 2, and
small inputs such as the 8x8 digits pad both convolutions by 2 so the spatial size never vanishes.
Shapes: ``(N, C, H, W) -> (N, num_classes)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence, Tuple

import torch
from torch import nn

from .base import LayeredNet, register_model


def _lenet_padding(h: int, w: int) -> Tuple[int, int]:
    """Paddings of conv1 and conv2 so that every stage keeps a spatial size >= 1."""
    size = min(h, w)
    p1 = 0 if size >= 32 else 2
    after1 = (size + 2 * p1 - 4) // 2
    p2 = 0 if after1 >= 10 else 2
    after2 = (after1 + 2 * p2 - 4) // 2
    if after1 < 1 or after2 < 1:
        raise ValueError(f"lenet5 needs inputs of at least 4x4 pixels, got {h}x{w}")
    return p1, p2


@register_model("lenet5")
def lenet5(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
           channels: Sequence[int] = (6, 16), hidden: Sequence[int] = (120, 84)) -> LayeredNet:
    """LeNet5 with paper widths ``channels=(6, 16)``, ``hidden=(120, 84)`` (smaller for tests)."""
    if len(input_shape) != 3:
        raise ValueError(f"lenet5 takes images (C, H, W), got input_shape={tuple(input_shape)}")
    if len(channels) != 2 or len(hidden) != 2 or min(*channels, *hidden) < 1:
        raise ValueError(f"lenet5 needs two positive conv channels and two hidden widths, got "
                         f"channels={channels}, hidden={hidden}")
    c, h, w = (int(s) for s in input_shape)
    p1, p2 = _lenet_padding(h, w)
    c1, c2 = int(channels[0]), int(channels[1])
    conv1 = nn.Sequential(nn.Conv2d(c, c1, 5, padding=p1), nn.ReLU(), nn.MaxPool2d(2))
    conv2 = nn.Sequential(nn.Conv2d(c1, c2, 5, padding=p2), nn.ReLU(), nn.MaxPool2d(2))
    with torch.no_grad():
        flat = conv2(conv1(torch.zeros(1, c, h, w))).numel()
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(
        conv1=conv1,
        conv2=conv2,
        fc1=nn.Sequential(nn.Flatten(), nn.Linear(flat, int(hidden[0])), nn.ReLU()),
        fc2=nn.Sequential(nn.Linear(int(hidden[0]), int(hidden[1])), nn.ReLU()),
        out=nn.Linear(int(hidden[1]), int(num_classes)),
    )
    return LayeredNet(layers, input_shape, num_classes)
