"""The paper's minibatch nHSIC protocol, vectorised (Sakamoto & Sato 2024 appendix F.1.2).

The paper estimates nHSIC "by averaging values based on minibatches due to computational
limitations": the evaluation set is cut into consecutive minibatches of ``b`` samples (the authors'
later code: test set, b = 100) and, per batch,

    nHSIC_b = Tr[ K~ (K~ + eps b I)^-1  L~ (L~ + eps b I)^-1 ],   K~ = H K H  (b x b).

Here all B = floor(N / b) batches go through batched ``torch.linalg`` calls on (B, b, b) tensors
(one batched Cholesky per side), not a Python loop. With ``P = K~ + eps b I = C C^T`` the
resolvent is ``A = K~ P^-1 = I - eps b P^-1`` (``cholesky_inverse``) and the value is
``sum(A_z * A_o)``; a batch whose Cholesky fails (not numerically PD) falls back to ``eigh``.
Labels (linear kernel on one-hot codes) use the push-through identity
``L~ (L~ + a I)^-1 = Yc (Yc^T Yc + a I)^-1 Yc^T`` (Yc = H onehot, (b, c)), so that side is a
(B, c, c) solve, never an eigendecomposition of a rank-(c-1) matrix (float32-safe).

The last incomplete batch (N mod b samples) is dropped, as a DataLoader with ``drop_last=True``
would: a smaller batch changes eps*b and the bias of the estimate, so it is not comparable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from infoplane import kernels as _k
from infoplane.estimators.chance import SpectralSummary, summarize

__all__ = ["nhsic_minibatches", "nhsic_minibatches_many", "MinibatchSide", "prepare_minibatch_side",
           "minibatch_values", "batched_rbf_grams", "batched_center", "batched_sigma_median"]

DeviceLike = Union[str, torch.device]


def batched_center(K: torch.Tensor) -> torch.Tensor:
    """``H K H`` for a stack of Grams (B, b, b) (in place of K when K does not require grad)."""
    if K.requires_grad:
        return K - K.mean(dim=-1, keepdim=True) - K.mean(dim=-2, keepdim=True) + K.mean(dim=(-1, -2), keepdim=True)
    row, col, both = K.mean(dim=-1, keepdim=True), K.mean(dim=-2, keepdim=True), K.mean(dim=(-1, -2), keepdim=True)
    return K.sub_(row).sub_(col).add_(both)


def _batched_sq_dists(x: torch.Tensor) -> torch.Tensor:
    # one fused GEMM ``(|x_i|^2 + |x_j|^2) - 2 x_i.x_j`` (the factor -2 is exact), then in place
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    if x.requires_grad:
        sq = (x * x).sum(dim=-1)
        d2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], x, x.transpose(1, 2), alpha=-2.0)
        return d2.clamp_min(0.0).masked_fill(eye, 0.0)
    sq = torch.linalg.vector_norm(x, dim=-1).square_()        # no (B, b, d) temporary
    d2 = (sq[:, :, None] + sq[:, None, :]).baddbmm_(x, x.transpose(1, 2), alpha=-2.0)
    return d2.clamp_min_(0.0).masked_fill_(eye, 0.0)


def _check_finite(x: torch.Tensor, name: str) -> None:
    """``kernels.check_finite`` semantics at the cost of one sum: a sum of finite values is finite
    unless it overflows, so the full (allocating) check runs only when the sum is not finite."""
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x.detach().sum()).all()):
        _k.check_finite(x, name)


def batched_sigma_median(x: torch.Tensor) -> torch.Tensor:
    """Per-batch median of pairwise distances ``||v_i - v_j||`` (i < j): (B, b, d) -> (B,).

    Same rule as ``infoplane.kernels.sigma_median`` applied to each batch (b <= its subset size).
    """
    d2 = _batched_sq_dists(x)
    b = x.shape[1]
    iu = torch.triu_indices(b, b, offset=1, device=x.device)
    med = torch.sqrt(torch.median(d2[:, iu[0], iu[1]], dim=1).values)
    if bool((med <= 0).any()):
        raise ValueError("sigma='median': a minibatch has median pairwise distance 0 (duplicated samples); "
                         "pass sigma='paper' or an explicit float.")
    return med


def batched_rbf_grams(x: torch.Tensor, sigma: Union[str, float], squared: bool = True) -> torch.Tensor:
    """RBF Grams of each batch, (B, b, d) -> (B, b, b); sigma 'paper' (5 sqrt(d)), 'median'
    (per batch) or a float."""
    d2 = _batched_sq_dists(x)
    if isinstance(sigma, str) and sigma.lower() == "median":
        s = batched_sigma_median(x)[:, None, None]
    else:
        s = torch.tensor(_k.resolve_sigma(x[0], sigma), dtype=x.dtype, device=x.device)
    if d2.requires_grad:                            # autograd: no in-place ops on saved tensors
        dist = d2 if squared else d2.sqrt()
        return torch.exp(-dist / (2.0 * s * s))
    dist = d2 if squared else d2.sqrt_()
    return dist.div_(-2.0 * s * s).exp_()          # = exp(-dist / (2 s^2)), in place


def _batches(x: torch.Tensor, b: int) -> torch.Tensor:
    B = x.shape[0] // b
    return x[: B * b].reshape(B, b, *x.shape[1:])


def _chol(Kc: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Cholesky of ``K~ + shift I``; returns (C, ok) with ok (B,) bool."""
    if Kc.requires_grad:
        eye = torch.eye(Kc.shape[-1], dtype=Kc.dtype, device=Kc.device)
        P = 0.5 * (Kc + Kc.transpose(1, 2)) + shift * eye
    else:
        P = (Kc + Kc.transpose(1, 2)).mul_(0.5)
        P.diagonal(dim1=-2, dim2=-1).add_(shift)
    C, info = torch.linalg.cholesky_ex(P)
    return C, info == 0


def _resolvent(Kc: torch.Tensor, shift: float, C: Optional[torch.Tensor] = None,
               ok: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``A = K~ (K~ + shift I)^-1 = I - shift (K~ + shift I)^-1`` for each batch, (B, b, b)."""
    if C is None:
        C, ok = _chol(Kc, shift)
    if C.requires_grad:
        eye = torch.eye(Kc.shape[-1], dtype=Kc.dtype, device=Kc.device)
        A = eye - shift * torch.cholesky_inverse(C)
    else:     # I - shift P^-1 in place; cholesky_inverse returns an exactly symmetric matrix
        A = torch.cholesky_inverse(C).mul_(-shift)
        A.diagonal(dim1=-2, dim2=-1).add_(1.0)
    if not bool(ok.all()):                       # eigh fallback for the batches that failed
        bad = (~ok).nonzero().flatten()
        s2, U = torch.linalg.eigh(0.5 * (Kc[bad] + Kc[bad].transpose(1, 2)))
        s2 = s2.clamp_min(0.0)
        Ab = (U * (s2 / (s2 + shift))[:, None, :]) @ U.transpose(1, 2)
        A[bad] = 0.5 * (Ab + Ab.transpose(1, 2))
    return 0.5 * (A + A.transpose(1, 2)) if A.requires_grad else A


@dataclass
class MinibatchSide:
    """One variable cut into B minibatches of b, ready for the vectorised protocol.

    kind "rbf": ``A`` (B, b, b) resolvents ``K~ (K~ + eps b I)^-1``; kind "label"/"linear":
    ``Yc`` (B, b, c) centred codes and ``Ginv`` (B, c, c) = ``(Yc^T Yc + eps b I)^-1``.
    ``summary``: trace, trace of the square, squared diagonal and eigenvalues of each batch's
    resolvent (``infoplane.estimators.chance``), for the exact null moments and the upper bound.
    Compute it once (e.g. the input X of a store) and pass it as ``other`` to every call.
    """

    kind: str
    n: int
    batch_size: int
    eps: float
    A: Optional[torch.Tensor] = None
    Yc: Optional[torch.Tensor] = None
    Ginv: Optional[torch.Tensor] = None
    summary: Optional[SpectralSummary] = None


def prepare_minibatch_side(other: Any, *, kernel: str = "rbf", batch_size: int = 100, eps: float = 1e-5,
                           sigma: Union[str, float] = "paper", squared: bool = True,
                           device: DeviceLike = "cpu", dtype: torch.dtype = torch.float64,
                           num_classes: Optional[int] = None) -> MinibatchSide:
    """Precompute the per-batch resolvents of one variable (see :class:`MinibatchSide`)."""
    from infoplane.estimators.fast import _check_device, _check_eps  # shared validation

    eps = _check_eps(eps)
    dev = _check_device(device)
    b = _check_batch(batch_size)
    kern = str(kernel).lower()
    shift = eps * b
    if kern == "rbf":
        X = _k.flatten(other, dtype=dtype, device=dev)
        _check_finite(X, "samples")
        _check_n(X.shape[0], b)
        A = _resolvent(batched_center(batched_rbf_grams(_batches(X, b), sigma, squared)), shift)
        return MinibatchSide("rbf", X.shape[0], b, eps, A=A, summary=summarize(A, symmetric=not A.requires_grad))
    if kern in ("label", "linear", "onehot", "one-hot"):
        if kern == "linear":
            Y = _k.flatten(other, dtype=dtype, device=dev)
            _check_finite(Y, "samples")
        else:
            yt = _k.as_tensor(other, dtype=None, device=dev)
            if yt.dim() == 2:
                Y = yt.to(dtype)
                _check_finite(Y, "label codes")
            else:
                Y = _k.one_hot(yt, num_classes, dtype=dtype, device=dev)
        _check_n(Y.shape[0], b)
        Yb = _batches(Y, b)
        Yc = Yb - Yb.mean(dim=1, keepdim=True)                       # (B, b, c)
        eye = torch.eye(Yc.shape[-1], dtype=dtype, device=dev)
        G = Yc.transpose(1, 2) @ Yc
        Ginv = torch.linalg.inv(G + shift * eye)   # (c, c), eigenvalues >= shift
        return MinibatchSide("label", Y.shape[0], b, eps, Yc=Yc, Ginv=Ginv, summary=_label_summary(Yc, G, Ginv, shift))
    raise ValueError(f"kernel must be 'rbf', 'label' or 'linear', got {kernel!r}.")


def _label_summary(Yc: torch.Tensor, G: torch.Tensor, Ginv: torch.Tensor, shift: float) -> SpectralSummary:
    """Summary of ``R = Yc Ginv Yc^T`` from (c, c) quantities: its eigenvalues are ``mu / (mu + shift)``
    with ``mu`` those of ``Yc^T Yc``."""
    mu = torch.linalg.eigvalsh(0.5 * (G + G.transpose(1, 2))).clamp_min(0.0).flip(-1)
    w = mu / (mu + shift)
    diag = ((Yc @ Ginv) * Yc).sum(-1)
    return SpectralSummary(trace=w.sum(-1), trace_sq=(w * w).sum(-1), diag_sq=(diag * diag).sum(-1),
                           eigenvalues=w, m=int(Yc.shape[1]))


def minibatch_values(a: MinibatchSide, b: MinibatchSide) -> torch.Tensor:
    """Per-batch nHSIC ``Tr(R_a R_b)`` of two prepared sides (at least one of kind "rbf"): (B,)."""
    if a.batch_size != b.batch_size or a.eps != b.eps or a.n != b.n:
        raise ValueError("minibatch_values: both sides must share n, batch_size and eps "
                         f"(got {a.n}/{a.batch_size}/{a.eps} and {b.n}/{b.batch_size}/{b.eps}).")
    if a.kind != "rbf":
        a, b = b, a
    if a.kind != "rbf":
        # both label/linear: Tr(Ya Ga Ya^T Yb Gb Yb^T) = sum((Ga Ya^T Yb) * (Yb^T Ya Gb)^T)
        C = a.Yc.transpose(1, 2) @ b.Yc.to(a.Yc)
        return ((a.Ginv @ C) * (C @ b.Ginv.to(a.Yc))).sum(dim=(1, 2))
    if b.kind == "rbf":
        return (a.A * b.A.to(a.A)).sum(dim=(1, 2))
    Yc = b.Yc.to(a.A)
    S = Yc.transpose(1, 2) @ (a.A @ Yc)                                   # Yc^T A Yc (B, c, c)
    return (b.Ginv.to(a.A) * S.transpose(1, 2)).sum(dim=(1, 2))


def _check_batch(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}.")
    return int(batch_size)


def _check_n(n: int, b: int) -> None:
    if n < b:
        raise ValueError(f"nhsic_minibatches: {n} samples is fewer than one batch of {b}; "
                         "lower batch_size or pass more samples.")


def nhsic_minibatches_many(z: Any, others: Sequence[MinibatchSide], *, sigma: Union[str, float] = "paper",
                           squared: bool = True, device: DeviceLike = "cpu",
                           dtype: torch.dtype = torch.float64) -> list[np.ndarray]:
    """Per-minibatch nHSIC of one representation ``z`` against several prepared sides at once.

    The Z side (Gram, centring, Cholesky) is computed once and shared, e.g. for the X and Y
    targets of one layer. Returns one (B,) array per side.
    """
    from infoplane.estimators.fast import _check_device

    dev = _check_device(device)
    if not others:
        raise ValueError("nhsic_minibatches_many: pass at least one prepared side.")
    b, eps = others[0].batch_size, others[0].eps
    for o in others:
        if o.batch_size != b or o.eps != eps:
            raise ValueError("nhsic_minibatches_many: all sides must share batch_size and eps.")
    Z = _k.flatten(z, dtype=dtype, device=dev)
    _check_finite(Z, "z")
    N = Z.shape[0]
    _check_n(N, b)
    for o in others:
        if o.n != N:
            raise ValueError(f"nhsic_minibatches: z has {N} samples but other has {o.n}.")
    shift = eps * b
    Kc = batched_center(batched_rbf_grams(_batches(Z, b), sigma, squared))
    C, ok = _chol(Kc, shift)
    A = None
    out = []
    for o in others:
        if o.kind == "rbf":
            if A is None:
                A = _resolvent(Kc, shift, C, ok)
            vals = (A * o.A.to(device=dev, dtype=dtype)).sum(dim=(1, 2))
        else:
            Yc = o.Yc.to(device=dev, dtype=dtype)
            if A is None and bool(ok.all()):
                # A_z Yc = Yc - shift P^-1 Yc: a solve with c right-hand sides, no inverse
                AY = Yc - shift * torch.cholesky_solve(Yc, C)
            else:
                if A is None:
                    A = _resolvent(Kc, shift, C, ok)
                AY = A @ Yc
            S = Yc.transpose(1, 2) @ AY                               # Yc^T A_z Yc (B, c, c)
            vals = (o.Ginv.to(device=dev, dtype=dtype) * S.transpose(1, 2)).sum(dim=(1, 2))
        out.append(vals.detach().to("cpu", torch.float64).numpy())
    return out


def nhsic_minibatches(z: Any, other: Any, *, kernel_y: str = "rbf", batch_size: int = 100,
                      eps: float = 1e-5, sigma: Union[str, float] = "paper",
                      sigma_y: Union[str, float, None] = None, squared: bool = True,
                      device: DeviceLike = "cpu", dtype: torch.dtype = torch.float64,
                      num_classes: Optional[int] = None) -> np.ndarray:
    """Per-minibatch nHSIC(Z; other) over consecutive batches, all at once: (B,) numpy array.

    z: (N, ...) representation, RBF kernel (``sigma``: 'paper' = 5 sqrt(d) of z, 'median' per
    batch, or a float; ``squared=False`` = published code's non-squared distance).
    other: X (N, ...) with ``kernel_y="rbf"`` (``sigma_y``, default ``sigma``), labels (N,)
    int with ``kernel_y="label"``, features with ``"linear"``, or a :class:`MinibatchSide`
    prepared once by :func:`prepare_minibatch_side` (then kernel_y/eps/batch_size come from it).
    B = N // batch_size batches; the last incomplete batch is dropped (see module docstring).
    The paper's number is the mean of the returned array.
    """
    if isinstance(other, MinibatchSide):
        side = other
    else:
        side = prepare_minibatch_side(other, kernel=kernel_y, batch_size=batch_size, eps=eps,
                                      sigma=sigma if sigma_y is None else sigma_y, squared=squared,
                                      device=device, dtype=dtype, num_classes=num_classes)
    return nhsic_minibatches_many(z, [side], sigma=sigma, squared=squared, device=device, dtype=dtype)[0]
