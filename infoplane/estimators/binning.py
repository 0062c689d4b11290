"""Binning (plug-in) mutual information of a layer with its input or its labels.

Shwartz-Ziv & Tishby (2017), "Opening the Black Box of Deep Neural Networks via Information":
every activation of the layer is discretised into ``bins`` intervals, each sample's vector of bin
indices is one symbol of T, and the mutual information is the plug-in value on the empirical
distribution of symbols (nats)::

    I(T; S) = H(T) - H(T | S),   H(T) = -sum_t p(t) log p(t),
    H(T | S) = sum_s p(s) H(T | S = s)          (equivalently H(T) + H(S) - H(T, S))

with S the target: integer labels are their classes; a continuous target (the stored inputs X) is
grouped by exact value (``bin_target=False``, the paper's convention: each distinct input is one
symbol) or discretised with the same scheme as T (``bin_target=True``). For a deterministic
network and pairwise distinct inputs, H(T | X) = 0 and I(X; T) = H(T): the estimate is then the
entropy of the binned layer and does not depend on which input is paired with which row of T. It
is computed as H(T) - H(T | X) all the same, so repeated inputs are handled correctly.

Schemes (per layer, i.e. per call: the edges are computed from all activations of ``z``):

* ``"equal-width"`` (the paper): ``bins`` intervals of equal width spanning [min, max] of the
  layer's activations (or ``bin_range``; the paper used [-1, 1] for tanh units).
* ``"equal-mass"`` (adaptive): edges at the quantiles k / bins of the pooled activations, ties
  merged, so every bin holds about the same number of values and an atom (the zeros of a ReLU
  layer) is one bin of its own; in the spirit of the adaptive binning of Chelombiev, Houghton &
  O'Donnell (2019), "Adaptive Estimators Show Information Compression in Deep Neural Networks".

Shapes: ``z (m, ...)`` flattened to ``(m, d)``; ``target (m,)`` integer labels or ``(m, ...)``.
Numpy arrays and torch tensors (any device) are accepted; the computation is in numpy. The plug-in
value is >= 0, at most min(H(T), H(S)) <= log m, symmetric when both sides are binned, and
invariant to permuting the samples jointly. It saturates at log m as soon as every binned pattern
is distinct (high-dimensional layers, small m): read it against the shuffled baseline.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from infoplane.kernels import is_label_vector

__all__ = ["binning_information", "discretize", "pattern_ids", "plugin_entropy", "SCHEMES"]

SCHEMES = ("equal-width", "equal-mass")


def as_float_matrix(x: Any, name: str) -> np.ndarray:
    """``(m, ...)`` numpy array or torch tensor -> C-contiguous float64 ``(m, d)`` numpy array, finite."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got an array of dtype {arr.dtype}; encode categories as integers.")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected samples of shape (m, ...) with m >= 1, got shape {arr.shape}.")
    arr = np.ascontiguousarray(arr.reshape(arr.shape[0], -1), dtype=np.float64)
    if not np.isfinite(arr).all():
        n_bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN/inf); remove or impute those samples.")
    return arr


def label_ids(y: Any) -> np.ndarray:
    """Integer labels ``(m,)`` -> class ids 0..c-1 (numpy int64)."""
    if hasattr(y, "detach"):
        y = y.detach().to("cpu").numpy()
    return np.unique(np.asarray(y), return_inverse=True)[1].reshape(-1).astype(np.int64)


def check_pair(z: Any, target: Any) -> int:
    mz = int(z.shape[0]) if hasattr(z, "shape") and len(z.shape) else -1
    mt = int(target.shape[0]) if hasattr(target, "shape") and len(target.shape) else -1
    if mz != mt:
        raise ValueError(f"z has {mz} samples but target has {mt}; pass paired samples (same first dimension).")
    return mz


def discretize(z: Any, bins: int = 30, scheme: str = "equal-width",
               bin_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Bin index of every activation, ``(m, ...) -> (m, d)`` integers in ``0..bins-1`` (module doc)."""
    x = as_float_matrix(z, "discretize: z")
    if isinstance(bins, bool) or int(bins) != bins or int(bins) < 2:
        raise ValueError(f"bins must be an integer >= 2 (the paper used 30), got {bins!r}.")
    bins = int(bins)
    scheme = str(scheme).lower()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}.")
    dtype = np.uint8 if bins <= 256 else (np.uint16 if bins <= 65536 else np.int64)
    if scheme == "equal-width":
        lo, hi = (float(x.min()), float(x.max())) if bin_range is None else map(float, bin_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
            raise ValueError(f"bin_range must be (low, high) with low <= high, got {bin_range!r}.")
        if hi == lo:
            return np.zeros(x.shape, dtype=dtype)
        codes = np.floor((x - lo) * (bins / (hi - lo)))
        return np.clip(codes, 0, bins - 1).astype(dtype)
    if bin_range is not None:
        raise ValueError("bin_range applies to scheme='equal-width' only (equal-mass edges are quantiles).")
    edges = np.unique(np.quantile(x, np.arange(1, bins) / bins))
    return np.searchsorted(edges, x, side="left").astype(dtype)


def pattern_ids(codes: np.ndarray) -> np.ndarray:
    """One integer id per distinct row of ``codes (m, d)`` (exact equality of the rows)."""
    c = np.ascontiguousarray(codes)
    if c.ndim == 1:
        c = c[:, None]
    if c.dtype.kind == "f":
        c = c + 0.0  # -0.0 and 0.0 are the same value
    rows = c.view(np.dtype((np.void, c.dtype.itemsize * c.shape[1]))).reshape(-1)
    return np.unique(rows, return_inverse=True)[1].reshape(-1).astype(np.int64)


def plugin_entropy(ids: np.ndarray) -> float:
    """Plug-in entropy (nats) of the empirical distribution of integer symbols ``ids (m,)``."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64))
    p = counts[counts > 0] / float(len(ids))
    return float(-(p * np.log(p)).sum())


def binning_information(z: Any, target: Any, bins: int = 30, scheme: str = "equal-width", *,
                        bin_target: bool = False,
                        bin_range: Optional[Tuple[float, float]] = None) -> Dict[str, float]:
    """Plug-in I(T; target) of the binned layer ``z (m, ...)`` (nats), Shwartz-Ziv & Tishby 2017.

    target: integer labels ``(m,)`` (classes) or a continuous ``(m, ...)`` array (grouped by exact
    value, or binned like z with ``bin_target=True``). bins: intervals per activation (30 as in the
    paper). scheme: ``"equal-width"`` (paper) or ``"equal-mass"`` (adaptive). bin_range: fixed
    (low, high) of the equal-width bins, of z and of a binned target (default: each one's min and max;
    values outside fall into the first or last bin).

    Returns ``{"value": I, "h_z": H(T), "h_z_given_target": H(T | S), "n_patterns": distinct
    binned patterns of z}``.
    """
    check_pair(z, target)
    t_ids = pattern_ids(discretize(z, bins, scheme, bin_range))
    if is_label_vector(target):
        s_ids = label_ids(target)
    else:
        t = as_float_matrix(target, "binning_information: target")
        s_ids = pattern_ids(discretize(t, bins, scheme, bin_range) if bin_target else t)
    h_t, h_s = plugin_entropy(t_ids), plugin_entropy(s_ids)
    joint = t_ids * (int(s_ids.max()) + 1) + s_ids
    h_ts = plugin_entropy(np.unique(joint, return_inverse=True)[1])
    value = max(h_t + h_s - h_ts, 0.0)  # >= 0 exactly; the max removes rounding below 0
    return {"value": value, "h_z": h_t, "h_z_given_target": h_t - value, "n_patterns": float(t_ids.max() + 1)}
