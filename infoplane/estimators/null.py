"""Null level of every estimator: values on shuffled pairs and permutation tests (docs/estimators.md).

Shuffling y against x destroys the dependence while keeping both marginals, so the estimator's value
on shuffled pairs is the level an independent pair would score at the same m, eps and kernels (nHSIC
of an independent pair is far from 0 at small m). For kernel estimators the Gram matrices are built
once and L is permuted (``L[p][:, p]``); estimators with ``null_prepare`` (HSIC, nHSIC) then cost
O(m^2) per permutation, since e.g. ``R(P L P^T) = P R(L) P^T`` for the nHSIC resolvent.
p-value convention: ``(1 + #{null >= value}) / (1 + n_permutations)`` (never 0; ``<=`` for estimators
registered with ``larger_is_dependent=False``, e.g. the SNN loss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from infoplane.estimators.dependence import check_paired, pair_grams
from infoplane.estimators.hsic import validate_grams
from infoplane.estimators.protocol import check_estimator_params
from infoplane.estimators.registry import EstimatorSpec, get_estimator
from infoplane.kernels import ArrayLike, SigmaLike, as_tensor

__all__ = ["PermutationResult", "null_baseline", "permutation_test", "permutation_test_grams",
           "null_baseline_grams"]


@dataclass
class PermutationResult:
    """Observed value, null distribution summary and permutation p-value."""

    value: float
    null_mean: float
    null_sd: float
    p_value: float
    n_permutations: int
    null_values: np.ndarray


def _check_n(n: int, what: str) -> int:
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}.")
    return int(n)


def _result(value: float, null: np.ndarray, larger: bool = True) -> PermutationResult:
    n = len(null)
    extreme = null >= value if larger else null <= value
    p = (1.0 + float(np.sum(extreme))) / (1.0 + n)
    sd = float(np.std(null, ddof=1)) if n > 1 else 0.0
    return PermutationResult(float(value), float(np.mean(null)), sd, p, n, null)


def _perms(m: int, n: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(int(seed))
    for _ in range(n):
        yield torch.randperm(m, generator=g).to(device)


def permutation_test_grams(K: ArrayLike, L: ArrayLike, estimator: Union[str, EstimatorSpec] = "nhsic",
                           n_permutations: int = 200, seed: int = 0, *, progress: bool = False,
                           **params: Any) -> PermutationResult:
    """Permutation test of a kernel estimator on precomputed Gram matrices (L is permuted)."""
    spec = get_estimator(estimator)
    if spec.kind != "kernel":
        raise ValueError(f"estimator {spec.name!r} is of kind {spec.kind!r}; use permutation_test(x, y, ...).")
    n = _check_n(n_permutations, "n_permutations")
    kw = check_estimator_params(spec, params)
    Kt, Lt = validate_grams(K, L, name=f"permutation_test({spec.name})", dtype=None)
    m = Kt.shape[0]
    perms = tqdm(_perms(m, n, seed, Kt.device), total=n, desc=f"null {spec.name}",
                 disable=None if progress else True)
    vals = []
    with torch.no_grad():
        if spec.null_prepare is not None:
            AK, sK = spec.null_prepare(Kt, **kw)
            AL, sL = spec.null_prepare(Lt, **kw)
            s = sK * sL
            value = float(s * (AK * AL.T).sum())
            for p in perms:
                vals.append(float(s * (AK * AL[p][:, p].T).sum()))
        else:
            value = float(spec.fn(Kt, Lt, **kw))
            for p in perms:
                vals.append(float(spec.fn(Kt, Lt[p][:, p], **kw)))
    return _result(value, np.asarray(vals), spec.larger_is_dependent)


def null_baseline_grams(K: ArrayLike, L: ArrayLike, estimator: Union[str, EstimatorSpec] = "nhsic",
                        n_permutations: int = 1, seed: int = 0, **params: Any) -> float:
    """Mean value of a kernel estimator over ``n_permutations`` shuffled pairings of precomputed Grams."""
    n = _check_n(n_permutations, "n_permutations")
    return permutation_test_grams(K, L, estimator, n, seed, **params).null_mean


def permutation_test(x: ArrayLike, y: ArrayLike, estimator: Union[str, EstimatorSpec] = "nhsic",
                     n_permutations: int = 200, seed: int = 0, *, kernel_x: str = "rbf",
                     kernel_y: str = "auto", sigma: SigmaLike = "paper", sigma_x: Optional[SigmaLike] = None,
                     sigma_y: Optional[SigmaLike] = None, distance: str = "squared",
                     num_classes: Optional[int] = None, dtype: torch.dtype = torch.float64,
                     device: Optional[Union[str, torch.device]] = None, progress: bool = False,
                     _with_value: bool = True, **params: Any) -> PermutationResult:
    """Value on (x, y), null distribution over ``n_permutations`` shufflings of y, and the p-value.

    Kernel estimators: Grams built once (same kernel arguments as ``infoplane.assess``: ``sigma``
    for both sides unless ``sigma_x`` / ``sigma_y`` are given; ``distance`` 'squared' or
    'euclidean'). Samples/neural estimators: re-run on ``(x, y[p])``. Unknown estimator parameters
    raise ``TypeError``.
    """
    from infoplane.estimators.protocol import DISTANCES, _check_choice

    spec = get_estimator(estimator)
    n = _check_n(n_permutations, "n_permutations")
    squared = _check_choice(distance, DISTANCES, "distance") == "squared"
    kw = check_estimator_params(spec, params)
    if spec.kind == "kernel":
        K, L = pair_grams(x, y, kernel_x, kernel_y, sigma if sigma_x is None else sigma_x,
                          sigma if sigma_y is None else sigma_y, squared, num_classes, dtype=dtype, device=device)
        return permutation_test_grams(K, L, spec, n, seed, progress=progress, **params)
    m = check_paired(x, y)
    yt = as_tensor(y, dtype=None)
    value = float(spec.fn(x, y, **kw)) if _with_value else float("nan")
    vals = []
    for p in tqdm(_perms(m, n, seed, yt.device), total=n, desc=f"null {spec.name}",
                  disable=None if progress else True):
        vals.append(float(spec.fn(x, yt[p], **kw)))
    return _result(value, np.asarray(vals), spec.larger_is_dependent)


def null_baseline(x: ArrayLike, y: ArrayLike, estimator: Union[str, EstimatorSpec] = "nhsic",
                  n_permutations: int = 1, seed: int = 0, **kwargs: Any) -> float:
    """Mean estimator value over ``n_permutations`` random shufflings of y (an empirical null level;
    for nHSIC and HSIC ``infoplane.assess`` gives the exact one).

    ``kwargs`` as for ``permutation_test`` (kernels, bandwidths, estimator parameters).
    """
    n = _check_n(n_permutations, "n_permutations")
    return permutation_test(x, y, estimator, n, seed, _with_value=False, **kwargs).null_mean
