"""The CIFAR ResNet family (He et al. 2016, sec. 4.2) used by InfoPro (Wang et al. 2021): ResNet-32, ResNet-110.

Depth ``6n + 2``: ``stem`` (Conv3x3 to ``width`` channels -> BN -> ReLU), then ``3n`` basic residual
blocks in three stages of ``width, 2 width, 4 width`` channels (16/32/64 in the paper; stride 2 at the
start of stages 2 and 3, 1x1 projection skips there), then ``out`` (global average pool -> Linear).
Wang et al. 2021, appendix F: every residual block is one basic layer and the first convolution one more, so
ResNet-32 has 16 and ResNet-110 55 basic layers; ``out`` counts 0 basic layers and joins the last
local module. Shapes: ``(N, C, H, W) -> (N, num_classes)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import nn

from .base import LayeredNet, register_model
from .resnet import BasicBlock


def cifar_resnet(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, depth: int = 32,
                 width: int = 16) -> LayeredNet:
    """A CIFAR ResNet of ``depth = 6n + 2`` layers: children stem, block1..block{3n}, out."""
    if len(input_shape) != 3:
        raise ValueError(f"cifar resnet takes images (C, H, W), got input_shape={tuple(input_shape)}")
    if int(depth) < 8 or (int(depth) - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, 110, ...), got {depth}")
    if int(width) < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    n = (int(depth) - 2) // 6
    w = int(width)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(int(input_shape[0]), w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)))
    prev, k = w, 0
    for stage in range(3):
        planes = w * (2 ** stage)
        for b in range(n):
            k += 1
            layers[f"block{k}"] = BasicBlock(prev, planes, 2 if stage > 0 and b == 0 else 1)
            prev = planes
    layers["out"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, int(num_classes)))
    return LayeredNet(layers, input_shape, num_classes, basic_layers={"out": 0})


@register_model("resnet32")
def resnet32(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, depth: int = 32,
             width: int = 16) -> LayeredNet:
    """ResNet-32 (n = 5; 16 basic layers). ``depth``/``width`` may be lowered for CPU tests."""
    return cifar_resnet(input_shape, num_classes, depth, width)


@register_model("resnet110")
def resnet110(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, depth: int = 110,
              width: int = 16) -> LayeredNet:
    """ResNet-110 (n = 18; 55 basic layers). ``depth``/``width`` may be lowered for CPU tests."""
    return cifar_resnet(input_shape, num_classes, depth, width)
