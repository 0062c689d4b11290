"""Auxiliary networks g_l of layer-wise training (seed 000 sec. 2.1, B.2, F.1.1).

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

from typing import Sequence

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
