"""Vision Transformer (Dosovitskiy et al. 2020) as in Sakamoto & Sato 2024 appendix F.4.4: six transformer blocks,
patch size 4, hidden dimension 512.

Layers: ``embed`` (patchify with a ``patch x patch`` stride-``patch`` convolution, prepend a class
token, add learned position embeddings: ``(N, C, H, W) -> (N, 1 + HW/patch^2, dim)``),
``block1 .. block{depth}`` (pre-norm encoder blocks: ``x + MHSA(LN(x))``, ``x + MLP(LN(x))``, GELU,
MLP width ``mlp_ratio * dim``) and ``out`` (LayerNorm -> class token -> Linear).
The paper does not state the head count or MLP width; ``heads=8`` and ``mlp_ratio=2`` are our defaults.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .base import LayeredNet, register_model


class PatchEmbed(nn.Module):
    """Image -> tokens: ``(N, C, H, W) -> (N, 1 + (H/p)(W/p), dim)`` with class token and positions."""

    def __init__(self, in_channels: int, image_hw: Sequence[int], patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        n_tokens = (int(image_hw[0]) // patch) * (int(image_hw[1]) // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (N, T, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + MHSA(LN x)`` then ``x + MLP(LN x)``; ``(N, T, d)``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ClassTokenHead(nn.Module):
    """``LayerNorm -> take the class token -> Linear``: ``(N, T, d) -> (N, num_classes)``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x)[:, 0])


@register_model("vit")
def vit(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, dim: int = 512, depth: int = 6,
        heads: int = 8, patch: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.0) -> LayeredNet:
    """ViT with layers embed, block1..block{depth}, out (Sakamoto & Sato 2024 F.4.4 defaults: 6 blocks, patch 4, dim 512)."""
    if len(input_shape) != 3:
        raise ValueError(f"vit takes images (C, H, W), got input_shape={tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch size {patch} must divide the image size {h}x{w}")
    if dim < 1 or depth < 1 or heads < 1 or dim % heads:
        raise ValueError(f"need dim, depth, heads >= 1 and dim divisible by heads, got dim={dim}, "
                         f"depth={depth}, heads={heads}")
    mlp_dim = max(1, int(round(dim * mlp_ratio)))
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(embed=PatchEmbed(c, (h, w), int(patch), int(dim)))
    for i in range(1, int(depth) + 1):
        layers[f"block{i}"] = EncoderBlock(int(dim), int(heads), mlp_dim, float(dropout))
    layers["out"] = ClassTokenHead(int(dim), int(num_classes))
    return LayeredNet(layers, input_shape, num_classes)
