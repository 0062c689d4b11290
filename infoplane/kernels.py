"""Gram matrices, bandwidth rules and centring (docs/estimators.md, Sakamoto & Sato 2024 appendix F.1.2).

Notation: m samples; inputs of shape ``(m, ...)`` are flattened to ``(m, d)``.
RBF kernel ``k(v, w) = exp(-||v - w||^2 / (2 sigma^2))`` (the standard, *squared* distance);
``squared=False`` reproduces the convention of the paper's published code (E2E-info,
``src/hsic/hsic.py``), which put the non-squared distance ``||v - w||`` into the exponent.
Bandwidth: the paper's rule ``sigma = 5 sqrt(d)`` (appendix F), the median heuristic, or an
explicit positive float. Linear kernel ``l(v, w) = v^T w``; labels use the linear kernel on
one-hot codes. Centring ``K~ = H K H`` with ``H = I - 11^T / m``.

Every public function accepts numpy arrays and torch tensors (any device); torch autograd is kept.
Results are torch tensors in ``dtype`` (float64 by default).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "check_finite",
    "flatten",
    "sigma_paper",
    "sigma_median",
    "resolve_sigma",
    "pairwise_sq_dists",
    "rbf_gram",
    "linear_gram",
    "one_hot",
    "label_gram",
    "center",
    "gram",
    "is_label_vector",
]

ArrayLike = Union[torch.Tensor, np.ndarray, Any]
SigmaLike = Union[float, int, str]

#: Maximum number of samples used by the median heuristic (a fixed, evenly spaced subset above it).
MEDIAN_MAX_SAMPLES = 1000


def as_tensor(x: ArrayLike, dtype: Optional[torch.dtype] = torch.float64,
              device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Convert ``x`` (tensor, ndarray, nested list) to a torch tensor of ``dtype`` on ``device``.

    Tensors keep their autograd graph (``Tensor.to`` is differentiable); ``dtype=None`` keeps the
    input dtype; ``device=None`` keeps the input device (CPU for numpy input).
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype.kind in "OUSVMm":
            raise ValueError(f"as_tensor: got a numpy array of dtype {x.dtype} (not numbers); pass a numeric "
                             "array (encode text or categories as integers first).")
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            arr = np.asarray(x)
            if arr.dtype.kind in "OUSVMm":
                raise TypeError(f"its values are of dtype {arr.dtype}, not numbers")
            t = torch.as_tensor(arr)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"as_tensor: cannot convert {type(x).__name__} to a tensor: {exc}") from exc
    if t.is_complex() and (dtype is None or not dtype.is_complex):
        raise ValueError(f"as_tensor: got complex values (dtype {t.dtype}); the estimators work on real "
                         "data. Pass x.real, x.abs() or stack real and imaginary parts as features.")
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype if dtype is not None else t.dtype,
                 device=device if device is not None else t.device)
    return t


def check_finite(x: torch.Tensor, name: str = "input") -> torch.Tensor:
    """Raise ValueError if ``x`` has NaN/inf entries, saying how many and in which samples (rows)."""
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x.detach())
        n_bad = int(bad.sum())
        if n_bad:
            rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist() if x.dim() else []
            n_nan = int(torch.isnan(x.detach()).sum())
            shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
            raise ValueError(
                f"{name} contains {n_bad} non-finite value(s) ({n_nan} NaN, {n_bad - n_nan} inf) "
                f"in {len(rows)} sample(s) (rows {shown}) of shape {tuple(x.shape)}; "
                "remove or impute those samples first.")
    return x


def flatten(x: ArrayLike, dtype: Optional[torch.dtype] = torch.float64,
            device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """``(m, ...) -> (m, d)`` with ``d`` the product of the trailing dims; 1-D input gives ``(m, 1)``."""
    t = as_tensor(x, dtype=dtype, device=device)
    if t.dim() == 0:
        raise ValueError("flatten: got a scalar; pass samples of shape (m, ...) with m >= 1.")
    if t.shape[0] == 0:
        raise ValueError("flatten: got zero samples; pass at least one sample.")
    return t.reshape(t.shape[0], -1)


def sigma_paper(x: ArrayLike) -> float:
    """Paper bandwidth rule ``sigma = 5 sqrt(d)`` (Sakamoto & Sato 2024, appendix F), d = flattened dimension."""
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) == 0:
        raise ValueError("sigma_paper: got a scalar; pass samples of shape (m, ...).")
    d = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if d == 0:
        raise ValueError(f"sigma_paper: samples of shape {shape} have zero features.")
    return 5.0 * float(np.sqrt(d))


def sigma_median(x: ArrayLike) -> float:
    """Median heuristic: median of the pairwise Euclidean distances ``||v_i - v_j||``, i < j.

    Above ``MEDIAN_MAX_SAMPLES`` samples an evenly spaced subset is used (deterministic).
    Raises ValueError when the median is 0 (e.g. constant features).
    """
    t = flatten(x).detach()
    m = t.shape[0]
    if m < 2:
        raise ValueError("sigma_median: need at least 2 samples for pairwise distances.")
    if m > MEDIAN_MAX_SAMPLES:
        idx = torch.linspace(0, m - 1, MEDIAN_MAX_SAMPLES, device=t.device).round().long()
        t = t[idx]
        m = t.shape[0]
    check_finite(t, "sigma_median input")
    d2 = pairwise_sq_dists(t)
    iu = torch.triu_indices(m, m, offset=1, device=t.device)
    med = float(torch.sqrt(torch.median(d2[iu[0], iu[1]])))
    if not med > 0.0:
        raise ValueError(
            "sigma_median: the median pairwise distance is 0 (constant or mostly duplicated "
            "features); pass an explicit sigma or sigma='paper'.")
    return med


def resolve_sigma(x: ArrayLike, sigma: SigmaLike) -> float:
    """Bandwidth from a rule name ('paper' | 'median') or a positive number."""
    if isinstance(sigma, str):
        rule = sigma.lower()
        if rule == "paper":
            return sigma_paper(x)
        if rule == "median":
            return sigma_median(x)
        raise ValueError(f"unknown bandwidth rule {sigma!r}; use 'paper', 'median' or a positive float.")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        raise ValueError(f"sigma must be 'paper', 'median' or a positive float, got {sigma!r}.")
    s = float(sigma)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be a finite positive number, got {sigma!r}.")
    return s


def pairwise_sq_dists(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Squared Euclidean distances ``(m, d), (n, d) -> (m, n)``, clamped at 0; exact 0 diagonal if y is None."""
    if y is None:
        sq = (x * x).sum(dim=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
        d2 = d2.clamp_min(0.0)
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        return d2.masked_fill(eye, 0.0)
    d2 = (x * x).sum(dim=1)[:, None] + (y * y).sum(dim=1)[None, :] - 2.0 * (x @ y.T)
    return d2.clamp_min(0.0)


def rbf_gram(x: ArrayLike, sigma: SigmaLike = "paper", squared: bool = True, *,
             other: Optional[ArrayLike] = None, dtype: torch.dtype = torch.float64,
             device: Optional[Union[str, torch.device]] = None, check: bool = True) -> torch.Tensor:
    """RBF Gram ``K_ij = exp(-D_ij / (2 sigma^2))``, ``(m, ...) -> (m, m)``.

    ``D = ||v - w||^2`` when ``squared`` (default, standard RBF); ``D = ||v - w||`` when
    ``squared=False`` (the published E2E-info code's convention). ``sigma`` is resolved on ``x``.
    ``other`` (n, ...) gives the cross Gram ``(m, n)`` (used by low-rank approximations).
    """
    xt = flatten(x, dtype=dtype, device=device)
    if check:
        check_finite(xt, "rbf_gram input")
    s = resolve_sigma(xt, sigma)
    yt = None
    if other is not None:
        yt = flatten(other, dtype=dtype, device=xt.device)
        if yt.shape[1] != xt.shape[1]:
            raise ValueError(f"rbf_gram: feature dims differ ({xt.shape[1]} vs {yt.shape[1]}).")
        if check:
            check_finite(yt, "rbf_gram other")
    d2 = pairwise_sq_dists(xt, yt)
    if squared:
        dist = d2
    else:
        # sqrt with a finite gradient at 0 (diagonal / duplicates): sqrt only where positive.
        pos = d2 > 0
        dist = torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))),
                           torch.zeros_like(d2))
    return torch.exp(-dist / (2.0 * s * s))


def linear_gram(x: ArrayLike, *, dtype: torch.dtype = torch.float64,
                device: Optional[Union[str, torch.device]] = None, check: bool = True) -> torch.Tensor:
    """Linear Gram ``L = X X^T`` on flattened samples, ``(m, ...) -> (m, m)``."""
    xt = flatten(x, dtype=dtype, device=device)
    if check:
        check_finite(xt, "linear_gram input")
    return xt @ xt.T


def is_label_vector(y: ArrayLike) -> bool:
    """True for a 1-D array of integers (or integer-valued floats is *not* accepted: use ints)."""
    if isinstance(y, torch.Tensor):
        return y.dim() == 1 and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool
    arr = np.asarray(y)
    return arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer)


def one_hot(y: ArrayLike, num_classes: Optional[int] = None, *, dtype: torch.dtype = torch.float64,
            device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """One-hot codes ``(m,) int -> (m, c)`` float.

    Without ``num_classes`` the labels are re-indexed to ``0..c-1`` in sorted order (``c`` = number of
    distinct labels), so label *values* never act as sizes (labels 1e9 or -3 are fine); the label
    Gram ``Y Y^T = 1[y_i == y_j]`` does not depend on the coding. With ``num_classes`` the labels
    must lie in ``0..num_classes-1`` and column k is class k.
    """
    yt = as_tensor(y, dtype=None, device=device)
    if yt.dim() != 1:
        raise ValueError(f"one_hot: labels must be 1-D of shape (m,), got shape {tuple(yt.shape)}.")
    if yt.is_floating_point():
        if not bool(torch.all(torch.isfinite(yt))) or not bool(torch.all(yt == yt.round())):
            raise ValueError("one_hot: labels must be integers (got non-integer or non-finite floats).")
    yt = yt.long()
    if yt.numel() == 0:
        raise ValueError("one_hot: got zero labels.")
    if num_classes is None:
        classes, yt = torch.unique(yt, sorted=True, return_inverse=True)
        return torch.nn.functional.one_hot(yt, len(classes)).to(dtype)
    c = int(num_classes)
    if int(yt.min()) < 0 or int(yt.max()) >= c:
        raise ValueError(f"one_hot: labels must lie in 0..{c - 1} for num_classes={c}, got min {int(yt.min())} "
                         f"and max {int(yt.max())}; pass num_classes=None to re-index arbitrary label values.")
    return torch.nn.functional.one_hot(yt, c).to(dtype)


def label_gram(y: ArrayLike, num_classes: Optional[int] = None, *, dtype: torch.dtype = torch.float64,
               device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Linear kernel on one-hot labels: ``L_ij = 1[y_i == y_j]``, ``(m,) -> (m, m)``."""
    oh = one_hot(y, num_classes, dtype=dtype, device=device)
    return oh @ oh.T


def center(K: ArrayLike) -> torch.Tensor:
    """Double centring ``K~ = H K H`` (H = I - 11^T/m) without forming H; ``(m, m) -> (m, m)``."""
    Kt = as_tensor(K, dtype=None)
    if Kt.dim() != 2 or Kt.shape[0] != Kt.shape[1]:
        raise ValueError(f"center: expected a square (m, m) Gram matrix, got shape {tuple(Kt.shape)}.")
    if not Kt.is_floating_point():
        Kt = Kt.to(torch.float64)
    row = Kt.mean(dim=1, keepdim=True)
    col = Kt.mean(dim=0, keepdim=True)
    return Kt - row - col + Kt.mean()


def gram(x: ArrayLike, kernel: str = "rbf", sigma: SigmaLike = "paper", squared: bool = True,
         num_classes: Optional[int] = None, *, dtype: torch.dtype = torch.float64,
         device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Gram matrix by kernel name: 'rbf' | 'linear' | 'label' (one-hot linear) |
    'auto' ('label' for 1-D integer input, else 'rbf')."""
    k = kernel.lower()
    if k == "auto":
        k = "label" if is_label_vector(x) else "rbf"
    if k == "rbf":
        return rbf_gram(x, sigma=sigma, squared=squared, dtype=dtype, device=device)
    if k == "linear":
        return linear_gram(x, dtype=dtype, device=device)
    if k in ("label", "onehot", "one-hot"):
        return label_gram(x, num_classes=num_classes, dtype=dtype, device=device)
    raise ValueError(f"unknown kernel {kernel!r}; use 'rbf', 'linear', 'label' or 'auto'.")
