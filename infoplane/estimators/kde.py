"""Pairwise-distance bounds on the information of a noisy layer (the "KDE" estimator).

Kolchinsky & Tracey (2017), "Estimating Mixture Entropy with Pairwise Distances", as used by Saxe
et al. (2018), "On the Information Bottleneck Theory of Deep Learning". The layer is read as
T = Z + N(0, var I): given the m stored activations z_i (d features each), T is a mixture of m
Gaussians with equal weights, whose entropy is bounded from above with the KL divergence and from
below with the Bhattacharyya distance between components::

    H(T) <= d/2 log(2 pi e var) - (1/m) sum_i log( (1/m) sum_j exp(-||z_i - z_j||^2 / (2 var)) )
    H(T) >= d/2 log(2 pi e var) - (1/m) sum_i log( (1/m) sum_j exp(-||z_i - z_j||^2 / (8 var)) )

Since H(T | X) = d/2 log(2 pi e var) (only the noise is left when the input is known),

    I(T; X) = H(T) - H(T | X)        in [lower, upper], both in [0, log m]
    I(T; Y) = H(T) - sum_y p(y) H(T | Y = y)

where H(T | Y = y) is the same bound on the samples of class y (Saxe et al. 2018 take the upper
bound for both terms for their "upper" estimate, the lower for both for the "lower" one; for I(T;
Y) the two are estimates, not bounds). Values are in nats (divide by log 2 for the bits of Saxe et
al.). For I(T; X) only z enters: any continuous target is taken to be the input that determines z,
and the value does not depend on the pairing (a shuffled baseline equals it).

Shapes: ``z (m, ...)`` flattened to ``(m, d)``; ``target (m,)`` integer labels or ``(m, ...)``.
Numpy arrays and torch tensors; float64; rows are processed in blocks so the full m x m distance
matrix is never held (O(m^2 d) time).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from infoplane.kernels import as_tensor, check_finite, flatten, is_label_vector, pairwise_sq_dists

__all__ = ["kde_information", "kde_information_bounds", "NOISE_VARIANCE"]

#: Noise variance of Saxe et al. (2018).
NOISE_VARIANCE = 0.1

_BLOCK = 1024


def _neg_mean_log_mean_kernel(z: torch.Tensor, scale: float) -> float:
    """-(1/m) sum_i log((1/m) sum_j exp(-||z_i - z_j||^2 / scale)), in row blocks."""
    m = z.shape[0]
    total = 0.0
    for start in range(0, m, _BLOCK):
        d2 = pairwise_sq_dists(z[start:start + _BLOCK], z)
        idx = torch.arange(start, min(start + _BLOCK, m), device=z.device)
        d2[idx - start, idx] = 0.0  # exact zero self-distance
        total += float(torch.logsumexp(-d2 / scale, dim=1).sum())
    return -(total / m - math.log(m))


def kde_information_bounds(z: Any, noise_variance: float = NOISE_VARIANCE) -> Tuple[float, float]:
    """(upper, lower) bounds on I(T; X) = H(T) - H(T|X) for T = z + N(0, noise_variance I) (nats)."""
    var = _check_variance(noise_variance)
    zt = flatten(z, dtype=torch.float64)
    check_finite(zt, "kde: z")
    upper = _neg_mean_log_mean_kernel(zt, 2.0 * var)
    lower = _neg_mean_log_mean_kernel(zt, 8.0 * var)
    return max(upper, 0.0) + 0.0, max(lower, 0.0) + 0.0


def kde_information(z: Any, target: Any, noise_variance: float = NOISE_VARIANCE, *,
                    device: Optional[str] = None) -> Dict[str, float]:
    """Kolchinsky & Tracey (2017) bounds on I(T; target) for T = z + N(0, noise_variance I), nats.

    target: integer labels ``(m,)`` -> I(T; Y) = H(T) - sum_y p(y) H(T | Y = y); anything else
    -> I(T; X) = H(T) - d/2 log(2 pi e var) (only z enters). Returns ``{"value": upper estimate,
    "lower_bound": lower estimate}`` (Saxe et al. 2018 used noise_variance = 0.1).
    """
    var = _check_variance(noise_variance)
    zt = flatten(z, dtype=torch.float64, device=device)
    check_finite(zt, "kde: z")
    tshape = tuple(target.shape) if hasattr(target, "shape") else (len(target),)
    if not tshape or tshape[0] != zt.shape[0]:
        raise ValueError(f"z has {zt.shape[0]} samples but target has shape {tshape}; pass paired samples.")
    h_upper = _neg_mean_log_mean_kernel(zt, 2.0 * var)   # H(T) - d/2 log(2 pi e var), upper bound
    h_lower = _neg_mean_log_mean_kernel(zt, 8.0 * var)
    if not is_label_vector(target):
        return {"value": max(h_upper, 0.0) + 0.0, "lower_bound": max(h_lower, 0.0) + 0.0}
    y = as_tensor(target, dtype=None, device=zt.device)
    m = zt.shape[0]
    cond_upper = cond_lower = 0.0
    for c in torch.unique(y):
        members = zt[y == c]
        p = members.shape[0] / m
        cond_upper += p * _neg_mean_log_mean_kernel(members, 2.0 * var)
        cond_lower += p * _neg_mean_log_mean_kernel(members, 8.0 * var)
    return {"value": h_upper - cond_upper, "lower_bound": h_lower - cond_lower}


def _check_variance(noise_variance: Any) -> float:
    if isinstance(noise_variance, bool):
        raise ValueError("noise_variance must be a positive number (Saxe et al. 2018 used 0.1), got a bool.")
    v = float(noise_variance)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"noise_variance must be a finite positive number (Saxe et al. 2018 used 0.1), "
                         f"got {noise_variance!r}.")
    return v
