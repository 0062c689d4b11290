"""Full-sample nHSIC from factored centred Gram matrices (seed 000, appendix F.1.2).

nHSIC = Tr[ K~ (K~ + eps m I)^-1  L~ (L~ + eps m I)^-1 ],   K~ = H K H.

If ``K~ = U diag(s2) U^T`` (U: (m, k) orthonormal columns) then
``K~ (K~ + eps m I)^-1 = U diag(w) U^T`` with ``w = s2 / (s2 + eps m)``, and for two factors

    nHSIC(a, b) = || diag(w_a)^1/2  U_a^T U_b  diag(w_b)^1/2 ||_F^2,      cost O(m k_a k_b).

Factors (:func:`factorize`):
- ``"exact"``: eigh of the explicit centred Gram (O(m^3); the reference);
- ``"label"``: one-hot labels with the linear kernel, ``L~ = Yc Yc^T`` (Yc = H onehot, (m, c));
  its eigen-pairs come from the thin SVD of Yc, O(m c^2), rank <= c - 1;
- ``"linear"`` kernel on features: thin SVD of the centred features (exact, rank <= d);
- ``"lowrank"``: block pivoted Cholesky of the RBF Gram from the data (never forming K), stopped
  when ``tr(E) <= tolerance tr(K)``; then the thin SVD of the centred factor ``H F``.

Reuse: a factor depends only on one variable and its kernel setting, so the input-side factor of a
store (X) is computed once and used for every layer and checkpoint; pass it back to
:func:`nhsic_full` as ``other_factor``.

Error estimate for low-rank factors. With ``F F^T <= K`` (Loewner) the low-rank value is a lower
bound of the exact one, and the gap is at most ``sum_sides tr(E_side) / (eps m)`` (see
``infoplane.estimators.lowrank``). That bound is rigorous but can be loose; ``nhsic_factored``
returns ``max(value(r) - value(r/2), ...)``-style estimates capped by the bound (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from infoplane import kernels as _k
from infoplane.estimators.lowrank import CholeskyFactor, gram_columns, pivoted_cholesky, rbf_columns

__all__ = ["CenteredFactor", "factorize", "nhsic_factored", "nhsic_full", "factor_from_features"]

DeviceLike = Union[str, torch.device]


@dataclass
class CenteredFactor:
    """``K~ = H K H ~= U diag(s2) U^T`` for one variable and kernel setting.

    U: (m, k) orthonormal columns spanning (part of) the range of the centred Gram.
    s2: (k,) its eigenvalues (>= 0), in descending order.
    method: ``"exact" | "lowrank" | "label"`` (``"linear"`` features count as exact).
    rel_error: ``tr(E) / tr(K)`` of the dropped part (0 for exact and label factors).
    residual_trace: ``tr(E)``, an upper bound on the trace of the centred residual ``H E H``.
    half: for ``"lowrank"``, the factor of the first half of the pivots (rank r/2), used for the
    error estimate; ``None`` otherwise.
    """

    U: torch.Tensor
    s2: torch.Tensor
    method: str
    rel_error: float = 0.0
    residual_trace: float = 0.0
    kernel: str = "rbf"
    sigma: Optional[float] = None
    half: Optional["CenteredFactor"] = field(default=None, repr=False)

    @property
    def m(self) -> int:
        return int(self.U.shape[0])

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def weights(self, eps: float) -> torch.Tensor:
        """``w = s2 / (s2 + eps m)``: eigenvalues of ``K~ (K~ + eps m I)^-1``."""
        return self.s2 / (self.s2 + eps * self.m)

    def to(self, device: DeviceLike) -> "CenteredFactor":
        return CenteredFactor(self.U.to(device), self.s2.to(device), self.method, self.rel_error,
                              self.residual_trace, self.kernel, self.sigma,
                              None if self.half is None else self.half.to(device))


def _check_device(device: DeviceLike) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use device='cpu'.")
    return dev


def factor_from_features(F: torch.Tensor, *, method: str, residual_trace: float = 0.0,
                         trace: float = 1.0, kernel: str = "rbf", sigma: Optional[float] = None,
                         rtol: Optional[float] = None) -> CenteredFactor:
    """Centred factor from any ``K ~= F F^T`` (F: (m, r)): thin SVD of ``H F``, O(m r^2).

    ``H K H ~= (HF)(HF)^T = U diag(s^2) U^T``. Singular values below ``rtol * s_max`` (default
    ``max(m, r) * machine eps``) are dropped: numerically they are zero (the constant direction).
    """
    Fc = F - F.mean(dim=0, keepdim=True)
    m, r = Fc.shape
    if r == 0:
        U = Fc.new_zeros((m, 0))
        s2 = Fc.new_zeros((0,))
    elif m >= 2 * r:
        # tall: eigh of the (r, r) Gram, U = Fc V / s (O(m r^2), BLAS-3). Squaring the condition
        # number only blurs directions with s2 ~ eps * s2_max, whose weight s2 / (s2 + eps m) is ~0.
        lam, V = torch.linalg.eigh(Fc.T @ Fc)
        lam, V = lam.flip(0), V.flip(1)
        tol = (max(m, r) * torch.finfo(Fc.dtype).eps if rtol is None else rtol ** 2) * lam[0].clamp_min(0)
        keep = lam > tol
        lam, V = lam[keep], V[:, keep]
        U = (Fc @ V) / lam.sqrt()[None, :]
        s2 = lam
    else:
        U, s, _ = torch.linalg.svd(Fc, full_matrices=False)
        if rtol is None:
            rtol = max(m, r) * torch.finfo(Fc.dtype).eps
        keep = s > rtol * s[0]
        U, s2 = U[:, keep], s[keep] ** 2
    rel = residual_trace / trace if trace > 0 else 0.0
    return CenteredFactor(U=U, s2=s2, method=method, rel_error=float(rel),
                          residual_trace=float(residual_trace), kernel=kernel, sigma=sigma)


def _exact_from_gram(K: torch.Tensor, kernel: str, sigma: Optional[float]) -> CenteredFactor:
    Kc = _k.center(K)
    Kc = 0.5 * (Kc + Kc.T)
    s2, U = torch.linalg.eigh(Kc)
    s2 = s2.flip(0).clamp_min(0.0)
    U = U.flip(1)
    keep = s2 > 0
    return CenteredFactor(U=U[:, keep], s2=s2[keep], method="exact", kernel=kernel, sigma=sigma)


def _validate_common(tolerance: Optional[float], max_rank: Optional[int]) -> None:
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating)):
            raise ValueError(f"tolerance must be a positive float or None (exact), got {tolerance!r}.")
        if not (np.isfinite(tolerance) and 0 < float(tolerance) < 1):
            raise ValueError(f"tolerance must be in (0, 1) (relative residual trace), got {tolerance!r}; "
                             "use None for the exact factorisation.")
    if max_rank is not None and (not isinstance(max_rank, (int, np.integer)) or max_rank < 1):
        raise ValueError(f"max_rank must be a positive int or None, got {max_rank!r}.")


def factorize(x: Any = None, *, gram: Any = None, kernel: str = "rbf", sigma: Union[str, float] = "paper",
              squared: bool = True, tolerance: Optional[float] = None, max_rank: Optional[int] = None,
              device: DeviceLike = "cpu", dtype: torch.dtype = torch.float64,
              num_classes: Optional[int] = None, block: int = 64, progress: bool = False) -> CenteredFactor:
    """Factor the centred Gram of one variable: ``H K H ~= U diag(s2) U^T``.

    x: samples (m, ...) (features), or labels (m,) int for ``kernel="label"``; or pass ``gram``
    (m, m), an explicit PSD Gram. kernel: ``"rbf"`` (sigma: 'paper' = 5 sqrt(d), 'median' or a
    float; ``squared=False`` = published code's non-squared distance), ``"linear"``, ``"label"``
    (one-hot, linear kernel; ``num_classes`` optional).
    tolerance: None = exact (eigh of the centred Gram, O(m^3)); a float in (0, 1) = low rank by
    pivoted Cholesky until ``tr(E) / tr(K) <= tolerance`` (RBF or explicit ``gram``), O(m r^2).
    Label and linear factors are exact at O(m c^2) / O(m d min(m, d)) whatever the tolerance.
    progress: tqdm bar over the pivoted-Cholesky columns (low rank only).
    """
    _validate_common(tolerance, max_rank)
    dev = _check_device(device)
    if (x is None) == (gram is None):
        raise ValueError("factorize: pass exactly one of x (samples) or gram (an (m, m) Gram matrix).")
    kern = str(kernel).lower()
    if gram is not None:
        K = _k.as_tensor(gram, dtype=dtype, device=dev)
        if K.dim() != 2 or K.shape[0] != K.shape[1]:
            raise ValueError(f"factorize: gram must be square (m, m), got shape {tuple(K.shape)}.")
        if K.shape[0] < 2:
            raise ValueError("factorize: need at least m = 2 samples.")
        _k.check_finite(K, "gram")
        if tolerance is None:
            return _exact_from_gram(K, "gram", None)
        ch = pivoted_cholesky(gram_columns(K), torch.diagonal(K).clone(), tolerance=float(tolerance),
                              max_rank=max_rank, block=block, progress=progress)
        return _lowrank_from_cholesky(ch, kernel="gram", sigma=None)

    if kern in ("label", "onehot", "one-hot"):
        y = _k.as_tensor(x, dtype=None, device=dev)
        if y.dim() == 2:           # already one-hot / soft codes (m, c)
            Y = y.to(dtype)
            _k.check_finite(Y, "label codes")
        else:
            if y.is_floating_point():
                _k.check_finite(y, "labels")
            Y = _k.one_hot(y, num_classes, dtype=dtype, device=dev)
        if Y.shape[0] < 2:
            raise ValueError("factorize: need at least m = 2 samples.")
        f = factor_from_features(Y, method="label", kernel="label")
        return f
    if kern not in ("rbf", "linear"):
        raise ValueError(f"factorize: unknown kernel {kernel!r}; use 'rbf', 'linear' or 'label'.")
    X = _k.flatten(x, dtype=dtype, device=dev)
    if X.shape[0] < 2:
        raise ValueError(f"factorize: need at least m = 2 samples, got {X.shape[0]}.")
    _k.check_finite(X, "x")
    if kern == "linear":
        return factor_from_features(X, method="exact", kernel="linear")
    s = _k.resolve_sigma(X, sigma)
    if tolerance is None:
        K = _k.rbf_gram(X, sigma=s, squared=squared, dtype=dtype, check=False)
        return _exact_from_gram(K, "rbf", s)
    ch = pivoted_cholesky(rbf_columns(X, s, squared), torch.ones(X.shape[0], dtype=dtype, device=dev),
                          tolerance=float(tolerance), max_rank=max_rank, block=block, progress=progress)
    return _lowrank_from_cholesky(ch, kernel="rbf", sigma=s)


def _lowrank_from_cholesky(ch: CholeskyFactor, *, kernel: str, sigma: Optional[float]) -> CenteredFactor:
    f = factor_from_features(ch.factor, method="lowrank", residual_trace=ch.residual_trace,
                             trace=ch.trace, kernel=kernel, sigma=sigma)
    r = ch.rank
    if r >= 2:
        h = r // 2
        f.half = factor_from_features(ch.factor[:, :h], method="lowrank",
                                      residual_trace=float(ch.trace_history[h]), trace=ch.trace,
                                      kernel=kernel, sigma=sigma)
    return f


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive float (paper: 1e-5), got {eps!r}.")
    return float(eps)


def _value(a: CenteredFactor, b: CenteredFactor, eps: float) -> float:
    dev = a.U.device
    ub = b.U.to(dev)
    wa = a.weights(eps).sqrt()
    wb = b.weights(eps).to(dev).sqrt()
    M = (a.U.T @ ub) * wa[:, None] * wb[None, :]
    return float((M * M).sum())


def nhsic_factored(a: CenteredFactor, b: CenteredFactor, eps: float = 1e-5) -> tuple[float, float]:
    """nHSIC between two factored variables: ``(value, error estimate)``, cost O(m k_a k_b).

    value = ``||diag(w_a)^1/2 U_a^T U_b diag(w_b)^1/2||_F^2``, ``w = s2 / (s2 + eps m)``.
    Error estimate (0 when both factors are exact/label): for each low-rank side, the change of the
    value when that side's rank is halved (the pivoted Cholesky prefix), ``v(r) - v(r/2)``, taken as
    the size of the remaining gap (geometric convergence), but never more than the rigorous bound
    ``tr(E) / (eps m)`` of that side; the sides add. The low-rank value is a lower bound of the
    exact value (``F F^T <= K``), so the exact value lies in ``[value, value + bound]``.
    """
    eps = _check_eps(eps)
    if a.m != b.m:
        raise ValueError(f"nhsic_factored: factors have different numbers of samples ({a.m} vs {b.m}).")
    if a.m < 2:
        raise ValueError("nhsic_factored: need at least m = 2 samples.")
    v = _value(a, b, eps)
    err = 0.0
    for side, other, first in ((a, b, True), (b, a, False)):
        if side.method != "lowrank":
            continue
        bound = side.residual_trace / (eps * side.m)
        if side.half is not None:
            vh = _value(side.half, other, eps) if first else _value(other, side.half, eps)
            est = max(v - vh, 0.0)
        else:
            est = bound
        err += min(est, bound)
    return v, err


def nhsic_full(z: Any, other: Any, *, kernel_other: str = "rbf", eps: float = 1e-5,
               sigma: Union[str, float] = "paper", sigma_other: Union[str, float, None] = None,
               tolerance: Optional[float] = None, other_factor: Optional[CenteredFactor] = None,
               squared: bool = True, max_rank: Optional[int] = None, device: DeviceLike = "cpu",
               dtype: torch.dtype = torch.float64, num_classes: Optional[int] = None,
               ) -> tuple[float, float, CenteredFactor]:
    """Full-sample nHSIC(Z; other) -> ``(value, error estimate, factor of other)``.

    z: representation (m, ...), RBF kernel with ``sigma``; other: X (m, ...) with
    ``kernel_other="rbf"`` (bandwidth ``sigma_other``, default = ``sigma``) or labels (m,) with
    ``kernel_other="label"``. Pass the returned factor back as ``other_factor`` (``other`` may then
    be None) to reuse it for every layer/checkpoint. ``tolerance`` as in :func:`factorize`.
    """
    eps = _check_eps(eps)
    if other_factor is None:
        if other is None:
            raise ValueError("nhsic_full: pass other (samples or labels) or other_factor.")
        other_factor = factorize(other, kernel=kernel_other, sigma=sigma if sigma_other is None else sigma_other,
                                 squared=squared, tolerance=tolerance if kernel_other == "rbf" else None,
                                 max_rank=max_rank, device=device, dtype=dtype, num_classes=num_classes)
    fz = factorize(z, kernel="rbf", sigma=sigma, squared=squared, tolerance=tolerance, max_rank=max_rank,
                   device=device, dtype=dtype)
    if fz.m != other_factor.m:
        raise ValueError(f"nhsic_full: z has {fz.m} samples but other has {other_factor.m}.")
    value, err = nhsic_factored(fz, other_factor.to(fz.U.device), eps=eps)
    return value, err, other_factor
