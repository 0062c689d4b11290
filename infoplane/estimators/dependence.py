"""Paired samples to Gram matrices (used by the permutation tests and the estimation engine).

For kernel estimators the Gram matrices are built here (``infoplane.kernels``): RBF on x with the
bandwidth ``sigma = 5 sqrt(d)`` of Sakamoto & Sato (2024) by default, and for y ``kernel_y="auto"``:
the linear kernel on one-hot codes when y is a 1-D integer label vector, else RBF
(``infoplane.estimators.protocol.resolve_kernel``). ``dependence`` itself lives in
``infoplane.estimators.protocol``.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch

from infoplane.kernels import ArrayLike, SigmaLike, as_tensor, gram

__all__ = ["pair_grams", "check_paired"]


def check_paired(x: ArrayLike, y: ArrayLike) -> int:
    """Number of paired samples m; raises if x and y disagree or are not sample arrays."""
    def n_samples(v: ArrayLike, name: str) -> int:
        shape = tuple(v.shape) if hasattr(v, "shape") else tuple(as_tensor(v, dtype=None).shape)
        if len(shape) == 0:
            raise ValueError(f"{name} is a scalar; pass samples of shape (m, ...) (one row per sample).")
        return int(shape[0])

    nx, ny = n_samples(x, "x"), n_samples(y, "y")
    if nx != ny:
        raise ValueError(f"x has {nx} samples but y has {ny}; pass paired samples (same first dimension).")
    return int(nx)


def pair_grams(x: ArrayLike, y: ArrayLike, kernel_x: str = "rbf", kernel_y: str = "auto",
               sigma_x: SigmaLike = "paper", sigma_y: SigmaLike = "paper", squared: bool = True,
               num_classes: Optional[int] = None, *, dtype: torch.dtype = torch.float64,
               device: Optional[Union[str, torch.device]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gram matrices ``(K, L)``, each ``(m, m)``, for paired samples x (m, ...) and y (m, ...) or (m,)."""
    from infoplane.estimators.protocol import resolve_kernel

    check_paired(x, y)
    kernel_x, kernel_y = resolve_kernel(x, kernel_x), resolve_kernel(y, kernel_y)
    K = gram(x, kernel_x, sigma=sigma_x, squared=squared, num_classes=None, dtype=dtype, device=device)
    L = gram(y, kernel_y, sigma=sigma_y, squared=squared, num_classes=num_classes, dtype=dtype,
             device=K.device)
    return K, L
