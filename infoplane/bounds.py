"""The paper's inequalities as functions (Sakamoto & Sato 2024 appendix E.2; docs/estimators.md "Inequalities").

Used by tests and as run-time sanity checks:

* Lemma 1 (eq. 33): one-hot Y, linear kernel: ``HSIC(Y,Z) = (1/c)(E_pos k - E k) <= 1/c``.
* Theorem 4 (eq. 32): ``||z|| <= M``, RBF width sigma, ``T = 2 sigma^2``:
  ``lim_n l_sn(n, T) >= log c - c exp(2 M^2 / sigma^2) HSIC(Y, Z)``.
* nHSIC rank bound: ``0 <= nHSIC <= min(rank K~, rank L~)``.
* Gibbs & Su: ``I <= log(1 + I_chi2) <= I_chi2``.

"Population" quantities here are those of the *empirical measure* of the samples (each sample mass
1/m, classes exactly balanced where the statement assumes it), so the statements hold exactly for
these plug-in values and can be checked on any sample; HSIC of the empirical measure is the
V-statistic ``Tr(K~ L~)/m^2`` (``hsic_vstat``), not the paper's ``/(m-1)^2`` estimator.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from infoplane.kernels import ArrayLike, as_tensor, center, flatten, label_gram, rbf_gram

__all__ = [
    "hsic_vstat", "class_weights", "lemma1_bound", "lemma1_hsic", "label_hsic_population",
    "theorem4_rhs", "snn_population_limit", "theorem4_check", "nhsic_rank_bound",
    "nhsic_within_bounds", "gibbs_su_holds", "max_norm",
]


def hsic_vstat(K: ArrayLike, L: ArrayLike) -> float:
    """HSIC of the empirical measure: ``Tr(K~ L~) / m^2`` (eq. 7 with expectations over the sample)."""
    Kt, Lt = as_tensor(K), as_tensor(L)
    m = Kt.shape[0]
    return float((center(Kt) * Lt.T).sum().detach()) / m ** 2


def _labels(y: ArrayLike) -> torch.Tensor:
    yt = as_tensor(y, dtype=None).long()
    if yt.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(yt.shape)}.")
    return yt


def class_weights(y: ArrayLike) -> Dict[int, float]:
    """Empirical class probabilities ``{class: p(y)}``."""
    yt = _labels(y)
    vals, counts = torch.unique(yt, return_counts=True)
    return {int(v): float(c) / yt.numel() for v, c in zip(vals, counts)}


def _require_balanced(y: torch.Tensor, what: str) -> int:
    _, counts = torch.unique(y, return_counts=True)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"{what} assumes exactly balanced classes; got class counts {counts.tolist()}. "
                         "Subsample to equal counts or use label_hsic_population.")
    return int(counts.numel())


def lemma1_bound(num_classes: int) -> float:
    """Upper bound of Lemma 1: ``HSIC(Y, Z) <= 1/c`` (kernel on Z bounded by 1, e.g. RBF)."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    return 1.0 / int(num_classes)


def label_hsic_population(K: ArrayLike, y: ArrayLike) -> float:
    """HSIC(Y, Z) of the empirical measure for one-hot Y with a linear kernel, any class balance:
    ``sum_y p_y^2 (E_{z,z'|y} k - 2 E_{z|y, z'} k + E k)`` (eq. 34-42 without assuming p_y = 1/c)."""
    Kt, yt = as_tensor(K), _labels(y)
    tot = Kt.mean()
    out = 0.0
    for v, p in class_weights(yt).items():
        idx = yt == v
        out += p * p * float(Kt[idx][:, idx].mean() - 2.0 * Kt[idx].mean() + tot)
    return out


def lemma1_hsic(K: ArrayLike, y: ArrayLike) -> float:
    """Lemma 1 (eq. 33) on the empirical measure, balanced classes: ``(1/c)(E_pos k - E k)``,
    with ``E_pos k = (1/c) sum_y E_{z,z'|y} k``."""
    Kt, yt = as_tensor(K), _labels(y)
    c = _require_balanced(yt, "Lemma 1")
    e_pos = sum(float(Kt[yt == v][:, yt == v].mean()) for v in torch.unique(yt)) / c
    return (e_pos - float(Kt.mean())) / c


def theorem4_rhs(hsic: float, num_classes: int, M: float, sigma: float) -> float:
    """Right-hand side of Theorem 4 (eq. 32): ``log c - c exp(2 M^2/sigma^2) HSIC(Y, Z)``."""
    c = int(num_classes)
    h = float(hsic)
    expo = 2.0 * M * M / (sigma * sigma)
    if h == 0.0:
        return math.log(c)
    if expo > 700.0:  # exp overflows float64: the bound is vacuous (-inf for HSIC > 0, +inf for < 0)
        return -math.inf if h > 0 else math.inf
    return math.log(c) - c * math.exp(expo) * h


def max_norm(z: ArrayLike) -> float:
    """``M = max_i ||z_i||`` on flattened samples."""
    return float(flatten(z).detach().norm(dim=1).max())


def snn_population_limit(z: ArrayLike, y: ArrayLike, sigma: float) -> float:
    """``lim_n l_sn(n, 2 sigma^2)`` of eq. 51 for the empirical measure (balanced classes):
    ``log c - E log E_{z'|y} k(z, z') + E log E_{z'} k(z, z')`` with the RBF kernel of width sigma."""
    yt = _labels(y)
    c = _require_balanced(yt, "Theorem 4")
    K = rbf_gram(z, sigma=sigma)
    same = (yt[:, None] == yt[None, :]).to(K.dtype)
    pos = (K * same).sum(dim=1) / same.sum(dim=1)
    allk = K.mean(dim=1)
    return math.log(c) - float(torch.log(pos).mean()) + float(torch.log(allk).mean())


def theorem4_check(z: ArrayLike, y: ArrayLike, sigma: float, M: Optional[float] = None) -> Dict[str, float]:
    """Theorem 4 on the empirical measure: returns ``{"lhs", "rhs", "hsic", "M", "holds"}``.

    ``M`` defaults to ``max ||z_i||``; HSIC is ``hsic_vstat`` (linear kernel on one-hot y).
    """
    yt = _labels(y)
    M = max_norm(z) if M is None else float(M)
    K = rbf_gram(z, sigma=sigma)
    h = hsic_vstat(K, label_gram(yt))
    c = int(torch.unique(yt).numel())
    lhs = snn_population_limit(z, yt, sigma)
    rhs = theorem4_rhs(h, c, M, sigma)
    return {"lhs": lhs, "rhs": rhs, "hsic": h, "M": M, "holds": float(lhs >= rhs - 1e-9)}


def nhsic_rank_bound(K: ArrayLike, L: ArrayLike, rtol: Optional[float] = None) -> int:
    """``min(rank K~, rank L~)`` (numerical ranks, Hermitian SVD tolerance ``rtol``)."""
    rk = int(torch.linalg.matrix_rank(center(as_tensor(K)), hermitian=True, rtol=rtol))
    rl = int(torch.linalg.matrix_rank(center(as_tensor(L)), hermitian=True, rtol=rtol))
    return min(rk, rl)


def nhsic_within_bounds(value: float, K: ArrayLike, L: ArrayLike, tol: float = 1e-8) -> bool:
    """``-tol <= value <= min(rank K~, rank L~) + tol``."""
    return -tol <= float(value) <= nhsic_rank_bound(K, L) + tol


def gibbs_su_holds(mi: float, chi2_mi: float, tol: float = 1e-12) -> bool:
    """Gibbs & Su: ``I <= log(1 + I_chi2) <= I_chi2`` (both in nats)."""
    if chi2_mi < 0 or mi < -tol:
        raise ValueError(f"mutual informations must be >= 0, got I={mi}, I_chi2={chi2_mi}.")
    mid = math.log1p(chi2_mi)
    return mi <= mid + tol and mid <= chi2_mi + tol
