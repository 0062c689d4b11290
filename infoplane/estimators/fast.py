"""Full-sample nHSIC from factored centred Gram matrices (Sakamoto & Sato 2024, appendix F.1.2).

nHSIC = Tr[ K~ (K~ + a I)^-1  L~ (L~ + a I)^-1 ] = Tr[g(K~) g(L~)],   K~ = H K H,  a = eps m,
g(x) = x / (x + a).

If ``K~ = U diag(s2) U^T`` (U: (m, k) orthonormal columns) then ``g(K~) = U diag(w) U^T`` with
``w = s2 / (s2 + a)``, and for two factors

    nHSIC(a, b) = || diag(w_a)^1/2  U_a^T U_b  diag(w_b)^1/2 ||_F^2,      cost O(m k_a k_b).

Factors (:func:`factorize`):
- ``"exact"``: eigh of the explicit centred Gram (O(m^3) time, ~4 m^2 float64 memory, checked
  against the available memory first, see :func:`exact_memory_bytes`);
- ``"label"``: one-hot labels with the linear kernel, ``L~ = Yc Yc^T`` (Yc = H onehot, (m, c)),
  exact from the thin SVD of Yc, O(m c^2); ``"linear"`` features: exact thin SVD, O(m d min(m, d));
- ``"lowrank"``: pivoted Cholesky ``K = F F^T + E`` of the RBF (or an explicit) Gram
  (``infoplane.estimators.lowrank``, never forming K), then the thin SVD of ``H F``.

Rigorous error bound of a low-rank value (``tr E`` = residual trace of a side, plus the trace of
any direction of ``H F`` dropped numerically):
1. ``F F^T <= K`` (Loewner) => ``K~' = H F F^T H <= K~``; g is operator monotone, so
   ``R' = g(K~') <= g(K~) = R`` and, R_L being PSD, the low-rank value ``v = Tr(R' R_L')`` is a
   lower bound of the exact value.
2. Rotfel'd (trace subadditivity of a concave g with g(0) = 0):
   ``Tr(R - R') <= Tr g(H E H) <= tr(H E H) / a <= tr(E) / a``, and R - R' >= 0, so
   ``Tr((R - R') R_L) <= ||R_L|| tr(E) / a`` with ``||R_L|| < 1``.
3. Both sides: ``exact - v = Tr((R_K - R_K') R_L) + Tr(R_K' (R_L - R_L'))
   <= (||R_L|| tr E_K + ||R_K'|| tr E_L) / a <= (tr E_K + tr E_L) / a``
   (:func:`nhsic_factored` uses ``||R_K'|| = max w_K`` and ``||R_L|| <= g(max s2_L + tr E_L)``).

Accuracy contract (``tolerance = t``): :func:`nhsic_full` / :func:`refine_nhsic` return v and a
bound with ``exact - v in [0, bound]`` and ``bound <= t v``. The bound is absolute in the residual,
so the pivoted Cholesky of each side continues until ``tr(E_side) <= share * t * a * v_lower``
(v_lower = the current low-rank value, a valid lower bound, so the rule is conservative; share = 1/2
per low-rank side, or what the other side leaves): factor to a coarse residual ``tr(E) <= t tr(K)``,
compute v, extend the factors (rank at most doubling per round, so the work stays within a constant
of the final rank) and repeat. A factor that reaches full rank is exact (bound 0); one that would
need more than m/4 pivots is replaced by the exact resolvent of its Gram (by Cholesky, no
eigenvectors: ``infoplane.estimators.exact``; cheaper there) when the memory guard allows
(deterministic: the decision depends only on m, the ranks and the available memory). A value
against such a side is ``sum_j w_j u_j^T R u_j`` (O(m^2 k)); its residual is 0.

Reuse: a factor depends only on one variable and its kernel setting, so the input-side factor of a
store (X) is computed once and used for every layer and checkpoint; pass it back to
:func:`nhsic_full` as ``other_factor`` and keep the returned ``other_factor`` (it may have been
extended for a layer whose value needed a smaller residual).
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch

from infoplane.device import available_memory_bytes, resolve_device
from infoplane import kernels as _k
from infoplane.estimators.lowrank import (CholeskyFactor, extend_cholesky, gram_columns, pivoted_cholesky,
                                          rbf_columns)

__all__ = ["ExactSideCache", "CenteredFactor", "FullSampleNHSIC", "ExactMemoryError", "available_memory_bytes",
           "exact_memory_bytes", "factorize", "extend_factor", "nhsic_factored", "refine_nhsic", "nhsic_full",
           "factor_from_features"]

DeviceLike = Union[str, torch.device]


class ExactMemoryError(MemoryError, ValueError):
    """The exact (m x m eigh) path would not fit in the available memory."""


@dataclass
class CenteredFactor:
    """``K~ = H K H ~= U diag(s2) U^T`` for one variable and kernel setting.

    U: (m, k) orthonormal columns spanning (part of) the range of the centred Gram.
    s2: (k,) its eigenvalues (>= 0), in descending order.
    method: ``"exact" | "lowrank" | "label"`` (``"linear"`` features count as exact).
    residual_trace: an upper bound on ``tr(K~ - U diag(s2) U^T)``: the pivoted-Cholesky residual
    ``tr(E)`` plus the directions of ``H F`` dropped as numerically zero (0 for exact/label factors).
    trace: ``tr(K)``. cholesky: the pivoted Cholesky state of a low-rank factor (to extend it).
    """

    U: torch.Tensor
    s2: torch.Tensor
    method: str
    residual_trace: float = 0.0
    trace: float = 0.0
    kernel: str = "rbf"
    sigma: Optional[float] = None
    cholesky: Optional[CholeskyFactor] = field(default=None, repr=False)

    @property
    def m(self) -> int:
        return int(self.U.shape[0])

    @property
    def rank(self) -> int:
        """Number of kept directions k of the centred Gram."""
        return int(self.U.shape[1])

    @property
    def rel_error(self) -> float:
        """``residual_trace / tr(K)`` (0 for exact factors)."""
        return self.residual_trace / self.trace if self.trace > 0 else 0.0

    @property
    def exact(self) -> bool:
        return self.residual_trace <= 0.0

    @property
    def extendable(self) -> bool:
        """True for a low-rank factor whose pivoted Cholesky can still be continued."""
        return self.cholesky is not None and self.cholesky.extendable

    def weights(self, eps: float) -> torch.Tensor:
        """``w = s2 / (s2 + eps m)``: eigenvalues of ``K~ (K~ + eps m I)^-1``."""
        return self.s2 / (self.s2 + eps * self.m)

    def to(self, device: DeviceLike) -> "CenteredFactor":
        """Copy on ``device`` (the pivoted Cholesky state stays where it was computed)."""
        return CenteredFactor(self.U.to(device), self.s2.to(device), self.method, self.residual_trace,
                              self.trace, self.kernel, self.sigma, self.cholesky)


@dataclass
class FullSampleNHSIC:
    """Result of :func:`nhsic_full` / :func:`refine_nhsic`.

    value: low-rank (or exact) nHSIC, a lower bound of the exact value; error_bound: rigorous,
    ``exact - value in [0, error_bound]``; rank_z / rank_other: kept directions of each factor;
    z_factor / other_factor: the (possibly extended) factors, to reuse.
    Unpacks like the former tuple: ``value, error_bound, other_factor = nhsic_full(...)``.
    """

    value: float
    error_bound: float
    rank_z: int
    rank_other: int
    z_factor: CenteredFactor = field(repr=False)
    other_factor: CenteredFactor = field(repr=False)

    @property
    def rel_error_bound(self) -> float:
        """``error_bound / value`` (0 when exact, inf when the value is 0 with a positive bound)."""
        if self.error_bound == 0.0:
            return 0.0
        return self.error_bound / self.value if self.value > 0 else math.inf

    def __iter__(self) -> Iterator[Any]:
        return iter((self.value, self.error_bound, self.other_factor))


# --------------------------------------------------------------------------- memory guard


def exact_memory_bytes(m: int, itemsize: int = 8) -> int:
    """Peak bytes of the exact factor at m samples (float64: itemsize 8).

    Gram (m^2; centred in place, or a centred copy of a caller's Gram) + eigh eigenvectors (m^2) +
    LAPACK syevd workspace (up to 2 m^2 + 6 m); the sorted eigenvectors (m^2) are copied after the
    Gram and workspace are freed. Returns ``(4.25 m^2 + 6 m) * itemsize`` (measured peak RSS on CPU:
    4.1 m^2 * 8 bytes at m = 8000, i.e. 13.6 GB at m = 20,000).
    """
    m = int(m)
    return int((4.25 * m * m + 6 * m) * int(itemsize))


def _check_exact_memory(m: int, device: torch.device, dtype: torch.dtype, what: str) -> None:
    need = exact_memory_bytes(m, torch.finfo(dtype).bits // 8)
    avail = available_memory_bytes(device)
    if need > avail:
        gib = 2.0 ** 30
        raise ExactMemoryError(
            f"{what}: the exact full-sample nHSIC at m = {m} needs about {need / gib:.1f} GiB on {device} "
            f"(m x m Gram, eigenvectors and eigh workspace, {dtype}) but only {avail / gib:.1f} GiB is available. "
            "Use the low-rank path: tolerance=1e-3 (CLI: --tolerance 1e-3), or fewer samples.")


# --------------------------------------------------------------------------- factors
def _check_device(device: DeviceLike) -> torch.device:
    return resolve_device(device)


def factor_from_features(F: torch.Tensor, *, method: str, residual_trace: float = 0.0,
                         trace: Optional[float] = None, kernel: str = "rbf", sigma: Optional[float] = None,
                         rtol: Optional[float] = None, cholesky: Optional[CholeskyFactor] = None) -> CenteredFactor:
    """Centred factor from any ``K ~= F F^T`` (F: (m, r)): thin SVD of ``H F``, O(m r^2).

    ``H K H ~= (HF)(HF)^T = U diag(s^2) U^T``. Singular values below ``rtol * s_max`` (default
    ``max(m, r) * machine eps``) are dropped as numerically zero (the constant direction). For
    ``method="lowrank"`` their squares are added to ``residual_trace`` so that the error bound stays
    a bound; exact/label factors are exact by construction and keep ``residual_trace`` as given.
    trace: ``tr(K)`` (default ``||F||_F^2``).
    """
    Fc = F - F.mean(dim=0, keepdim=True)
    m, r = Fc.shape
    dropped = 0.0
    if r == 0:
        U = Fc.new_zeros((m, 0))
        s2 = Fc.new_zeros((0,))
    elif m >= 2 * r or (method == "lowrank" and m >= r):
        # tall: eigh of the (r, r) Gram, U = Fc V / s (O(m r^2), BLAS-3; several times faster than
        # the SVD, so low-rank factors use it up to r = m). Squaring the condition number only blurs
        # directions with s2 ~ eps * s2_max, whose weight s2 / (s2 + eps m) is ~0.
        lam, V = torch.linalg.eigh(Fc.T @ Fc)
        lam, V = lam.flip(0), V.flip(1)
        tol = (max(m, r) * torch.finfo(Fc.dtype).eps if rtol is None else rtol ** 2) * lam[0].clamp_min(0)
        keep = lam > tol
        dropped = float(lam[~keep].abs().sum())
        lam, V = lam[keep], V[:, keep]
        U = (Fc @ V) / lam.sqrt()[None, :]
        s2 = lam
    else:
        U, s, _ = torch.linalg.svd(Fc, full_matrices=False)
        if rtol is None:
            rtol = max(m, r) * torch.finfo(Fc.dtype).eps
        keep = s > rtol * s[0]
        dropped = float((s[~keep] ** 2).sum())
        U, s2 = U[:, keep], s[keep] ** 2
    res = float(residual_trace) + (dropped if method == "lowrank" else 0.0)
    tr = float((F * F).sum()) if trace is None else float(trace)
    return CenteredFactor(U=U, s2=s2, method=method, residual_trace=res, trace=tr, kernel=kernel, sigma=sigma,
                          cholesky=cholesky)


def _exact_from_gram(K: torch.Tensor, kernel: str, sigma: Optional[float], *, owned: bool) -> CenteredFactor:
    """Exact factor by eigh of ``H K H`` (K: (m, m)); centres in place when ``owned``."""
    if not owned:
        K = K.clone()
    trace = float(torch.diagonal(K).sum())
    row = K.mean(dim=1, keepdim=True)
    col = K.mean(dim=0, keepdim=True)
    K.sub_(row).sub_(col).add_(row.mean())           # H K H in place (eigh reads the lower triangle)
    s2, V = torch.linalg.eigh(K)
    del K
    idx = torch.nonzero(s2 > 0).flatten().flip(0)     # positive eigenvalues, descending
    U = V[:, idx]
    del V
    return CenteredFactor(U=U, s2=s2[idx], method="exact", trace=trace, kernel=kernel, sigma=sigma)


def _rbf_gram_inplace(X: torch.Tensor, sigma: float, squared: bool) -> torch.Tensor:
    """RBF Gram (m, m) with one m x m allocation (``infoplane.kernels.rbf_gram`` makes several)."""
    sq = (X * X).sum(dim=1)
    G = X @ X.T
    G.mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_min_(0.0)
    G.fill_diagonal_(0.0)
    if not squared:
        G.sqrt_()
    return G.div_(-2.0 * float(sigma) ** 2).exp_()


def _validate_common(tolerance: Optional[float], max_rank: Optional[int]) -> None:
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating)):
            raise ValueError(f"tolerance must be a positive float or None (exact), got {tolerance!r}.")
        if not (np.isfinite(tolerance) and 0 < float(tolerance) < 1):
            raise ValueError(f"tolerance must be in (0, 1) (relative error of the nHSIC value, e.g. 1e-3), "
                             f"got {tolerance!r}; use None for the exact factorisation.")
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer))
                                 or max_rank < 1):
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
    tolerance: None = exact (eigh of the centred Gram, O(m^3), ~4 m^2 float64 memory; raises
    :class:`ExactMemoryError` when that exceeds the available memory). A float t in (0, 1) = low rank
    (RBF or explicit ``gram``): t is the relative error of the nHSIC *values* computed from the
    factor, which :func:`nhsic_full` / :func:`refine_nhsic` enforce by extending the factor as needed;
    on its own, factorize stops at the coarse start ``tr(E) <= t tr(K)`` (E = K - F F^T) and
    ``nhsic_factored`` reports the resulting (rigorous, uncontrolled) error bound.
    Label and linear factors are exact at O(m c^2) / O(m d min(m, d)) whatever the tolerance.
    max_rank: cap on the pivoted-Cholesky rank; block: pivots per round; progress: tqdm bar.
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
            _check_exact_memory(K.shape[0], dev, dtype, "factorize(gram=...)")
            return _exact_from_gram(K, "gram", None, owned=False)     # never centre the caller's Gram in place
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
        return factor_from_features(Y, method="label", kernel="label")
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
        _check_exact_memory(X.shape[0], dev, dtype, "factorize")
        return _exact_from_gram(_rbf_gram_inplace(X, s, squared), "rbf", s, owned=True)
    ch = pivoted_cholesky(rbf_columns(X, s, squared), torch.ones(X.shape[0], dtype=dtype, device=dev),
                          tolerance=float(tolerance), max_rank=max_rank, block=block, progress=progress)
    return _lowrank_from_cholesky(ch, kernel="rbf", sigma=s)


def _lowrank_from_cholesky(ch: CholeskyFactor, *, kernel: str, sigma: Optional[float]) -> CenteredFactor:
    if ch.complete:      # full rank: F F^T = K, the factor is exact
        f = factor_from_features(ch.factor, method="lowrank", trace=ch.trace, kernel=kernel, sigma=sigma,
                                 cholesky=ch)
        f.residual_trace = 0.0          # directions dropped here are numerically zero eigenvalues of K~
        return f
    return factor_from_features(ch.factor, method="lowrank", residual_trace=ch.residual_trace, trace=ch.trace,
                                kernel=kernel, sigma=sigma, cholesky=ch)


def extend_factor(f: CenteredFactor, *, residual: float, max_rank: Optional[int] = None,
                  progress: bool = False) -> CenteredFactor:
    """Continue a low-rank factor's pivoted Cholesky until ``tr(E) <= residual``; returns a new factor
    on ``f``'s device (``f`` is unchanged; ``f`` itself when it cannot or need not be extended)."""
    if not f.extendable:
        return f
    ch = extend_cholesky(f.cholesky, residual=residual, max_rank=max_rank, progress=progress)
    if ch is f.cholesky:
        return f
    return _lowrank_from_cholesky(ch, kernel=f.kernel, sigma=f.sigma).to(f.U.device)


def _exact_fits(ch: CholeskyFactor) -> bool:
    dev, dtype = ch.residual_diag.device, ch.residual_diag.dtype
    return exact_memory_bytes(ch.m, torch.finfo(dtype).bits // 8) <= available_memory_bytes(dev)


class ExactSideCache:
    """Holds the exact side (resolvent) of one variable once a low-rank factor of it has fallen back
    to it, for every later :func:`refine_nhsic` call with a factor of the same variable (e.g. the
    input side X of a store, reused by every layer). Thread-safe: computed once, by the first caller.

    The fallback decision stays per call (it depends only on that call's factors), so values do not
    depend on the order of calls; only the computation is shared.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sides: dict = {}

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._sides:
                self._sides[key] = make()
            return self._sides[key]


def _exact_from_cholesky(f: CenteredFactor, device: torch.device, eps: float) -> "ResolventSide":
    """The exact side of a low-rank factor's Gram, from its column oracle (memory-checked): the
    resolvent ``R = K~ (K~ + eps m I)^-1`` by Cholesky (``infoplane.estimators.exact``): no
    eigenvectors, about half the time of the eigh factor at m = 2,000."""
    from infoplane.estimators.exact import resolvent_from_gram

    ch = f.cholesky
    _check_exact_memory(ch.m, ch.residual_diag.device, ch.residual_diag.dtype, "nhsic_full")
    K = ch.cols(torch.arange(ch.m, device=ch.residual_diag.device)).to(ch.residual_diag.dtype)
    return resolvent_from_gram(K, eps, sigma=f.sigma).to(device)    # K[:, arange] is a fresh tensor


def _exact_side(f: CenteredFactor, side: str, device: torch.device, eps: float,
                other_exact: Optional[ExactSideCache]) -> Any:
    if side == "o" and other_exact is not None:
        key = (float(eps), str(device), f.m, f.kernel, f.sigma)
        return other_exact.get(key, lambda: _exact_from_cholesky(f, device, eps))
    return _exact_from_cholesky(f, device, eps)


# --------------------------------------------------------------------------- values and bounds
def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive float (paper: 1e-5), got {eps!r}.")
    return float(eps)


def _device_of(f: Any) -> torch.device:
    return f.R.device if _is_resolvent(f) else f.U.device


def _is_resolvent(f: Any) -> bool:
    return getattr(f, "method", None) == "resolvent"


def _value(a: Any, b: Any, eps: float) -> float:
    """``Tr(R_a R_b)`` of two factors, or of a factor and an exact resolvent side."""
    if _is_resolvent(a) or _is_resolvent(b):
        from infoplane.estimators.exact import resolvent_value

        r, other = (a, b) if _is_resolvent(a) else (b, a)
        if r.eps != eps:
            raise ValueError(f"a resolvent side computed at eps = {r.eps:g} cannot be used at eps = {eps:g}.")
        return resolvent_value(r, other)
    dev = a.U.device
    ub = b.U.to(dev)
    wa = a.weights(eps).sqrt()
    wb = b.weights(eps).to(dev).sqrt()
    M = (a.U.T @ ub) * wa[:, None] * wb[None, :]
    return float((M * M).sum())


def _error_bound(a: CenteredFactor, b: CenteredFactor, eps: float, v: float) -> float:
    """Rigorous ``exact - v`` bound (module docstring, step 3), 0 when both factors are exact."""
    ta, tb = max(a.residual_trace, 0.0), max(b.residual_trace, 0.0)
    if ta == 0.0 and tb == 0.0:
        return 0.0
    am = eps * a.m

    def g(x: float) -> float:
        return x / (x + am)

    smax_a = float(a.s2.max()) if a.rank else 0.0
    smax_b = float(b.s2.max()) if b.rank else 0.0
    n_a, n_b = g(smax_a), g(smax_b)                        # ||R_a'||, ||R_b'||
    N_a, N_b = g(smax_a + ta), g(smax_b + tb)              # >= ||R_a||, ||R_b|| (Weyl: ||HEH|| <= tr E)
    gap = min(ta * N_b + n_a * tb, N_a * tb + ta * n_b) / am
    # exact = Tr(R_a R_b) <= ||R_b|| Tr(R_a) <= N_b (Tr R_a' + ta / am), and symmetrically
    tr_a = float(a.weights(eps).sum()) + ta / am
    tr_b = float(b.weights(eps).sum()) + tb / am
    return max(min(gap, N_b * tr_a - v, N_a * tr_b - v), 0.0)


def nhsic_factored(a: CenteredFactor, b: CenteredFactor, eps: float = 1e-5) -> tuple[float, float]:
    """nHSIC between two factored variables: ``(value, error_bound)``, cost O(m k_a k_b).

    value = ``||diag(w_a)^1/2 U_a^T U_b diag(w_b)^1/2||_F^2``, ``w = s2 / (s2 + eps m)``; a lower bound
    of the exact value. error_bound: rigorous, ``exact - value in [0, error_bound]``, at most
    ``(residual_trace_a + residual_trace_b) / (eps m)`` (module docstring); 0 when both are exact.
    """
    eps = _check_eps(eps)
    if a.m != b.m:
        raise ValueError(f"nhsic_factored: factors have different numbers of samples ({a.m} vs {b.m}).")
    if a.m < 2:
        raise ValueError("nhsic_factored: need at least m = 2 samples.")
    v = _value(a, b, eps)
    return v, _error_bound(a, b, eps, v)


_SAFETY = 0.98      # residual targets a little below the budget, so rounding cannot leave bound > t v
#: a side whose pivoted Cholesky reaches this fraction of m is replaced by its exact resolvent: the
#: rounds to rank r cost O(m r^2) plus a thin SVD of rank r each, which pass the exact resolvent's
#: cost between m/4 and m/2 (784-d Fashion-MNIST inputs at m = 10,000, benchmarks/speed.py --epoch 0:
#: a later layer took 74 s with 1/2 and 22 s with 1/4, against 45-52 s exact)
_EXACT_FROM = 0.25
_RHO = 0.25         # of two sides over target, extend those with at least this share of the larger residual


def refine_nhsic(z_factor: CenteredFactor, other_factor: CenteredFactor, *, eps: float = 1e-5,
                 tolerance: Optional[float] = None, max_rank: Optional[int] = None,
                 progress: bool = False, other_exact: Optional[ExactSideCache] = None) -> FullSampleNHSIC:
    """nHSIC of two factors, extending low-rank ones until ``error_bound <= tolerance * value``.

    Rounds: v, bound = :func:`nhsic_factored`; stop when ``bound <= t v``; else give each extendable
    side a residual target so that ``tr E_z + tr E_other <= t (eps m) v`` (split evenly, or the rest
    of the budget to one side when the other already fits in half; when both are over target, only a
    side holding at least 1/4 of the larger residual is extended) and continue its pivoted Cholesky
    (rank at most doubled per round, capped by ``max_rank``). A side whose Cholesky stalls at rounding
    level, or (with ``max_rank=None``) would need more than m/4 pivots, is replaced by its exact side
    when :func:`exact_memory_bytes` fits in :func:`available_memory_bytes` (else it continues at low
    rank, up to full rank): the resolvent by Cholesky (:class:`infoplane.estimators.exact.ResolventSide`,
    residual 0), which the returned ``z_factor`` / ``other_factor`` then is. ``other_exact``: an
    :class:`ExactSideCache` that keeps the other side's exact resolvent across calls (one per
    variable, e.g. per store for X). When the contract cannot be met (``max_rank``, or a
    non-extendable factor) a RuntimeWarning gives the bound reached. Returns a
    :class:`FullSampleNHSIC`. tolerance None: no extension (the value and bound of the factors as given).
    """
    eps = _check_eps(eps)
    if tolerance is not None:
        _validate_common(tolerance, max_rank)
    fz, fo = z_factor, other_factor
    if fz.m != fo.m:
        raise ValueError(f"refine_nhsic: z has {fz.m} samples but other has {fo.m}.")
    dev = _device_of(fz)
    fo = fo.to(dev) if _device_of(fo) != dev else fo
    m = fz.m
    am = eps * m
    while True:
        v, bound = nhsic_factored(fz, fo, eps)
        if tolerance is None or bound <= tolerance * v:
            break
        budget = _SAFETY * tolerance * v * am          # allowed tr E_z + tr E_other
        tz = fz.residual_trace
        to = fo.residual_trace
        # residual targets: half the budget each, or what the other side leaves; of two sides over
        # their target only the dominant one(s) are extended, so a reused factor (already fitted to
        # a similar value) is not tightened while v is still low because z is coarse
        both = fz.extendable and fo.extendable
        goal_z = (budget / 2 if to > budget / 2 else budget - to) if both else budget - to
        goal_o = (budget / 2 if tz > budget / 2 else budget - tz) if both else budget - tz
        targets: dict[str, float] = {}
        if fz.extendable and tz > goal_z > 0:
            targets["z"] = goal_z
        if fo.extendable and to > goal_o > 0:
            targets["o"] = goal_o
        if budget <= 0.0:           # v = 0 so far: tighten every extendable side (rank doubles)
            targets = {k: 0.0 for k, f in (("z", fz), ("o", fo)) if f.extendable}
        if len(targets) == 2:
            targets = {k: g for k, g in targets.items() if (tz if k == "z" else to) >= _RHO * max(tz, to)}
        progressed = False
        for side, target in targets.items():
            f = fz if side == "z" else fo
            ch = f.cholesky
            cap = max(2 * ch.rank, ch.rank + ch.block)
            cap = min(cap, ch.m if max_rank is None else int(max_rank))
            # past rank m/4 the exact resolvent is cheaper than more pivots: switch when memory allows
            exact_ok = max_rank is None and _exact_fits(ch)
            limit = max(1, int(_EXACT_FROM * m))
            if exact_ok and ch.rank >= limit:
                g = _exact_side(f, side, dev, eps, other_exact)
            else:
                g = extend_factor(f, residual=target, max_rank=min(cap, limit) if exact_ok else cap,
                                  progress=progress)
            progressed |= g is not f
            if side == "z":
                fz = g
            else:
                fo = g
        if progressed:
            continue
        # no side could be extended: exact factors for sides whose Cholesky stalled at rounding level
        swapped = False
        for side in ("z", "o"):
            f = fz if side == "z" else fo
            ch = f.cholesky
            if f.method == "lowrank" and not f.exact and ch is not None and ch.stalled and ch.cols is not None \
                    and _exact_fits(ch):
                g = _exact_side(f, side, dev, eps, other_exact)
                swapped = True
                if side == "z":
                    fz = g
                else:
                    fo = g
        if swapped:
            continue
        warnings.warn(f"nhsic_full: error bound {bound:.3g} exceeds tolerance * value = {tolerance * v:.3g} "
                      f"(ranks {fz.rank}, {fo.rank}; max_rank={max_rank}); raise max_rank or the tolerance.",
                      RuntimeWarning, stacklevel=3)
        break
    return FullSampleNHSIC(value=v, error_bound=bound, rank_z=fz.rank, rank_other=fo.rank, z_factor=fz,
                           other_factor=fo)


def nhsic_full(z: Any, other: Any = None, *, kernel_y: str = "rbf", eps: float = 1e-5,
               sigma: Union[str, float] = "paper", sigma_y: Union[str, float, None] = None,
               tolerance: Optional[float] = None, other_factor: Optional[CenteredFactor] = None,
               squared: bool = True, max_rank: Optional[int] = None, device: DeviceLike = "cpu",
               dtype: torch.dtype = torch.float64, num_classes: Optional[int] = None, block: int = 64,
               progress: bool = False) -> FullSampleNHSIC:
    """Full-sample nHSIC(Z; other) -> :class:`FullSampleNHSIC` (value, error_bound, ranks, factors).

    z: representation (m, ...), RBF kernel with ``sigma`` (or a :class:`CenteredFactor`); other: X
    (m, ...) with ``kernel_y="rbf"`` (bandwidth ``sigma_y``, default = ``sigma``), labels
    (m,) with ``kernel_y="label"``, or features with ``"linear"``. Pass the returned
    ``other_factor`` back as ``other_factor`` (``other`` may then be None) to reuse it for every
    layer/checkpoint; it may come back extended, so keep the returned one.
    tolerance: None = exact (memory-checked eigh); t = relative error of the value: the result has
    ``exact - value in [0, error_bound]`` and ``error_bound <= t * value`` (``refine_nhsic``).
    Legacy unpacking ``value, error_bound, other_factor = nhsic_full(...)`` still works.
    """
    eps = _check_eps(eps)
    _validate_common(tolerance, max_rank)
    if other_factor is None:
        if other is None:
            raise ValueError("nhsic_full: pass other (samples or labels) or other_factor.")
        other_factor = factorize(other, kernel=kernel_y, sigma=sigma if sigma_y is None else sigma_y,
                                 squared=squared, tolerance=tolerance if kernel_y == "rbf" else None,
                                 max_rank=max_rank, device=device, dtype=dtype, num_classes=num_classes,
                                 block=block, progress=progress)
    if isinstance(z, CenteredFactor):
        fz = z
    else:
        fz = factorize(z, kernel="rbf", sigma=sigma, squared=squared, tolerance=tolerance, max_rank=max_rank,
                       device=device, dtype=dtype, block=block, progress=progress)
    if fz.m != other_factor.m:
        raise ValueError(f"nhsic_full: z has {fz.m} samples but other has {other_factor.m}.")
    return refine_nhsic(fz, other_factor, eps=eps, tolerance=tolerance, max_rank=max_rank, progress=progress)
