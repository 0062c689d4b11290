"""Soft nearest neighbour loss (Frosst et al. 2019; Sakamoto & Sato 2024 appendix E.2, eq. 30).

``l = -(1/b) sum_i log( sum_{j != i, y_j = y_i} exp(-||z_i - z_j||^2 / T) / sum_{k != i} exp(-||z_i - z_k||^2 / T) )``

Computed in log-space with ``logsumexp``. A sample whose class has no other member in the batch has
an empty numerator (log 0 = -inf): ``no_partner="raise"`` (default) raises a ValueError naming
those samples; ``no_partner="exclude"`` drops them from the average (the mean is over the remaining
samples) and raises if none remain. Theorem 4 of Sakamoto & Sato 2024 uses ``T = 2 sigma^2``;
``temperature="paper"`` means ``T = 2 (5 sqrt(d))^2 = 50 d``.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from infoplane.kernels import (ArrayLike, as_tensor, check_finite, flatten, pairwise_sq_dists,
                               sigma_paper)

__all__ = ["soft_nearest_neighbour_loss", "resolve_temperature"]


def resolve_temperature(z: torch.Tensor, temperature: Union[float, str]) -> float:
    """``'paper'`` -> ``2 sigma_paper^2 = 50 d``; else a finite positive float."""
    if isinstance(temperature, str):
        if temperature.lower() == "paper":
            return 2.0 * sigma_paper(z) ** 2
        raise ValueError(f"unknown temperature rule {temperature!r}; use 'paper' or a positive float.")
    t = float(temperature)
    if not (t > 0 and t < float("inf")):
        raise ValueError(f"temperature must be a finite positive float, got {temperature!r}.")
    return t


def soft_nearest_neighbour_loss(z: ArrayLike, y: ArrayLike, temperature: Union[float, str] = "paper", *,
                                no_partner: str = "raise",
                                dtype: Optional[torch.dtype] = torch.float64) -> torch.Tensor:
    """SNN loss of eq. 30 on representations ``z (b, ...)`` and integer labels ``y (b,)``. 0-dim tensor.

    Differentiable in ``z``. See the module docstring for ``no_partner``.
    """
    zt = flatten(z, dtype=dtype)
    check_finite(zt, "soft_nearest_neighbour_loss: z")
    yt = as_tensor(y, dtype=None, device=zt.device)
    if yt.dim() != 1 or yt.is_floating_point():
        raise ValueError(f"soft_nearest_neighbour_loss: y must be 1-D integer labels, got dtype {yt.dtype} "
                         f"shape {tuple(yt.shape)}.")
    b = zt.shape[0]
    if yt.shape[0] != b:
        raise ValueError(f"soft_nearest_neighbour_loss: z has {b} samples but y has {yt.shape[0]}.")
    if b < 2:
        raise ValueError("soft_nearest_neighbour_loss: needs at least 2 samples.")
    if no_partner not in ("raise", "exclude"):
        raise ValueError(f"no_partner must be 'raise' or 'exclude', got {no_partner!r}.")
    T = resolve_temperature(zt, temperature)
    logits = -pairwise_sq_dists(zt) / T
    eye = torch.eye(b, dtype=torch.bool, device=zt.device)
    same = (yt[:, None] == yt[None, :]) & ~eye
    has_partner = same.any(dim=1)
    if not bool(has_partner.all()):
        lonely = (~has_partner).nonzero().flatten().tolist()
        if no_partner == "raise" or len(lonely) == b:
            shown = ", ".join(str(i) for i in lonely[:10]) + (", ..." if len(lonely) > 10 else "")
            raise ValueError(
                f"soft_nearest_neighbour_loss: {len(lonely)} sample(s) (indices {shown}) have no other "
                "sample of their class in the batch, so their term is log 0; use larger/stratified "
                "batches or no_partner='exclude' to drop them"
                + (" (here every sample would be dropped)." if len(lonely) == b else "."))
    neg_inf = torch.finfo(logits.dtype).min
    num = torch.logsumexp(logits.masked_fill(~same, neg_inf), dim=1)
    den = torch.logsumexp(logits.masked_fill(eye, neg_inf), dim=1)
    terms = (num - den)[has_partner]
    return -terms.mean()
