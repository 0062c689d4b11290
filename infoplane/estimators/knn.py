"""k-nearest-neighbour (KSG) mutual information of a layer with its input or its labels.

Continuous target: algorithm 1 of Kraskov, Stögbauer & Grassberger (2004), "Estimating Mutual
Information", with the max-norm in every space::

    I(Z; S) = psi(k) + psi(m) - < psi(n_z(i) + 1) + psi(n_s(i) + 1) >_i

where eps_i is the max-norm distance from sample i to its k-th neighbour in the joint space (z, s)
and n_z(i), n_s(i) count the other samples strictly closer than eps_i in the z and the s space.

Integer labels: the mixed discrete-continuous estimator of Ross (2014), "Mutual Information
between Discrete and Continuous Data Sets" (the one behind scikit-learn's
``mutual_info_classif``)::

    I(Z; Y) = psi(m) + < psi(k_i) > - < psi(m_y(i)) > - < psi(c_i) >

with k_i = min(k, m_y(i) - 1) neighbours searched among the m_y(i) samples of i's class, d_i the
distance to the k_i-th, and c_i the number of samples of any class within d_i (i included);
samples alone in their class are left out, as in scikit-learn.

Both use scikit-learn (``NearestNeighbors`` for the k-th neighbour, ``KDTree.query_radius`` for the
counts, metric 'chebyshev' = max-norm; in one dimension it equals scikit-learn's Euclidean
distance). As in scikit-learn, every feature is first divided by its sd (``standardize``; constant
features are left as they are) and jittered by ``1e-10 * max(1, mean |x|)`` Gaussian noise
(``seed``) to break ties (the exact zeros of ReLU layers). The estimate is not clipped at 0 (it
can be slightly negative for independent samples). Known behaviour (Kraskov et al. 2004; Czyż et
al. 2023): small bias for low-dimensional, weakly dependent variables; a strong downward bias
when the dependence is large or spread over many dimensions. Values in nats.

Shapes: ``z (m, ...)``; ``target (m,)`` integer labels or ``(m, ...)``. Numpy arrays and torch tensors.
Cost: O(m^2 d) in high dimension (the trees degrade to brute force).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
from scipy.special import digamma

from infoplane.estimators.binning import as_float_matrix, check_pair, label_ids
from infoplane.kernels import is_label_vector

__all__ = ["ksg_information", "K_NEIGHBOURS"]

#: Default number of neighbours (Kraskov et al. 2004 recommend k = 2-4).
K_NEIGHBOURS = 3


def _prepare(x: np.ndarray, standardize: bool, rng: np.random.Generator) -> np.ndarray:
    x = x.copy()
    if standardize:
        sd = x.std(axis=0)
        sd[sd == 0] = 1.0
        x /= sd
    scale = np.maximum(1.0, np.mean(np.abs(x), axis=0))
    x += 1e-10 * scale * rng.standard_normal(x.shape)
    return x


def _count_within(x: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Number of samples (the sample itself included) within max-norm ``radius[i]`` of sample i."""
    from sklearn.neighbors import KDTree

    return np.asarray(KDTree(x, metric="chebyshev").query_radius(x, radius, count_only=True), dtype=np.float64)


def _kth_distance(x: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric="chebyshev").fit(x)
    return nn.kneighbors()[0][:, -1]


def ksg_information(z: Any, target: Any, k: int = K_NEIGHBOURS, *, standardize: bool = True,
                    seed: int = 0) -> Dict[str, float]:
    """KSG estimate of I(Z; target) in nats (algorithm 1, max-norm; Ross 2014 for integer labels).

    k: neighbours (3). standardize: divide each feature by its sd first (as scikit-learn does).
    seed: seed of the tie-breaking jitter. Returns ``{"value": I}``.
    """
    m = check_pair(z, target)
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"k must be a positive integer (Kraskov et al. 2004 suggest 2-4), got {k!r}.")
    k = int(k)
    rng = np.random.default_rng(int(seed))
    zz = _prepare(as_float_matrix(z, "knn: z"), standardize, rng)
    if is_label_vector(target):
        return {"value": _ross(zz, label_ids(target), k)}
    if k >= m:
        raise ValueError(f"knn needs more samples than neighbours: got m = {m} and k = {k}; lower k.")
    tt = _prepare(as_float_matrix(target, "knn: target"), standardize, rng)
    radius = np.nextafter(_kth_distance(np.hstack([zz, tt]), k), 0)  # "strictly closer than eps_i"
    n_z = _count_within(zz, radius) - 1.0
    n_t = _count_within(tt, radius) - 1.0
    value = digamma(k) + digamma(m) - np.mean(digamma(n_z + 1.0)) - np.mean(digamma(n_t + 1.0))
    return {"value": float(value)}


def _ross(z: np.ndarray, y: np.ndarray, k: int) -> float:
    m = len(y)
    counts = np.bincount(y)[y].astype(np.float64)
    keep = counts > 1
    if keep.sum() < 2:
        raise ValueError("knn with labels: every class has a single sample; the estimator needs classes with at "
                         "least 2 samples (use a larger batch, e.g. --batch-size 500).")
    radius = np.zeros(m)
    k_all = np.zeros(m)
    for c in np.unique(y[keep]):
        idx = np.flatnonzero(y == c)
        kc = min(k, len(idx) - 1)
        radius[idx] = np.nextafter(_kth_distance(z[idx], kc), 0)
        k_all[idx] = kc
    z, radius, k_all, counts = z[keep], radius[keep], k_all[keep], counts[keep]
    within = _count_within(z, radius)
    value = digamma(len(z)) + np.mean(digamma(k_all)) - np.mean(digamma(counts)) - np.mean(digamma(within))
    return float(value)
