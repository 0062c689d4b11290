"""Normalized HSIC (nHSIC), the paper's estimator (Sakamoto & Sato 2024 sec. 3 and appendix F.1.2).

``nHSIC = Tr[ K~(K~ + eps m I)^-1 L~(L~ + eps m I)^-1 ]`` with ``K~ = HKH``; eps = 1e-5 in the paper.
It estimates the chi-squared mutual information (Sakamoto & Sato 2024 eq. 23, Fukumizu et al. 2007) and is an
unnormalised trace: ``0 <= nHSIC <= min(rank K~, rank L~)``.

Computed through Cholesky solves (``method="solve"``, default; robust gradients, used by trainers as
the augmenting term of Sakamoto & Sato 2024 eq. 11) or eigendecompositions (``method="eigh"``); never with an
explicit inverse. float64 by default. ``nhsic_eps_path`` gives every eps from one ``eigh`` per Gram:
``Tr = sum_ij a_i b_j (u_i . v_j)^2`` with ``a = lam / (lam + eps m)``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from infoplane.estimators.hsic import validate_grams
from infoplane.kernels import ArrayLike, center

__all__ = ["nhsic", "nhsic_eps_path", "resolvent", "nhsic_from_resolvents", "check_eps"]

METHODS = ("solve", "eigh")


def check_eps(eps: float) -> float:
    """Validate the regulariser: a finite float > 0."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a positive float, got {eps!r}.") from None
    if not (math.isfinite(e) and e > 0):
        raise ValueError(f"eps must be a finite positive float (the paper uses 1e-5), got {eps!r}.")
    return e


def _sym(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.T)


def resolvent(K: torch.Tensor, eps: float, method: str = "solve", centered: bool = False) -> torch.Tensor:
    """``R = K~ (K~ + eps m I)^-1`` (symmetric, eigenvalues in [0, 1)), ``(m, m) -> (m, m)``.

    ``centered=True`` means K is already ``K~``. ``method`` 'solve' (Cholesky) or 'eigh'.
    """
    eps = check_eps(eps)
    Kc = _sym(K if centered else center(K))
    m = Kc.shape[0]
    shift = eps * m
    if method == "solve":
        A = Kc + shift * torch.eye(m, dtype=Kc.dtype, device=Kc.device)
        chol, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            R = torch.cholesky_solve(Kc, chol)
        else:  # not numerically PD (e.g. an indefinite user kernel): fall back to LU
            R = torch.linalg.solve(A, Kc)
        return _sym(R)
    if method == "eigh":
        lam, U = torch.linalg.eigh(Kc)
        lam = lam.clamp_min(0.0)
        a = lam / (lam + shift)
        return (U * a) @ U.T
    raise ValueError(f"unknown nhsic method {method!r}; use one of {METHODS}.")


def nhsic_from_resolvents(RK: torch.Tensor, RL: torch.Tensor) -> torch.Tensor:
    """``Tr(RK RL)`` for symmetric resolvents (an O(m^2) elementwise sum)."""
    return (RK * RL.T).sum()


def nhsic(K: ArrayLike, L: ArrayLike, eps: float = 1e-5, *, method: str = "solve",
          dtype: Optional[torch.dtype] = torch.float64) -> torch.Tensor:
    """nHSIC of two ``(m, m)`` Gram matrices (Sakamoto & Sato 2024 appendix F.1.2). Differentiable 0-dim tensor.

    ``method='eigh'`` is exact too, but its gradient is unstable for repeated eigenvalues
    (e.g. label Grams); prefer 'solve' for training losses.
    """
    eps = check_eps(eps)
    if method not in METHODS:
        raise ValueError(f"unknown nhsic method {method!r}; use one of {METHODS}.")
    Kt, Lt = validate_grams(K, L, min_m=2, name="nhsic", dtype=dtype)
    return nhsic_from_resolvents(resolvent(Kt, eps, method), resolvent(Lt, eps, method))


def nhsic_eps_path(K: ArrayLike, L: ArrayLike, eps_list: Sequence[float], *,
                   dtype: Optional[torch.dtype] = torch.float64) -> torch.Tensor:
    """nHSIC for every eps in ``eps_list`` from one ``eigh`` per Gram; returns shape ``(len(eps_list),)``.

    With ``K~ = U diag(lam) U^T`` and ``L~ = V diag(mu) V^T``: ``sum_ij a_i b_j W_ij`` where
    ``W = (U^T V)^2``, ``a = lam/(lam + eps m)``, ``b = mu/(mu + eps m)``.
    """
    eps_vals = [check_eps(e) for e in eps_list]
    if not eps_vals:
        raise ValueError("nhsic_eps_path: eps_list is empty; pass at least one eps > 0.")
    Kt, Lt = validate_grams(K, L, min_m=2, name="nhsic_eps_path", dtype=dtype)
    m = Kt.shape[0]
    lam, U = torch.linalg.eigh(_sym(center(Kt)))
    mu, V = torch.linalg.eigh(_sym(center(Lt)))
    lam, mu = lam.clamp_min(0.0), mu.clamp_min(0.0)
    W = (U.T @ V) ** 2
    e = torch.tensor(eps_vals, dtype=lam.dtype, device=lam.device)[:, None] * m  # (E, 1)
    A = lam[None, :] / (lam[None, :] + e)  # (E, m)
    B = mu[None, :] / (mu[None, :] + e)
    return ((A @ W) * B).sum(dim=1)
