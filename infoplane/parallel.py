"""Where the independent (checkpoint, layer) jobs of ``infoplane estimate`` run.

Every job reads one stored layer and returns its rows (one per target); jobs share nothing but
the store and the once-per-store target sides, so they can run anywhere and the table does not
depend on where they ran:

* serially (``jobs=1``; the default for estimators that are not kernel ones and for the full
  sample);
* on local worker threads (``jobs=N, backend="threads"``, joblib's threading backend; the default,
  one per core, for kernel estimators under the minibatch protocol): one
  process, the store and the target sides read once; kernel estimators spend their time in
  LAPACK/BLAS calls that release the GIL, so N threads keep N cores busy;
* on local worker processes (``backend="processes"``, joblib's loky pool): each worker opens
  the store and prepares the target sides once, then takes jobs; for estimators whose work is
  Python (the soft nearest neighbour loss, trained estimators);
* on a Dask distributed cluster (``scheduler="tcp://host:8786"``): one task per job, each worker
  opening the store from the same path (a shared file system) and keeping it open.

``shard="i/n"`` keeps every n-th job starting at the i-th (0-based), for array jobs whose CSVs
are concatenated afterwards (``infoplane report`` and ``infoplane plot`` take several CSVs).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from infoplane.estimate import EstimateConfig, _Context

__all__ = ["parse_shard", "shard", "cores", "n_jobs", "uses_processes", "run_jobs", "worker_rows"]

log = logging.getLogger(__name__)

Job = Tuple[str, str, int]
Rows = List[Dict[str, Any]]


def parse_shard(spec: str) -> Tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; anything else raises ValueError naming ``--shard``."""
    try:
        i_text, n_text = str(spec).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard must be 'i/n' with integers 0 <= i < n (e.g. 0/4), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec!r}: need 0 <= i < n (the parts are numbered 0 .. n-1)")
    return i, n


def shard(jobs: Sequence[Job], spec: Optional[str]) -> List[Job]:
    """The i-th of n interleaved parts of ``jobs`` (all of them for ``spec=None``)."""
    if spec is None:
        return list(jobs)
    i, n = parse_shard(spec)
    return list(jobs)[i::n]


def _kind(cfg: "EstimateConfig") -> str:
    from infoplane.estimators import get_estimator

    return get_estimator(cfg.estimator).kind


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def n_jobs(cfg: "EstimateConfig") -> int:
    """``cfg.jobs``, or for ``None`` (auto): one per core for kernel estimators under the minibatch
    protocol (threads sharing one store: cheap), else 1 (full-sample jobs hold m x m matrices each and
    use LAPACK's own threads; process workers each import torch)."""
    if cfg.jobs is not None:
        return int(cfg.jobs)
    return cores() if (_kind(cfg) == "kernel" and cfg.protocol == "minibatch") else 1


def uses_processes(cfg: "EstimateConfig") -> bool:
    """Whether the local jobs run in worker processes (else in this process)."""
    if cfg.scheduler or n_jobs(cfg) <= 1:
        return False
    if cfg.backend == "auto":
        return _kind(cfg) != "kernel"
    return cfg.backend == "processes"


def run_jobs(todo: Sequence[Job], cfg: "EstimateConfig", path: Path,
             ctx: Optional["_Context"]) -> Iterator[Tuple[Job, Rows]]:
    """Yield ``(job, rows)`` for every job of ``todo`` (in order, except on processes and Dask,
    where they come as they finish). ``ctx``: the open store's context for serial and thread runs."""
    todo = list(todo)
    if not todo:
        return
    if cfg.scheduler:
        yield from _run_dask(todo, cfg, path)
    elif uses_processes(cfg):
        yield from _run_processes(todo, cfg, path)
    elif n_jobs(cfg) <= 1:
        assert ctx is not None
        for job in todo:
            yield job, ctx.job_rows(job)
    else:
        from joblib import Parallel, delayed

        assert ctx is not None
        with Parallel(n_jobs=n_jobs(cfg), backend="threading", return_as="generator") as par:
            yield from zip(todo, par(delayed(ctx.job_rows)(job) for job in todo))


def _run_processes(todo: List[Job], cfg: "EstimateConfig", path: Path) -> Iterator[Tuple[Job, Rows]]:
    from joblib import Parallel, delayed

    n = n_jobs(cfg)
    size = max(1, -(-len(todo) // (4 * n)))            # ~4 chunks per worker: few store openings, even load
    chunks = [todo[k:k + size] for k in range(0, len(todo), size)]
    open_path = str(Path(path).resolve())
    with Parallel(n_jobs=n, backend="loky", return_as="generator_unordered") as par:
        for done in par(delayed(worker_rows)(open_path, str(path), _quiet(cfg), chunk) for chunk in chunks):
            yield from done


def _run_dask(todo: List[Job], cfg: "EstimateConfig", path: Path) -> Iterator[Tuple[Job, Rows]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ValueError("--scheduler needs Dask distributed: pip install 'infoplane[cluster]' "
                         "(or pip install 'dask[distributed]')") from None
    open_path = str(Path(path).resolve())
    try:
        client = Client(cfg.scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as e:
        raise ValueError(f"--scheduler {cfg.scheduler!r}: no Dask scheduler answered ({e}); start one "
                         "(`dask scheduler`, or dask-jobqueue on a cluster) and pass its address") from None
    try:
        q = _quiet(cfg)
        futures = client.map(worker_rows, [open_path] * len(todo), [str(path)] * len(todo), [q] * len(todo),
                             [[job] for job in todo], pure=False)
        for fut in as_completed(futures):
            yield from fut.result()
    finally:
        client.close()


def _quiet(cfg: "EstimateConfig") -> "EstimateConfig":
    import dataclasses

    return dataclasses.replace(cfg, progress=False, jobs=1, scheduler=None)


_CONTEXTS: Dict[tuple, Any] = {}

#: Seconds to wait for the Dask scheduler at ``--scheduler`` before giving up.
CONNECT_TIMEOUT_S = 20


def worker_rows(open_path: str, row_path: str, cfg: "EstimateConfig", jobs: Sequence[Job]) -> List[Tuple[Job, Rows]]:
    """Run ``jobs`` in this (worker) process: the store is opened and the target sides prepared once
    per process and settings, then kept for the next call."""
    import torch

    from infoplane.estimate import _Context
    from infoplane.store import ActivationStore

    torch.set_num_threads(int(cfg.threads) if cfg.threads else 1)
    st = os.stat(open_path)
    key = (open_path, row_path, st.st_mtime_ns, st.st_size, repr(cfg))
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        for old in list(_CONTEXTS.values()):
            old.store.close()
        _CONTEXTS.clear()
        store = ActivationStore(open_path)
        ctx = _Context(store, cfg, row_path)
        _CONTEXTS[key] = ctx
    return [(tuple(job), ctx.job_rows(tuple(job))) for job in jobs]
