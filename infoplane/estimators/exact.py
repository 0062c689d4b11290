"""Exact full-sample nHSIC from resolvents, without eigenvectors (Sakamoto & Sato 2024, app. F.1.2).

For one variable with centred Gram ``K~ = H K H`` (m x m) and ``a = eps m``:

    P = K~ + a I = C C^T (Cholesky),      R = K~ P^-1 = I - a P^-1,

and ``nHSIC(Z; T) = Tr(R_Z R_T)``:

* against another resolvent (the RBF input side X): ``sum(R_Z * R_T)``, O(m^2);
* against a thin exact factor ``R_T = U diag(w) U^T`` (labels: k = number of classes):
  ``sum_j w_j u_j^T R_Z u_j``, O(m^2 k).

The chance level (``infoplane.estimators.chance``) needs of R its trace, trace of the square,
squared diagonal and its eigenvalues: the eigenvalues are ``mu / (mu + a)`` with ``mu`` those of
``K~`` (``eigvalsh`` of P, minus a; values only, no vectors) and ``diag(R) = 1 - a diag(P^-1)``.

Cost per representation: the Gram (2 m^2 d flops), ``eigvalsh`` (4/3 m^3, half of it in
matrix-vector products), Cholesky (m^3 / 3) and ``cholesky_inverse`` (2/3 m^3); the input side is
prepared once per store and reused for every layer and checkpoint. The eigenvector route
(``infoplane.estimators.fast``, ``eigh`` plus ``U_Z^T U_X``) costs about three times as much.
Values agree with it to ~1e-10 relative (``tests/test_exact_resolvent.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from infoplane import kernels as _k
from infoplane.estimators.chance import SpectralSummary

__all__ = ["ResolventSide", "prepare_resolvent", "resolvent_from_gram", "resolvent_value", "resolvent_summary"]

DeviceLike = Union[str, torch.device]


@dataclass
class ResolventSide:
    """``R = K~ (K~ + eps m I)^-1`` of one variable (m, m), with what its chance level needs.

    mu: eigenvalues of ``K~`` (m,), descending, clamped at 0. sigma: the RBF bandwidth used.
    """

    R: torch.Tensor
    mu: torch.Tensor
    eps: float
    sigma: Optional[float] = None

    @property
    def m(self) -> int:
        return int(self.R.shape[0])

    # --- what the low-rank machinery (``fast.refine_nhsic``) reads of a side: an exact one
    method = "resolvent"
    residual_trace = 0.0
    cholesky = None
    exact = True
    extendable = False

    @property
    def s2(self) -> torch.Tensor:
        """Eigenvalues of the centred Gram (as ``fast.CenteredFactor.s2``)."""
        return self.mu

    def weights(self, eps: float) -> torch.Tensor:
        """Eigenvalues of R, ``mu / (mu + eps m)`` (only at the eps R was computed with)."""
        if float(eps) != self.eps:
            raise ValueError(f"this resolvent was computed at eps = {self.eps:g}, not {float(eps):g}; "
                             "prepare it again at that eps.")
        return self.mu / (self.mu + self.eps * self.m)

    @property
    def device(self) -> torch.device:
        return self.R.device

    def to(self, device: DeviceLike) -> "ResolventSide":
        return ResolventSide(R=self.R.to(device), mu=self.mu.to(device), eps=self.eps, sigma=self.sigma)

    @property
    def rank(self) -> int:
        """Numerical rank of the centred Gram: eigenvalues above the rounding level of ``eigvalsh``
        (m * machine eps * its largest eigenvalue)."""
        if self.mu.numel() == 0:
            return 0
        tol = self.m * torch.finfo(self.mu.dtype).eps * (float(self.mu[0]) + self.eps * self.m)
        return int((self.mu > tol).sum())


def prepare_resolvent(x: Any = None, *, gram: Any = None, sigma: Union[str, float] = "paper", squared: bool = True,
                      eps: float = 1e-5, device: DeviceLike = "cpu",
                      dtype: torch.dtype = torch.float64) -> ResolventSide:
    """Resolvent of the RBF Gram of samples ``x`` (m, ...) (or of an explicit PSD ``gram`` (m, m))."""
    from infoplane.estimators.fast import _check_device, _check_eps, _check_exact_memory, _rbf_gram_inplace

    eps = _check_eps(eps)
    dev = _check_device(device)
    if (x is None) == (gram is None):
        raise ValueError("prepare_resolvent: pass exactly one of x (samples) or gram (an (m, m) Gram matrix).")
    s: Optional[float] = None
    if gram is not None:
        K = _k.as_tensor(gram, dtype=dtype, device=dev).clone()
        if K.dim() != 2 or K.shape[0] != K.shape[1]:
            raise ValueError(f"prepare_resolvent: gram must be square (m, m), got shape {tuple(K.shape)}.")
        _k.check_finite(K, "gram")
    else:
        X = _k.flatten(x, dtype=dtype, device=dev)
        _k.check_finite(X, "x")
        s = _k.resolve_sigma(X, sigma)
        _check_exact_memory(X.shape[0], dev, dtype, "the exact full-sample nHSIC")
        K = _rbf_gram_inplace(X, s, squared)
        del X
    return resolvent_from_gram(K, eps, sigma=s)


def resolvent_from_gram(K: torch.Tensor, eps: float, *, sigma: Optional[float] = None) -> ResolventSide:
    """:class:`ResolventSide` of an uncentred PSD Gram ``K`` (m, m), which is overwritten (pass a copy)."""
    m = K.shape[0]
    if m < 2:
        raise ValueError("prepare_resolvent: need at least m = 2 samples.")
    a = eps * m
    row = K.mean(dim=1, keepdim=True)
    col = K.mean(dim=0, keepdim=True)
    K.sub_(row).sub_(col).add_(row.mean())             # H K H in place
    K.add_(K.T.clone()).mul_(0.5)                       # exactly symmetric
    K.diagonal().add_(a)                                # P = K~ + a I
    mu = (torch.linalg.eigvalsh(K) - a).clamp_min_(0.0).flip(0)
    C, info = torch.linalg.cholesky_ex(K)
    if int(info) != 0:    # P >= a I is positive definite; a failure means rounding at a tiny eps
        raise ValueError(f"the Cholesky factorisation of K~ + eps m I failed at m = {m}, eps = {eps:g}: the matrix "
                         "is numerically singular. Use a larger eps, or the eigenvector path "
                         "(infoplane.estimators.fast.factorize).")
    del K
    R = torch.cholesky_inverse(C)
    del C
    R.mul_(-a).diagonal().add_(1.0)                     # R = I - a P^-1
    R.add_(R.T.clone()).mul_(0.5)
    return ResolventSide(R=R, mu=mu, eps=eps, sigma=sigma)


def resolvent_value(z: ResolventSide, other: Any) -> float:
    """``Tr(R_Z R_T)`` with ``other`` a :class:`ResolventSide` or a ``fast.CenteredFactor``."""
    if isinstance(other, ResolventSide):
        if other.m != z.m or other.eps != z.eps:
            raise ValueError(f"resolvent_value: sides differ in m or eps ({z.m}/{z.eps} vs {other.m}/{other.eps}).")
        return float((z.R * other.R.to(z.R)).sum())
    U = other.U.to(z.R)
    if U.shape[0] != z.m:
        raise ValueError(f"resolvent_value: z has {z.m} samples but the other side {U.shape[0]}.")
    w = other.weights(z.eps).to(z.R)
    return float(((z.R @ U) * U).sum(dim=0) @ w)


def resolvent_summary(side: ResolventSide) -> SpectralSummary:
    """Spectral summary (``infoplane.estimators.chance``) of a :class:`ResolventSide`."""
    a = side.eps * side.m
    lam = side.mu / (side.mu + a)
    d = torch.diagonal(side.R)
    return SpectralSummary(trace=lam.sum()[None], trace_sq=(lam * lam).sum()[None], diag_sq=(d * d).sum()[None],
                           eigenvalues=lam[None], m=side.m)
