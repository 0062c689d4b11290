"""``dependence(x, y)``: any registered estimator on raw paired samples (ESTIMATORS.md).

For kernel estimators the Gram matrices are built here (``infoplane.kernels``): RBF on x with the
paper's bandwidth ``sigma = 5 sqrt(d)`` by default, and for y ``kernel_y="auto"``: the linear kernel
on one-hot codes when y is a 1-D integer label vector (seed 000 sec. 3), else RBF.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch

from infoplane.estimators.registry import EstimatorSpec, get_estimator
from infoplane.kernels import ArrayLike, SigmaLike, as_tensor, gram

__all__ = ["dependence", "pair_grams", "check_paired"]


def check_paired(x: ArrayLike, y: ArrayLike) -> int:
    """Number of paired samples m; raises if x and y disagree or are not sample arrays."""
    nx = x.shape[0] if hasattr(x, "shape") and len(x.shape) else None
    ny = y.shape[0] if hasattr(y, "shape") and len(y.shape) else None
    if nx is None or ny is None:
        nx, ny = len(as_tensor(x, dtype=None)), len(as_tensor(y, dtype=None))
    if nx != ny:
        raise ValueError(f"x has {nx} samples but y has {ny}; pass paired samples (same first dimension).")
    return int(nx)


def pair_grams(x: ArrayLike, y: ArrayLike, kernel_x: str = "rbf", kernel_y: str = "auto",
               sigma_x: SigmaLike = "paper", sigma_y: SigmaLike = "paper", squared: bool = True,
               num_classes: Optional[int] = None, *, dtype: torch.dtype = torch.float64,
               device: Optional[Union[str, torch.device]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gram matrices ``(K, L)``, each ``(m, m)``, for paired samples x (m, ...) and y (m, ...) or (m,)."""
    check_paired(x, y)
    K = gram(x, kernel_x, sigma=sigma_x, squared=squared, num_classes=None, dtype=dtype, device=device)
    L = gram(y, kernel_y, sigma=sigma_y, squared=squared, num_classes=num_classes, dtype=dtype,
             device=K.device)
    return K, L


def dependence(x: ArrayLike, y: ArrayLike, estimator: Union[str, EstimatorSpec] = "nhsic",
               kernel_x: str = "rbf", kernel_y: str = "auto", sigma_x: SigmaLike = "paper",
               sigma_y: SigmaLike = "paper", squared: bool = True, num_classes: Optional[int] = None, *,
               dtype: torch.dtype = torch.float64, device: Optional[Union[str, torch.device]] = None,
               **params: Any) -> float:
    """Dependence between paired samples by estimator name, e.g.
    ``dependence(z, labels)`` = nHSIC(Y, Z) with eps=1e-5, RBF sigma=5 sqrt(d) on z, one-hot linear on y.

    ``params`` go to the estimator (e.g. ``eps=1e-3``, ``temperature=...``), over its defaults.
    """
    spec = get_estimator(estimator)
    kw = {**spec.defaults, **params}
    if spec.kind == "kernel":
        K, L = pair_grams(x, y, kernel_x, kernel_y, sigma_x, sigma_y, squared, num_classes,
                          dtype=dtype, device=device)
        out = spec.fn(K, L, **kw)
    else:
        check_paired(x, y)
        out = spec.fn(x, y, **kw)
    return float(out.detach().cpu()) if isinstance(out, torch.Tensor) else float(out)
