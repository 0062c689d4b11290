"""HSIC estimators on Gram matrices (docs/estimators.md "HSIC"; Sakamoto & Sato 2024 sec. 3, eq. 7).

* ``hsic_biased``: V-statistic with the paper's normalisation ``Tr(K~ L~) / (m-1)^2``
  (Sakamoto & Sato 2024 sec. 3: ``Tr(K1 H K2 H)/(m-1)^2``); ``>= 0`` for PSD kernels.
* ``hsic_unbiased``: Song et al. (2012, JMLR) eq. 5, m >= 4, can be negative.

Inputs: square ``(m, m)`` Gram matrices (numpy or torch, any device); outputs 0-dim tensors,
differentiable, in ``dtype`` (float64 by default).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from infoplane.kernels import ArrayLike, as_tensor, center, check_finite

__all__ = ["hsic_biased", "hsic_unbiased", "validate_grams"]

_HALF = (torch.float16, torch.bfloat16)


def validate_grams(K: ArrayLike, L: ArrayLike, *, min_m: int = 2, name: str = "estimator",
                   dtype: Optional[torch.dtype] = torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """Convert to tensors of ``dtype`` on K's device and check: square, same m, m >= min_m, finite."""
    for nm, G in (("K", K), ("L", L)):
        gd = getattr(G, "dtype", None)
        if gd in _HALF or str(gd) == "float16" or dtype in _HALF:
            raise ValueError(f"{name}: {nm} is a half-precision ({gd if gd in _HALF or str(gd) == 'float16' else dtype}) "
                             "Gram matrix; its entries lie near 1 and half precision rounds away the centred part "
                             "(errors of 100% and more were seen). Compute Grams in float32 or float64.")
    Kt = as_tensor(K, dtype=dtype)
    Lt = as_tensor(L, dtype=dtype, device=Kt.device)
    for nm, G in (("K", Kt), ("L", Lt)):
        if G.dim() != 2 or G.shape[0] != G.shape[1]:
            raise ValueError(f"{name}: {nm} must be a square (m, m) Gram matrix, got shape {tuple(G.shape)}.")
        if G.is_floating_point() and G.shape[0] > 1:
            scale = float(G.detach().abs().max())
            asym = float((G.detach() - G.detach().T).abs().max())
            tol = (1e-5 if G.dtype == torch.float32 else 1e-10) * max(scale, 1e-300)
            if asym > tol:
                raise ValueError(f"{name}: {nm} is not symmetric (max |{nm} - {nm}^T| = {asym:.3g}, max |{nm}| = "
                                 f"{scale:.3g}); a Gram matrix k(x_i, x_j) is symmetric: check how it was built.")
    if Kt.shape[0] != Lt.shape[0]:
        raise ValueError(f"{name}: K and L have different sample counts ({Kt.shape[0]} vs {Lt.shape[0]}); "
                         "pass Gram matrices of the same paired samples.")
    m = Kt.shape[0]
    if m < min_m:
        raise ValueError(f"{name}: needs at least m={min_m} samples, got m={m}.")
    check_finite(Kt, f"{name}: K")
    check_finite(Lt, f"{name}: L")
    return Kt, Lt


def hsic_biased(K: ArrayLike, L: ArrayLike, *, dtype: Optional[torch.dtype] = torch.float64) -> torch.Tensor:
    """Biased HSIC ``Tr(K~ L~)/(m-1)^2`` with ``K~ = HKH`` (Sakamoto & Sato 2024 sec. 3). m >= 2. 0-dim tensor."""
    Kt, Lt = validate_grams(K, L, min_m=2, name="hsic_biased", dtype=dtype)
    m = Kt.shape[0]
    # Tr(HKH HLH) = Tr(K~ L) = sum(K~ * L^T); L symmetric in practice, use L^T to be exact.
    return (center(Kt) * Lt.T).sum() / float((m - 1) ** 2)


def hsic_unbiased(K: ArrayLike, L: ArrayLike, *, dtype: Optional[torch.dtype] = torch.float64) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012, eq. 5), m >= 4; K', L' are K, L with zero diagonals:

    ``[Tr(K'L') + 1'K'1 1'L'1 / ((m-1)(m-2)) - 2/(m-2) 1'K'L'1] / (m(m-3))``. Can be negative.
    """
    Kt, Lt = validate_grams(K, L, min_m=4, name="hsic_unbiased", dtype=dtype)
    m = Kt.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=Kt.device)
    Kz = Kt.masked_fill(eye, 0.0)
    Lz = Lt.masked_fill(eye, 0.0)
    tr = (Kz * Lz.T).sum()
    ks, ls = Kz.sum(), Lz.sum()
    cross = (Kz.sum(dim=0) * Lz.sum(dim=1)).sum()  # 1^T K' L' 1
    return (tr + ks * ls / ((m - 1) * (m - 2)) - 2.0 * cross / (m - 2)) / (m * (m - 3))
