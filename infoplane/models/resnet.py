"""ResNet18 / ResNet50 with the CIFAR stem (Sakamoto & Sato 2024 sec. 2.2, 4.3, appendix F.1.1).

"The smallest unit containing a single skip connection, such as two convolution layers for ResNet18
and three convolution layers for ResNet50, is trained as one module in layer-wise training"
(Sakamoto & Sato 2024 F.1.1). Layers: ``stem`` (Conv3x3 -> BN -> ReLU), ``block1 .. blockN`` (one residual block
each: 8 for ResNet18, 16 for ResNet50) and ``out`` (global average pool -> Linear). ResNet18 thus has
the nine middle representations of Sakamoto & Sato 2024 sec. 4.3. ``width`` is the first stage's channel count
(64 in the paper). Shapes: ``(N, C, H, W) -> (N, num_classes)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence, Type, Union

import torch
from torch import nn

from .base import LayeredNet, register_model


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) skip: ``relu(F(x) + s(x))``."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        out = planes * self.expansion
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and c_in == out else nn.Sequential(
            nn.Conv2d(c_in, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions (expansion 4) with a skip: ``relu(F(x) + s(x))``."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and c_in == out else nn.Sequential(
            nn.Conv2d(c_in, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


def _resnet(block: Type[Union[BasicBlock, Bottleneck]], counts: Sequence[int], input_shape: Sequence[int],
            num_classes: int, width: int) -> LayeredNet:
    if len(input_shape) != 3:
        raise ValueError(f"resnet takes images (C, H, W), got input_shape={tuple(input_shape)}")
    if int(width) < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    c = int(input_shape[0])
    w = int(width)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)))
    prev, k = w, 0
    for stage, n in enumerate(counts):
        planes = w * (2 ** stage)
        for b in range(n):
            k += 1
            stride = 2 if stage > 0 and b == 0 else 1
            layers[f"block{k}"] = block(prev, planes, stride)
            prev = planes * block.expansion
    layers["out"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, int(num_classes)))
    return LayeredNet(layers, input_shape, num_classes)


@register_model("resnet18")
def resnet18(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: int = 64) -> LayeredNet:
    """ResNet18 (BasicBlock x [2, 2, 2, 2]): layers stem, block1..block8, out."""
    return _resnet(BasicBlock, (2, 2, 2, 2), input_shape, num_classes, width)


@register_model("resnet50")
def resnet50(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: int = 64) -> LayeredNet:
    """ResNet50 (Bottleneck x [3, 4, 6, 3]): layers stem, block1..block16, out."""
    return _resnet(Bottleneck, (3, 4, 6, 3), input_shape, num_classes, width)
