"""Matrix-based Rényi alpha-entropy mutual information.

Giraldo, Rao & Príncipe (2014), "Measures of Entropy from Data Using Infinitely Divisible Kernels";
applied to networks by Yu & Príncipe (2019), "Understanding Autoencoders with Information Theoretic
Concepts", Yu, Wickstrøm, Jenssen & Príncipe (2021), "Understanding Convolutional Neural Networks
with Information Theory: An Initial Exploration", and Wickstrøm, Løkse, Kampffmeyer, Yu, Príncipe &
Jenssen (2019), "Information Plane Analysis of Deep Neural Networks via Matrix-Based Rényi's
Entropy and Tensor Kernels". From a Gram matrix K (m x m) of one variable::

    A = K / tr(K)                                   (unit trace)
    S_alpha(A) = 1/(1 - alpha) log( sum_i lambda_i(A)^alpha )
    S_alpha(A, B) = S_alpha( A o B / tr(A o B) )      (o: Hadamard product; the joint)
    I_alpha(A; B) = S_alpha(A) + S_alpha(B) - S_alpha(A, B)

in nats (the papers use log2: divide by log 2 for bits). alpha -> 1 is the von Neumann entropy;
alpha = 1.01 (default) is close to it, as in Yu & Príncipe (2019) and Wickstrøm et al. (2019). Gram matrices come from
``infoplane.kernels``: RBF on the flattened z (and on a continuous target) with the bandwidth rule
``'paper'`` (5 sqrt(d)), ``'median'`` (median pairwise distance, the default here: at 5 sqrt(d) the
normalised Gram of a layer is close to rank one and every entropy close to 0; when more than half of
the pairs coincide, as in a collapsed layer, the root-mean-square pairwise distance) or a positive float;
integer labels use the linear kernel on one-hot codes (K_ij = 1[y_i = y_j]). Eigenvalues by
``torch.linalg.eigvalsh`` in float64, clipped at 0; O(m^3).

Shapes: ``z (m, ...)``; ``target (m,)`` integer labels or ``(m, ...)``. Numpy arrays and torch
tensors (any device). Properties: symmetric in its two arguments (same bandwidth rule on both),
invariant to permuting the samples jointly, 0 <= S_alpha(A) <= log m, and I_alpha(A; B) <=
min(S_alpha(A), S_alpha(B)) (Giraldo et al. 2014).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from infoplane.kernels import (SigmaLike, check_finite, flatten, is_label_vector, label_gram, rbf_gram,
                               sigma_median)

__all__ = ["renyi_entropy", "renyi_information", "ALPHA"]

#: Default order (close to Shannon's entropy).
ALPHA = 1.01


def _check_alpha(alpha: Any) -> float:
    a = float(alpha)
    if isinstance(alpha, bool) or not (math.isfinite(a) and a > 0 and a != 1.0):
        raise ValueError(f"alpha must be a positive number other than 1 (1.01 approximates Shannon's entropy), "
                         f"got {alpha!r}.")
    return a


def renyi_entropy(A: Any, alpha: float = ALPHA) -> float:
    """S_alpha of a Gram matrix ``A (m, m)`` after normalising it to unit trace (nats)."""
    a = _check_alpha(alpha)
    At = A if isinstance(A, torch.Tensor) else torch.as_tensor(A)
    At = At.detach().to(torch.float64)
    if At.dim() != 2 or At.shape[0] != At.shape[1]:
        raise ValueError(f"renyi_entropy: expected a square (m, m) Gram matrix, got shape {tuple(At.shape)}.")
    tr = float(torch.diagonal(At).sum())
    if not tr > 0:
        raise ValueError("renyi_entropy: the Gram matrix has a non-positive trace; pass a positive semi-definite "
                         "kernel matrix (e.g. infoplane.kernels.rbf_gram).")
    lam = torch.linalg.eigvalsh((At + At.T) / (2.0 * tr)).clamp_min(0.0)
    lam = lam[lam > 0]
    return float(torch.log((lam ** a).sum()) / (1.0 - a))


def _gram(v: Any, sigma: SigmaLike, device: Optional[str], what: str) -> torch.Tensor:
    if is_label_vector(v):
        return label_gram(v, dtype=torch.float64, device=device)
    x = flatten(v, dtype=torch.float64, device=device)
    check_finite(x, f"renyi: {what}")
    if isinstance(sigma, str) and sigma.lower() == "median":
        try:
            sigma = sigma_median(x)
        except ValueError:  # more than half of the pairs coincide (a dead or collapsed layer)
            rms = float(torch.sqrt(2.0 * x.var(dim=0).sum())) if x.shape[0] > 1 else 0.0
            sigma = rms if rms > 0 else 1.0  # constant: the Gram is all ones for any bandwidth
    try:
        return rbf_gram(x, sigma=sigma, dtype=torch.float64, device=device)
    except ValueError as exc:
        raise ValueError(f"renyi: {what}: {exc} (set sigma_z / sigma_target to 'paper', 'median' or a "
                         "positive number)") from None


def renyi_information(z: Any, target: Any, alpha: float = ALPHA, *, sigma_z: SigmaLike = "median",
                      sigma_target: Optional[SigmaLike] = None, device: Optional[str] = None) -> Dict[str, float]:
    """Matrix-based Rényi I_alpha(Z; target) (Giraldo et al. 2014), nats.

    sigma_z: RBF bandwidth rule of z ('paper' | 'median' | float); sigma_target: that of a
    continuous target (default: the same rule). Integer labels use the one-hot linear kernel.
    Returns ``{"value": I, "h_z": S(A_z), "h_target": S(A_t), "h_joint": S(A_z, A_t)}``.
    """
    a = _check_alpha(alpha)
    mz = int(z.shape[0]) if hasattr(z, "shape") else len(z)
    mt = int(target.shape[0]) if hasattr(target, "shape") else len(target)
    if mz != mt:
        raise ValueError(f"z has {mz} samples but target has {mt}; pass paired samples (same first dimension).")
    Kz = _gram(z, sigma_z, device, "z")
    Kt = _gram(target, sigma_z if sigma_target is None else sigma_target, str(Kz.device), "target").to(Kz.device)
    h_z, h_t = renyi_entropy(Kz, a), renyi_entropy(Kt, a)
    h_j = renyi_entropy(Kz * Kt, a)
    return {"value": h_z + h_t - h_j, "h_z": h_z, "h_target": h_t, "h_joint": h_j}
