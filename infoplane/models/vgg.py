"""VGG11 with and without batch normalisation, CIFAR style (Sakamoto & Sato 2024 sec. 2.2, appendix F.1.1).

Each convolution is one layer (Sakamoto & Sato 2024 F.1.1: "allowing for training layer-wisely for each
convolutional layer"): ``conv1 .. conv8`` = ``Conv3x3 [-> BN] -> ReLU [-> MaxPool2]`` with the VGG11
configuration ``64 M 128 M 256 256 M 512 512 M 512 512 M``; ``out`` = ``Flatten -> Linear`` (the CIFAR
variant's single classifier). A max-pool is skipped once the feature map is 1x1, so small inputs work.
``width`` multiplies every channel count. Shapes: ``(N, C, H, W) -> (N, num_classes)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Union

import torch
from torch import nn

from .base import LayeredNet, register_model

VGG11_CFG: List[Union[int, str]] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def _vgg(input_shape: Sequence[int], num_classes: int, batch_norm: bool, width: float) -> LayeredNet:
    if len(input_shape) != 3:
        raise ValueError(f"vgg11 takes images (C, H, W), got input_shape={tuple(input_shape)}")
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    c, h, w = (int(s) for s in input_shape)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    prev, size, i = c, min(h, w), 0
    for j, v in enumerate(VGG11_CFG):
        if v == "M":
            continue
        i += 1
        ch = max(1, int(round(int(v) * width)))
        mods: List[nn.Module] = [nn.Conv2d(prev, ch, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            mods.append(nn.BatchNorm2d(ch))
        mods.append(nn.ReLU(inplace=True))
        if j + 1 < len(VGG11_CFG) and VGG11_CFG[j + 1] == "M" and size >= 2:
            mods.append(nn.MaxPool2d(2))
            size //= 2
        layers[f"conv{i}"] = nn.Sequential(*mods)
        prev = ch
    with torch.no_grad():
        probe = nn.Sequential(*layers.values()).eval()
        flat = probe(torch.zeros(1, c, h, w)).numel()
    layers["out"] = nn.Sequential(nn.Flatten(), nn.Linear(flat, int(num_classes)))
    return LayeredNet(layers, input_shape, num_classes)


@register_model("vgg11")
def vgg11(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0) -> LayeredNet:
    """VGG11 without batch normalisation (layers conv1..conv8, out)."""
    return _vgg(input_shape, num_classes, False, width)


@register_model("vgg11_bn")
def vgg11_bn(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: float = 1.0) -> LayeredNet:
    """VGG11 with batch normalisation after every convolution (layers conv1..conv8, out)."""
    return _vgg(input_shape, num_classes, True, width)
