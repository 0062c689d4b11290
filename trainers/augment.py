"""Data augmentation for the contrastive losses (SupCon eq. 14, SimCLR; seed 000 B.2, F.4.1).

Tiny inputs get light augmentations: images (N, C, H, W) a random translation by up to ``pad``
pixels (zero padding, i.e. the dataset mean after normalisation, then a random crop back to
H x W) plus Gaussian noise; vectors (N, D) Gaussian noise only. Noise is ``noise`` times the
batch's per-feature standard deviation. Uses the global torch RNG (seeded by the loop).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, noise: float = 0.1, crop_pad: Optional[int] = None) -> torch.Tensor:
    """One random view of the batch ``x``; same shape. ``crop_pad=None`` uses max(1, H // 8)."""
    if x.dim() == 4:
        n, _, h, w = x.shape
        pad = max(1, h // 8) if crop_pad is None else int(crop_pad)
        if pad > 0:
            xp = F.pad(x, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (n,)).tolist()
            dx = torch.randint(0, 2 * pad + 1, (n,)).tolist()
            x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if noise > 0:
        scale = x.flatten(1).std(dim=0).clamp_min(1e-3).view(1, *x.shape[1:]) if x.shape[0] > 1 else 1.0
        x = x + noise * scale * torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return x


def two_views(x: torch.Tensor, noise: float = 0.1, crop_pad: Optional[int] = None) -> torch.Tensor:
    """The 2N-sample batch of eq. 14: [view1; view2] of ``x`` (N, ...) -> (2N, ...)."""
    return torch.cat([augment(x, noise, crop_pad), augment(x, noise, crop_pad)])
