"""Auxiliary networks: g_l of layer-wise training (Sakamoto & Sato 2024 sec. 2.1, B.2, F.1.1) and
the 1-conv + 2-FC classifier of the K-module regimes (:class:`ConvFCHead`).

``h_l = g_l(z_l)``: the representation is first average-pooled to at most ``max_features``
(2048, F.1.1) and flattened, then passed through

* ``none``   identity (0 layers; SupCon / Sim / SP directly on the representation),
* ``linear`` one linear layer (the "1-layer" auxiliary network of Tables 1 and 4),
* ``mlp``    Linear-ReLU-Linear (one hidden layer, "2-layer"),
* ``mlp2``   Linear-ReLU-Linear-ReLU-Linear (two hidden layers),
* ``conv``   the convolutional auxiliary network of the Sim loss (Nøkland & Eidnes 2019): a
  3x3 convolution, then the standard deviation of each feature map over space (B.2); on
  non-spatial representations it falls back to ``linear``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .losses import pool_features, pooled_size


class PoolFlatten(nn.Module):
    """Average-pool to at most ``max_features`` features and flatten: (N, ...) -> (N, d')."""

    def __init__(self, max_features: int = 2048) -> None:
        super().__init__()
        self.max_features = int(max_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return pool_features(z, self.max_features)


class ConvStdHead(nn.Module):
    """3x3 convolution then per-channel standard deviation over space: (N,C,H,W) -> (N,C')."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv(z)
        if h.shape[2] * h.shape[3] < 2:
            return h.flatten(1)
        return h.flatten(2).std(dim=2)


def make_head(kind: str, feature_shape: Sequence[int], out_dim: int, hidden: int = 512,
              max_features: int = 2048) -> nn.Module:
    """Build the auxiliary network ``kind`` for a representation of shape ``feature_shape``
    (one sample, no batch) with ``out_dim`` outputs (ignored for ``none``)."""
    shape = tuple(int(s) for s in feature_shape)
    if kind == "conv" and len(shape) == 3:
        return ConvStdHead(shape[0], shape[0] if out_dim is None else int(out_dim))
    if kind == "conv":
        kind = "linear"
    pool = PoolFlatten(max_features)
    d = pooled_size(shape, max_features)
    if kind == "none":
        return pool
    if kind == "linear":
        return nn.Sequential(pool, nn.Linear(d, out_dim))
    if kind == "mlp":
        return nn.Sequential(pool, nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    if kind == "mlp2":
        return nn.Sequential(pool, nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                             nn.ReLU(), nn.Linear(hidden, out_dim))
    raise ValueError(f"unknown auxiliary network {kind!r}; use none, linear, mlp, mlp2 or conv")


def convfc_width(channels: int) -> Tuple[int, int]:
    """(conv channels, stride) of :class:`ConvFCHead` for a feature map with ``channels`` channels.

    The decoder/classifier table of Wang et al. 2021 (Table 8; Belilovsky et al. 2020's DGL head),
    as their reference code implements it, picks by input channels: 16 -> 32 channels stride 2,
    32 -> 64 stride 2, 64 -> 64 stride 1 (on CIFAR the 32x32 / 16x16 / 8x8 maps of ResNet-32; on
    STL-10 the same channels at 96 / 48 / 24 pixels). Other widths take the row of the next larger
    table entry (<= 16, <= 32, more)."""
    c = int(channels)
    if c <= 16:
        return 32, 2
    if c <= 32:
        return 64, 2
    return 64, 1


class ConvFCHead(nn.Module):
    """Wang et al. 2021 Table 8 (psi / phi; = the ContSup paper's Table 6): one conv + two FC layers.

    3x3 conv (channels and stride by :func:`convfc_width`) + BatchNorm + ReLU, global average pool,
    FC -> ``hidden`` (128), ReLU, FC -> ``out_dim`` (classes for psi, 128 for the contrastive phi).
    Flat features (MLP layers) skip the conv: FC -> 128, ReLU, FC -> out_dim.
    Shapes: (N, C, H, W) or (N, d) -> (N, out_dim).
    """

    def __init__(self, feature_shape: Sequence[int], out_dim: int, hidden: int = 128) -> None:
        super().__init__()
        shape = tuple(int(s) for s in feature_shape)
        if len(shape) == 3:
            ch, stride = convfc_width(shape[0])
            self.conv: Optional[nn.Module] = nn.Sequential(
                nn.Conv2d(shape[0], ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU())
            d = ch
        else:
            self.conv = None
            d = int(torch.Size(shape).numel())
        self.fc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, int(out_dim)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            h = self.conv(h).mean(dim=(2, 3))
        return self.fc(h.flatten(1))
