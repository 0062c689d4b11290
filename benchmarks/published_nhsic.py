"""The published minibatch nHSIC computation, re-implemented from its description.

Two forms of *the same formula*, used as honest baselines by ``benchmarks/job_speed.py`` and
``benchmarks/speed.py``:

(1) ``as published`` (:func:`nhsic_as_published`, :func:`minibatch_as_published`): the E2E-info
    code's ``NormalizedHSIC`` (Sakamoto & Sato 2024, app. F.1.2):

    * RBF Gram from the **non-squared** Euclidean distance, by broadcasting:
      ``d_ij = (x[:, None] - x[None]).norm(dim=-1)``, ``K = exp(-d / (2 sigma^2))``,
      ``sigma = 5 sqrt(dim)`` (``dim`` = flattened feature count of that variable);
    * labels: one-hot codes with the linear kernel ``L = Y Y^T``;
    * **one-sided** centring ``Kc = K H`` (``H = I - 11^T / m``), for both sides;
    * ``nHSIC = Tr(Kc (Kc + eps m I)^-1  Lc (Lc + eps m I)^-1)`` written, as in the code, as
      ``sum(R_K * R_L^T)`` with ``R = Kc @ torch.inverse(Kc + eps m I)`` (explicit inverse);
    * float32; a Python loop over the minibatches (consecutive batches of m = 100, the last
      incomplete one dropped) and, inside it, one call per target: nHSIC(X;Z) and nHSIC(Y;Z) are
      two independent calls, each recomputing both Grams (so the Z side is built twice per batch)
      and both inverses.

(2) ``written well`` (:func:`nhsic_written_well`, :func:`minibatch_written_well`): the identical
    formula and precision (float32, non-squared distance, ``K H`` centring, the same two explicit
    ``torch.inverse`` per call, one call per batch per target), but the distance by ``torch.cdist``
    (a matrix product, no (m, m, dim) broadcast tensor) and ``K H`` as ``K - rowmean(K)`` (no m x m
    product with H).

Both are pure functions of their inputs; neither uses ``infoplane``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import numpy as np
import torch

__all__ = ["gram_as_published", "linear_gram_as_published", "nhsic_as_published", "minibatch_as_published",
           "gram_written_well", "linear_gram_written_well", "nhsic_written_well", "minibatch_written_well",
           "one_hot"]

EPS = 1e-5


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def one_hot(y: Any, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Labels (N,) int -> one-hot codes (N, num_classes) in ``dtype``."""
    return torch.nn.functional.one_hot(torch.as_tensor(np.asarray(y), dtype=torch.int64), num_classes).to(dtype)


# --------------------------------------------------------------------------- (1) as published
def gram_as_published(x: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """(1) ``K H`` with ``K = exp(-||x_i - x_j|| / (2 sigma^2 dim))`` (non-squared distance, by broadcasting)."""
    x = _flat(x)
    m = x.shape[0]
    dist = torch.norm(x[:, None, :] - x[None, :, :], dim=2)
    gram = torch.exp(-dist / (2 * sigma * sigma * x.shape[1]))
    centering = torch.eye(m, dtype=x.dtype, device=x.device) - torch.ones(m, m, dtype=x.dtype, device=x.device) / m
    return torch.matmul(gram, centering)


def linear_gram_as_published(y: torch.Tensor) -> torch.Tensor:
    """(1) ``L H`` with ``L = Y Y^T`` (linear kernel, e.g. on one-hot codes)."""
    y = _flat(y)
    m = y.shape[0]
    centering = torch.eye(m, dtype=y.dtype, device=y.device) - torch.ones(m, m, dtype=y.dtype, device=y.device) / m
    return torch.matmul(torch.matmul(y, y.T), centering)


def _nhsic_from_centred(k_x: torch.Tensor, k_z: torch.Tensor, eps: float) -> torch.Tensor:
    """``sum(R_x * R_z^T)`` = ``Tr(R_x R_z)``, ``R = Kc @ inverse(Kc + eps m I)`` (explicit inverses)."""
    m = k_x.shape[0]
    I = torch.eye(m, dtype=k_x.dtype, device=k_x.device)
    k_xi = torch.inverse(k_x + eps * m * I)
    k_zi = torch.inverse(k_z + eps * m * I)
    r_x = torch.matmul(k_x, k_xi)
    r_z = torch.matmul(k_z, k_zi)
    return torch.sum(r_x * r_z.T)


def _nhsic(rbf: Callable[[torch.Tensor], torch.Tensor], linear: Callable[[torch.Tensor], torch.Tensor],
           a: torch.Tensor, b: torch.Tensor, kernel_a: str, kernel_b: str, eps: float) -> float:
    """One nHSIC(a; b) call from the given Gram builders (each side 'rbf' or 'linear')."""
    ka = rbf(a) if kernel_a == "rbf" else linear(a)
    kb = rbf(b) if kernel_b == "rbf" else linear(b)
    return float(_nhsic_from_centred(ka, kb, eps))


def nhsic_as_published(a: torch.Tensor, b: torch.Tensor, *, kernel_a: str = "rbf", kernel_b: str = "rbf",
                       eps: float = EPS) -> float:
    """(1) One nHSIC(a; b) call as published: both Grams built here, two explicit inverses."""
    return _nhsic(gram_as_published, linear_gram_as_published, a, b, kernel_a, kernel_b, eps)


def minibatch_as_published(x: Any, z: Any, y: Any, *, num_classes: int, batch_size: int = 100,
                           eps: float = EPS, dtype: torch.dtype = torch.float32,
                           device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """(1) The published protocol: per-batch (nHSIC(X;Z), nHSIC(Y;Z)) arrays, float32 loop.

    x (N, ...), z (N, ...): samples; y (N,) int labels (one-hot, linear kernel). Consecutive
    batches of ``batch_size``; the last incomplete batch is dropped. Two calls per batch.
    ``dtype``/``device``: float32 on the CPU is the published setting (float64 only for checks).
    """
    return _per_batch(nhsic_as_published, x, z, y, num_classes, batch_size, eps, dtype, device)


def _per_batch(call: Callable[..., float], x: Any, z: Any, y: Any, num_classes: int, batch_size: int, eps: float,
               dtype: torch.dtype, device: str) -> Tuple[np.ndarray, np.ndarray]:
    """The published loop: for each consecutive batch, one ``call`` for X and one for Y (Z's Gram
    rebuilt by each call, as published); the last incomplete batch is dropped."""
    X = _flat(torch.as_tensor(np.asarray(x), dtype=dtype, device=device))
    Z = _flat(torch.as_tensor(np.asarray(z), dtype=dtype, device=device))
    Y = one_hot(y, num_classes, dtype).to(device)
    vx, vy = [], []
    for i in range(X.shape[0] // batch_size):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        vx.append(call(X[sl], Z[sl], eps=eps))
        vy.append(call(Y[sl], Z[sl], kernel_a="linear", eps=eps))
    return np.asarray(vx), np.asarray(vy)


# --------------------------------------------------------------------------- (2) written well
def gram_written_well(x: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """(2) Same ``K H`` as :func:`gram_as_published`: ``torch.cdist`` distance, ``K - rowmean(K)``."""
    x = _flat(x)
    dist = torch.cdist(x, x)
    gram = torch.exp(dist * (-1.0 / (2 * sigma * sigma * x.shape[1])))
    return gram - gram.mean(dim=1, keepdim=True)


def linear_gram_written_well(y: torch.Tensor) -> torch.Tensor:
    """(2) Same ``L H`` as :func:`linear_gram_as_published`: ``Y (Y - colmean(Y))^T``."""
    y = _flat(y)
    return y @ (y - y.mean(dim=0, keepdim=True)).T


def nhsic_written_well(a: torch.Tensor, b: torch.Tensor, *, kernel_a: str = "rbf", kernel_b: str = "rbf",
                       eps: float = EPS) -> float:
    """(2) One nHSIC(a; b) call: same formula, precision and explicit inverses as (1)."""
    return _nhsic(gram_written_well, linear_gram_written_well, a, b, kernel_a, kernel_b, eps)


def minibatch_written_well(x: Any, z: Any, y: Any, *, num_classes: int, batch_size: int = 100,
                           eps: float = EPS, dtype: torch.dtype = torch.float32,
                           device: str = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """(2) The published protocol with :func:`nhsic_written_well`: still one call per batch per target."""
    return _per_batch(nhsic_written_well, x, z, y, num_classes, batch_size, eps, dtype, device)


def sigma_paper(dim: int) -> float:
    """The bandwidth both forms use: ``5 sqrt(dim)``."""
    return 5.0 * math.sqrt(dim)
