"""Low-rank factors of kernel Gram matrices by (block) pivoted Cholesky, without forming K.

A pivoted Cholesky factor ``F`` (m, r) of a PSD Gram ``K`` satisfies ``K ~= F F^T`` with a PSD
residual ``E = K - F F^T`` (so ``F F^T <= K`` in Loewner order) whose trace is known exactly at
every step (the sum of the residual diagonal). For the RBF kernel the columns ``K[:, S]`` are
evaluated from the data in ``O(m d |S|)``; a rank-r factor costs ``O(m r (r + d))`` time and
``O(m r)`` memory.

Stopping rule: ``tr(E) <= residual`` (absolute) or ``tr(E) <= tolerance * tr(K)`` (relative);
``infoplane.estimators.fast`` turns an accuracy on the nHSIC *value* into an absolute residual.

Resuming: the factor keeps its residual diagonal and column oracle, so :func:`extend_cholesky`
continues it to a smaller residual without recomputing the first r columns. Columns are appended
in pivot order and never changed, so every prefix of a factor (and the factor it was extended
from) is itself a pivoted Cholesky factor, with its residual trace in ``trace_history``.

Pivot choice (deterministic, blocked for BLAS-3 speed): each round takes the ``block`` points with
the largest residual diagonal as candidates (stable sort: ties go to the lowest index), evaluates
their kernel columns in one matrix product, and runs a greedy pivoted Cholesky on the candidates'
residual block, accepting a candidate only while its residual is still at least ``accept`` times
what it was before the round (so near duplicates in one block are not taken twice).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

__all__ = ["CholeskyFactor", "pivoted_cholesky", "extend_cholesky", "rbf_columns", "gram_columns"]

Columns = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CholeskyFactor:
    """Result of :func:`pivoted_cholesky` / :func:`extend_cholesky`.

    factor: (m, r) with ``K ~= factor @ factor.T``; pivots: (r,) row indices in pivot order;
    residual_trace: ``tr(E) = tr(K - F F^T)`` (exact up to rounding; 0 at full rank); trace: ``tr(K)``;
    trace_history: (r + 1,) residual trace after 0..r columns (so any prefix's residual is known).
    residual_diag: (m,) ``diag(E)``; cols: ``idx (k,) -> K[:, idx] (m, k)``: the state needed to
    resume (None on factors that cannot be extended). stalled: no further pivot was accepted although
    ``tr(E) > 0`` (the residual is at rounding level).
    """

    factor: torch.Tensor
    pivots: torch.Tensor
    residual_trace: float
    trace: float
    trace_history: torch.Tensor
    residual_diag: Optional[torch.Tensor] = field(default=None, repr=False)
    cols: Optional[Columns] = field(default=None, repr=False)
    block: int = 64
    accept: float = 0.1
    stalled: bool = False

    @property
    def m(self) -> int:
        return int(self.factor.shape[0])

    @property
    def rank(self) -> int:
        return int(self.factor.shape[1])

    @property
    def rel_residual(self) -> float:
        """``tr(E) / tr(K)``."""
        return self.residual_trace / self.trace if self.trace > 0 else 0.0

    @property
    def complete(self) -> bool:
        """True when ``F F^T = K`` (full rank or zero residual): the factor is exact."""
        return self.rank >= self.m or self.residual_trace <= 0.0

    @property
    def extendable(self) -> bool:
        """True when :func:`extend_cholesky` can still add columns."""
        return not self.complete and not self.stalled and self.cols is not None \
            and self.residual_diag is not None


def rbf_columns(x: torch.Tensor, sigma: float, squared: bool = True) -> Columns:
    """Return ``cols(idx) -> K[:, idx]`` (m, k) for the RBF kernel on flattened ``x`` (m, d).

    ``K_ij = exp(-D_ij / (2 sigma^2))`` with ``D = ||x_i - x_j||^2`` (``squared``) or ``||x_i - x_j||``.
    """
    sq = (x * x).sum(dim=1)
    two_s2 = 2.0 * float(sigma) ** 2

    def cols(idx: torch.Tensor) -> torch.Tensor:
        xs = x[idx]
        d2 = torch.addmm(sq[:, None] + sq[idx][None, :], x, xs.T, alpha=-2.0).clamp_min_(0.0)
        # exact zeros on the pivots' own entries (rounding could leave tiny positives)
        d2[idx, torch.arange(idx.numel(), device=x.device)] = 0.0
        dist = d2 if squared else d2.sqrt_()
        return torch.exp_(dist.div_(-two_s2))

    return cols


def gram_columns(K: torch.Tensor) -> Columns:
    """``cols(idx) -> K[:, idx]`` for an explicit (m, m) Gram matrix."""
    return lambda idx: K[:, idx]


def _block_pivots(C: torch.Tensor, before: torch.Tensor, accept: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy pivoted Cholesky of a small PSD block ``C`` (k, k).

    Takes the largest remaining diagonal entry while it is > 0 and >= ``accept * before[p]``.
    Returns the chosen positions (in order) and the lower-triangular ``R`` with
    ``R R^T = C[chosen][:, chosen]``.
    """
    k = C.shape[0]
    Cc = C.detach().cpu()
    bef = before.detach().cpu()
    d = torch.diagonal(Cc).clone()
    Lb = torch.zeros((k, k), dtype=Cc.dtype)
    chosen: list[int] = []
    avail = torch.ones(k, dtype=torch.bool)
    for j in range(k):
        p = int(torch.argmax(d.masked_fill(~avail, float("-inf"))))
        dp = float(d[p])
        if not dp > 0.0 or dp < accept * float(bef[p]):
            break
        col = Cc[:, p] - Lb[:, :j] @ Lb[p, :j]
        col = col / dp ** 0.5
        col[~avail] = 0.0          # rows of earlier pivots are exactly 0 (lower triangular)
        Lb[:, j] = col
        d = d - col * col
        avail[p] = False
        chosen.append(p)
    idx = torch.tensor(chosen, dtype=torch.long)
    R = Lb[idx][:, : len(chosen)].to(device=C.device)
    return idx.to(C.device), R


def _target(trace: float, tolerance: Optional[float], residual: Optional[float], who: str) -> float:
    """Absolute residual-trace target from ``tolerance`` (relative) and/or ``residual`` (absolute)."""
    if tolerance is None and residual is None:
        raise ValueError(f"{who}: pass tolerance (relative residual trace) or residual (absolute).")
    target = float("inf")
    if tolerance is not None:
        if not (tolerance > 0):
            raise ValueError(f"{who}: tolerance must be > 0, got {tolerance!r}.")
        target = float(tolerance) * trace
    if residual is not None:
        if not (residual >= 0):
            raise ValueError(f"{who}: residual must be >= 0, got {residual!r}.")
        target = min(target, float(residual))
    return target


def pivoted_cholesky(cols: Columns, diag: torch.Tensor, *, tolerance: Optional[float] = None,
                     residual: Optional[float] = None, max_rank: Optional[int] = None, block: int = 64,
                     accept: float = 0.1, progress: bool = False) -> CholeskyFactor:
    """Blocked greedy pivoted Cholesky of a PSD matrix given by columns and its diagonal.

    cols: ``idx (k,) -> K[:, idx] (m, k)``; diag: (m,) diagonal of K (dtype/device of the result).
    Stops as soon as ``tr(E) <= tolerance * tr(K)`` and/or ``tr(E) <= residual`` (the stricter of
    the two; the factor is cut at the first column that reaches it), when ``max_rank`` columns are
    taken (default ``m``), or at full rank. Cost ``O(m r (r + d))``. The result can be continued
    with :func:`extend_cholesky`. progress: tqdm bar counting columns (silent when not a terminal).
    """
    m = int(diag.shape[0])
    res = diag.clone().clamp_min_(0.0)
    total = float(res.sum())
    start = CholeskyFactor(factor=diag.new_zeros((m, 0)), pivots=torch.zeros(0, dtype=torch.long, device=diag.device),
                           residual_trace=total, trace=total, trace_history=torch.tensor([total], dtype=torch.float64),
                           residual_diag=res, cols=cols, block=int(block), accept=float(accept))
    return _run(start, _target(total, tolerance, residual, "pivoted_cholesky"), max_rank, progress,
                "pivoted_cholesky")


def extend_cholesky(ch: CholeskyFactor, *, residual: Optional[float] = None, tolerance: Optional[float] = None,
                    max_rank: Optional[int] = None, progress: bool = False) -> CholeskyFactor:
    """Continue a pivoted Cholesky factor until ``tr(E) <= residual`` (and/or ``tolerance * tr(K)``).

    Returns a new :class:`CholeskyFactor` whose first ``ch.rank`` columns are ``ch.factor``; ``ch``
    is not modified. ``max_rank`` caps the total rank (default ``m``). Returns ``ch`` itself when it
    already meets the target, is complete, stalled, or at ``max_rank``.
    """
    if ch.cols is None or ch.residual_diag is None:
        raise ValueError("extend_cholesky: ch has no resume state (cols/residual_diag); "
                         "factor again with pivoted_cholesky.")
    return _run(ch, _target(ch.trace, tolerance, residual, "extend_cholesky"), max_rank, progress, "extend_cholesky")


def _run(ch: CholeskyFactor, target: float, max_rank: Optional[int], progress: bool, who: str) -> CholeskyFactor:
    from tqdm.auto import tqdm

    m = ch.m
    max_rank = m if max_rank is None else int(max_rank)
    if max_rank < 1:
        raise ValueError(f"{who}: max_rank must be >= 1, got {max_rank}.")
    max_rank = min(max_rank, m)
    r = ch.rank
    if ch.residual_trace <= target or r >= max_rank or not ch.extendable:
        return ch
    cols, block, accept = ch.cols, ch.block, ch.accept
    dtype, device = ch.residual_diag.dtype, ch.residual_diag.device
    res = ch.residual_diag.clone()
    cap = min(max_rank, max(r + block, 16))
    L = torch.zeros((m, cap), dtype=dtype, device=device)
    L[:, :r] = ch.factor
    taken = torch.zeros(m, dtype=torch.bool, device=device)
    pivots: list[torch.Tensor] = [ch.pivots] if r else []
    taken[ch.pivots] = True
    history = [float(h) for h in ch.trace_history]
    stalled = False
    bar = tqdm(total=max_rank, initial=r, desc="pivoted Cholesky", unit="col", disable=None if progress else True)
    while r < max_rank and history[-1] > target:
        k = min(block, max_rank - r, m - r)
        cand = torch.sort(res.masked_fill(taken, -1.0), descending=True, stable=True).indices[:k]
        before = res[cand].clone()
        if float(before.max()) <= 0.0:
            history[-1] = 0.0 if float(res.sum()) <= 0.0 else history[-1]
            stalled = history[-1] > 0.0
            break
        G = cols(cand).to(dtype)                          # (m, k) kernel columns
        if r:
            G = torch.addmm(G, L[:, :r], L[cand, :r].T, alpha=-1.0)   # residual columns E[:, cand]
        # greedy pivoted Cholesky of the (k, k) residual block C = E[cand, cand]: O(k^3)
        C = G[cand]
        C = 0.5 * (C + C.T)
        chosen, R = _block_pivots(C, before, accept)
        n_new = len(chosen)
        if n_new == 0:
            stalled = True
            break
        # new columns W = E[:, chosen] R^-T (R R^T = C[chosen, chosen]): one triangular solve
        W = torch.linalg.solve_triangular(R, G[:, chosen].T, upper=False).T
        # residual trace after each new column; cut at the first that reaches the target
        drops = torch.cumsum((W * W).sum(dim=0), 0).tolist()
        hist_new = [history[-1] - v for v in drops]
        keep = n_new
        for j, h in enumerate(hist_new):
            if h <= target:
                keep = j + 1
                break
        if r + keep > L.shape[1]:
            grow = min(max_rank, max(2 * L.shape[1], r + keep))
            L2 = torch.zeros((m, grow), dtype=dtype, device=device)
            L2[:, :r] = L[:, :r]
            L = L2
        L[:, r:r + keep] = W[:, :keep]
        sel = cand[chosen[:keep]]
        pivots.append(sel)
        taken[sel] = True
        res = (res - (W[:, :keep] ** 2).sum(dim=1)).clamp_min_(0.0)
        res[taken] = 0.0
        r += keep
        bar.update(keep)
        history.extend(hist_new[:keep])
        # keep the running trace honest (rounding): recompute from the residual diagonal
        history[-1] = max(float(res.sum()), 0.0) if r < m else 0.0
    bar.close()
    piv = torch.cat(pivots) if pivots else torch.zeros(0, dtype=torch.long, device=device)
    factor = L[:, :r] if L.shape[1] == r else L[:, :r].clone()
    return replace(ch, factor=factor, pivots=piv, residual_trace=max(history[-1], 0.0),
                   trace_history=torch.tensor(history, dtype=torch.float64), residual_diag=res, stalled=stalled)
