"""Exact chance level of trace statistics: permutation-null moments, p-value, chance-adjusted value.

nHSIC and biased HSIC are trace statistics ``T = s Tr(A B)`` of two symmetric, doubly centred
``(m, m)`` matrices (``A 1 = B 1 = 0``): for nHSIC ``A = R_K = K~(K~ + eps m I)^-1`` (``R_K 1 = 0``
because ``(K~ + eps m I) 1 = eps m 1`` and ``K~ 1 = 0``), ``s = 1``; for biased HSIC ``A = K~``,
``s = 1/(m - 1)^2``. Under independence every pairing of the samples is equally likely, so the
null distribution of ``T`` is that of ``T_P = s Tr(A P B P^T)`` over uniformly random permutations
P. Its first two moments have closed forms in O(m^2) (Kazi-Aoual, Hitier, Sabatier & Lebreton
1995, "Refined approximations to permutation tests for multivariate inference"; Josse, Pagès &
Husson 2008, "Testing the significance of the RV coefficient"). With, for each matrix,
``t = Tr(A)``, ``t2 = Tr(A^2)`` and ``q = sum_i A_ii^2``:

* mean: ``E[T_P] = s t_A t_B / (m - 1)``. (Derivation: ``E[P B P^T]_ii = t_B / m`` and for
  ``i != j`` ``E[P B P^T]_ij = (1^T B 1 - t_B) / (m (m - 1)) = -t_B / (m (m - 1))``, so
  ``E[P B P^T] = t_B / (m - 1) H``, and ``Tr(A H) = t_A`` because A is doubly centred.)
* variance: ``Var[T_P] = s^2 [ 2 ((m-1) t2_A - t_A^2)((m-1) t2_B - t_B^2) / ((m-1)^2 (m+1) (m-2))
  + u_A u_B / ((m+1) m (m-1) (m-2) (m-3)) ]`` with ``u = m (m+1) q - (m-1)(t^2 + 2 t2)``; m >= 4.
  ``(m-1) t2 - t^2`` is evaluated as ``(m-1) sum_i (lambda_i - t/(m-1))^2`` over the m - 1
  eigenvalues orthogonal to 1 (no cancellation when the spectrum is nearly flat).

Chance-adjusted value (in the spirit of adjusted mutual information): by von Neumann's trace
inequality ``T_P <= s sum_i lambda_i(A) lambda_i(B)`` (eigenvalues sorted in descending order) for
every pairing, including the observed one, so

    adjusted = (T - E[T_P]) / (max - E[T_P]),    max = s sum_i lambda_i(A) lambda_i(B),

is 0 on average at chance and at most 1 (perfect alignment of the two spectra). It removes the
part of nHSIC that is the product of two effective dimensions ``Tr(R_K) Tr(R_L) / (m - 1)``, so it
is comparable across layers, m and eps.

p-value: one-sided, from a gamma distribution with the null mean and variance (the two-moment
approximation of Gretton et al. 2008, "A kernel statistical test of independence"); it is accurate
in the body of the null and only approximate in the far tail. For exact small p-values use a
permutation test (``infoplane.estimators.permutation_test``).

Minibatch protocol: the value is the mean of B per-batch statistics, each with its own
(independent) within-batch permutation null, so ``null_mean`` is the mean of the per-batch means,
``null_sd = sqrt(sum_b Var_b) / B`` (the sd of the mean), and ``adjusted`` uses the mean of the
per-batch maxima.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = ["SpectralSummary", "summarize", "summarize_factor", "null_moments", "adjusted_value",
           "gamma_p_value", "ChanceLevel", "chance_level"]


@dataclass
class SpectralSummary:
    """What the null moments and the upper bound need of a doubly centred symmetric matrix A.

    All fields are per batch: ``trace`` (B,) = Tr(A), ``trace_sq`` (B,) = Tr(A^2), ``diag_sq`` (B,)
    = sum_i A_ii^2, ``eigenvalues`` (B, k) sorted in descending order (zeros may be left out),
    ``m`` the matrix size.
    """

    trace: torch.Tensor
    trace_sq: torch.Tensor
    diag_sq: torch.Tensor
    eigenvalues: torch.Tensor
    m: int


def summarize(A: torch.Tensor, symmetric: bool = False) -> SpectralSummary:
    """Summary of symmetric doubly centred matrices ``A`` of shape (m, m) or (B, m, m).

    ``symmetric=True`` when A is exactly symmetric (e.g. from ``cholesky_inverse``): no
    symmetrising copy."""
    if A.dim() == 2:
        A = A[None]
    if not symmetric:
        A = 0.5 * (A + A.transpose(-1, -2))
    d = torch.diagonal(A, dim1=-2, dim2=-1)
    lam = torch.linalg.eigvalsh(A).flip(-1)
    return SpectralSummary(trace=d.sum(-1), trace_sq=(A * A).sum(dim=(-2, -1)), diag_sq=(d * d).sum(-1),
                           eigenvalues=lam, m=int(A.shape[-1]))


def summarize_factor(U: torch.Tensor, w: torch.Tensor) -> SpectralSummary:
    """Summary of ``A = U diag(w) U^T`` with orthonormal columns U (m, k) orthogonal to 1: O(m k)."""
    diag = (U * U) @ w
    order = torch.argsort(w, descending=True)
    return SpectralSummary(trace=w.sum()[None], trace_sq=(w * w).sum()[None], diag_sq=(diag * diag).sum()[None],
                           eigenvalues=w[order][None], m=int(U.shape[0]))


def null_moments(a: SpectralSummary, b: SpectralSummary, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch permutation-null mean and variance of ``scale * Tr(A P B P^T)``: two (B,) arrays.

    Exact (module docstring); needs m >= 4 for the variance (NaN below).
    """
    if a.m != b.m:
        raise ValueError(f"null_moments: matrices of different sizes ({a.m} vs {b.m}).")
    n = float(a.m)
    ta, tb = a.trace.double(), b.trace.double().to(a.trace.device)
    t2a, t2b = a.trace_sq.double(), b.trace_sq.double().to(a.trace.device)
    qa, qb = a.diag_sq.double(), b.diag_sq.double().to(a.trace.device)
    mean = scale * ta * tb / (n - 1.0)
    if a.m < 4:
        var = torch.full_like(mean, math.nan)
    else:
        # (m-1) t2 - t^2 = (m-1)^2 var(lambda) over the m-1 eigenvalues orthogonal to 1: computed from
        # the eigenvalues, since the difference of the two large terms cancels when the spectrum is flat
        da = _spread(a, a.m)
        db = _spread(b, a.m).to(da)
        first = 2.0 * da * db / ((n + 1) * (n - 2))
        ua = n * (n + 1) * qa - (n - 1) * (ta ** 2 + 2 * t2a)
        ub = n * (n + 1) * qb - (n - 1) * (tb ** 2 + 2 * t2b)
        second = ua * ub / ((n + 1) * n * (n - 1) * (n - 2) * (n - 3))
        var = (scale ** 2) * (first + second)
        var = var.clamp_min(0.0)  # rounding can make an exactly-zero variance slightly negative
    return mean.cpu().numpy(), var.cpu().numpy()


def _spread(s: SpectralSummary, m: int) -> torch.Tensor:
    """``sum_i (lambda_i - mean)^2`` over the m - 1 eigenvalues of A orthogonal to 1, per batch.

    ``eigenvalues`` holds either all m (the one of smallest magnitude, the 0 of the 1 direction, is
    dropped) or only the k nonzero ones (the rest are zeros)."""
    lam = s.eigenvalues.double()
    if lam.shape[-1] >= m:
        order = torch.argsort(lam.abs(), dim=-1, descending=True)
        lam = torch.gather(lam, -1, order)[..., : m - 1]
    k = lam.shape[-1]
    mu = s.trace.double().to(lam.device)[..., None] / (m - 1)
    return ((lam - mu) ** 2).sum(-1) + (m - 1 - k) * mu[..., 0] ** 2


def upper_bound(a: SpectralSummary, b: SpectralSummary, scale: float = 1.0) -> np.ndarray:
    """Per-batch von Neumann bound ``scale * sum_i lambda_i(A) lambda_i(B)`` (descending): (B,)."""
    la, lb = a.eigenvalues.double(), b.eigenvalues.double().to(a.eigenvalues.device)
    k = min(la.shape[-1], lb.shape[-1])
    return (scale * (la[..., :k] * lb[..., :k]).sum(-1)).cpu().numpy()


def adjusted_value(value: float, null_mean: float, max_value: float) -> float:
    """``(value - null_mean) / (max_value - null_mean)``; NaN when the bound equals the null mean."""
    den = max_value - null_mean
    if not (math.isfinite(den) and den > 1e-12 * max(abs(max_value), 1.0)):
        return math.nan
    return (value - null_mean) / den


def gamma_p_value(value: float, mean: float, var: float) -> float:
    """One-sided p-value ``P(T >= value)`` of a gamma law with the given mean and variance (T >= 0)."""
    if not (math.isfinite(value) and math.isfinite(mean) and math.isfinite(var)) or mean <= 0 or var <= 0:
        return math.nan
    shape, scale = mean * mean / var, var / mean
    # the regularised upper incomplete gamma Q(shape, x), in float64 (as scipy.special.gammaincc;
    # torch's is used because importing scipy.special costs ~0.3 s of a short job)
    q = torch.special.gammaincc(torch.tensor(shape, dtype=torch.float64),
                                torch.tensor(max(value, 0.0) / scale, dtype=torch.float64))
    return float(q)


@dataclass
class ChanceLevel:
    """Chance level of a (batch-averaged) trace statistic; see the module docstring.

    null_mean / null_sd: permutation-null mean and sd of the reported value; z = (value -
    null_mean) / null_sd; p_value: one-sided gamma approximation; max_value: the von Neumann
    bound (averaged over batches); adjusted: chance-adjusted value.
    """

    null_mean: float
    null_sd: float
    z: float
    p_value: float
    max_value: float
    adjusted: float


def chance_level(values: np.ndarray, a: SpectralSummary, b: SpectralSummary, scale: float = 1.0,
                 max_values: Optional[np.ndarray] = None) -> ChanceLevel:
    """Chance level of ``mean(values)`` where ``values`` (B,) are per-batch statistics of A, B."""
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    mean_b, var_b = null_moments(a, b, scale)
    if len(mean_b) != len(vals):
        raise ValueError(f"chance_level: {len(vals)} values but {len(mean_b)} batch summaries.")
    B = len(vals)
    value = float(vals.mean())
    null_mean = float(mean_b.mean())
    null_var = float(var_b.sum()) / B ** 2
    null_sd = math.sqrt(null_var) if math.isfinite(null_var) else math.nan
    z = (value - null_mean) / null_sd if null_sd > 0 else math.nan
    mx = upper_bound(a, b, scale) if max_values is None else np.asarray(max_values, dtype=np.float64)
    max_value = float(np.mean(mx))
    return ChanceLevel(null_mean=null_mean, null_sd=null_sd, z=float(z),
                       p_value=gamma_p_value(value, null_mean, null_var), max_value=max_value,
                       adjusted=adjusted_value(value, null_mean, max_value))
