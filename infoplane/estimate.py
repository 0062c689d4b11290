"""Run a dependence estimator over an activation store -> a tidy table (docs/formats_store.md).

For every complete checkpoint and stored layer Z, two targets are estimated: ``x`` (the stored
inputs X, RBF kernel) and ``y`` (the labels, linear kernel on one-hot vectors), as in Sakamoto &
Sato (2024), app. F.1.2. Protocol "minibatch" (their protocol, the default): the fixed evaluation
set of the store is cut, in stored order, into ``n_batches = N // batch_size`` batches of exactly
``batch_size`` samples (the remainder is left out, and logged, so every value uses the same m);
``value`` is the mean over batches and ``std`` their standard deviation. Protocol "full": all N
samples in one batch (exact, or low rank within ``tolerance``).

Every kernel value carries its exact chance level (``infoplane.estimators.chance``):
``null_mean``, ``null_sd``, ``z``, ``p_value``, ``adjusted``. ``baseline`` (optional) is the same
estimator after shuffling Z's rows with a seeded permutation: an empirical null level, and the only
one for estimators without an analytic null.

All values come from the engine that ``infoplane.assess`` uses (``infoplane.estimators.protocol``).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch

from infoplane.store import ActivationStore

PathLike = Union[str, Path]
log = logging.getLogger(__name__)

COLUMNS = ["run", "regime", "model", "dataset", "checkpoint", "epoch", "layer", "layer_index",
           "estimator", "target", "value", "std", "null_mean", "null_sd", "z", "p_value", "adjusted",
           "max_value", "baseline", "baseline_std", "error_bound", "rank_z", "rank_target", "dim_z", "dim_target",
           "protocol",
           "n_samples", "batch_size", "n_batches", "seconds", "eps", "sigma_rule", "distance", "seed",
           "store", "shard", "status"]

#: ``status`` of a row with a value; any other status marks a row without one (and says why).
OK = "ok"

#: Above this many bytes a layer is read batch by batch instead of at once.
_READ_ALL_BYTES = 512 * 1024 * 1024

PROTOCOLS = ("minibatch", "full")


@dataclass
class EstimateConfig:
    """How to estimate (defaults: the minibatch protocol of Sakamoto & Sato 2024, app. F.1.2).

    estimator: a registered name (``infoplane estimators`` lists them).
    protocol: "minibatch" (consecutive batches of ``batch_size``, the value is their mean) or
    "full" (all samples at once). batch_size: m of the minibatch protocol (100). eps: nHSIC
    regulariser (1e-5). sigma: RBF bandwidth rule, "paper" (5 sqrt(d)), "median", or a positive
    number. tolerance: full-sample nHSIC only, the relative error bound of the low-rank value
    (None = exact). baseline: also estimate on shuffled Z (an empirical null level); None = only
    for estimators without an exact null (nHSIC and HSIC have ``null_mean``/``null_sd``).
    seed: the shuffle's seed. device: torch device. layers / checkpoints: restrict to these names
    (None = all). distance: "squared" (standard RBF) or "euclidean" (non-squared distance, as the
    published E2E-info code). progress: show a progress bar. threads: CPU threads for torch
    while estimating; None = 1 for the minibatch protocol (its 100 x 100 matrices gain nothing from
    threads, and oversubscribed threads were measured 20x slower on a busy 2-core machine) and
    torch's setting for ``full``. allow_incomplete: estimate the complete checkpoints of a store
    that also holds incomplete ones (they get a ``status`` row saying so); by default that is an
    error naming them. params: parameters of the estimator over its defaults (e.g. ``{"bins": 10}``
    for binning; ``infoplane estimators`` lists them). jobs: (checkpoint, layer) jobs run at once
    (None: one per core for kernel estimators under the minibatch protocol, else 1); backend: "threads" (one
    process, the store read once; kernel estimators spend their time in LAPACK/BLAS, which releases
    the GIL), "processes" (joblib's process pool, each worker opening the store) or "auto"
    (threads for kernel estimators, processes for the others). scheduler: the address of a Dask
    distributed scheduler (``tcp://host:8786``): every job runs on the cluster's workers, each
    reading the store from the same path. shard: ``"i/n"``, only the i-th of n interleaved parts of
    the jobs (for array jobs; concatenate the n CSVs). Values do not depend on any of these.
    """

    estimator: str = "nhsic"
    protocol: str = "minibatch"
    batch_size: int = 100
    eps: float = 1e-5
    sigma: Union[str, float] = "paper"
    tolerance: Optional[float] = None
    baseline: Optional[bool] = None
    seed: int = 0
    device: str = "cpu"
    layers: Optional[Sequence[str]] = None
    checkpoints: Optional[Sequence[str]] = None
    distance: str = "squared"
    progress: bool = True
    threads: Optional[int] = None
    allow_incomplete: bool = False
    params: Optional[Dict[str, Any]] = None
    jobs: Optional[int] = None
    backend: str = "auto"
    scheduler: Optional[str] = None
    shard: Optional[str] = None

    @property
    def full(self) -> bool:
        return self.protocol == "full"

    @property
    def squared(self) -> bool:
        return self.distance == "squared"

    def validate(self) -> None:
        for name in ("layers", "checkpoints"):
            sel = getattr(self, name)
            if sel is not None and len(list(sel)) == 0:
                raise ValueError(f"--{name} selects nothing (an empty list); name at least one, or leave the "
                                 "option out for all")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.distance not in ("squared", "euclidean"):
            raise ValueError(f"distance must be 'squared' or 'euclidean', got {self.distance!r}")
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or int(self.batch_size) < 4:
            raise ValueError(f"batch_size must be an integer >= 4, got {self.batch_size}")
        if not float(self.eps) > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.tolerance is not None and not 0 < float(self.tolerance) < 1:
            raise ValueError(f"tolerance must be in (0, 1) (relative error of the value), or None for exact; "
                             f"got {self.tolerance}")
        if isinstance(self.sigma, str):
            if self.sigma not in ("paper", "median"):
                try:
                    self.sigma = float(self.sigma)
                except ValueError:
                    raise ValueError(f"sigma must be 'paper', 'median' or a positive number, "
                                     f"got {self.sigma!r}") from None
        if not isinstance(self.sigma, str) and not float(self.sigma) > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if self.jobs is not None and (isinstance(self.jobs, bool) or int(self.jobs) != self.jobs
                                      or int(self.jobs) < 1):
            raise ValueError(f"jobs must be an integer >= 1 or None (one per core for kernel estimators), "
                             f"got {self.jobs!r}")
        if self.backend not in ("auto", "threads", "processes"):
            raise ValueError(f"backend must be 'auto', 'threads' or 'processes', got {self.backend!r}")
        if self.shard is not None:
            from infoplane.parallel import parse_shard

            parse_shard(self.shard)


def check_csv_path(path: PathLike, what: str = "--out") -> Path:
    """A CSV path that is not a directory; raises ``ValueError`` naming the option otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory; pass a CSV file, e.g. {str(path / 'estimates.csv')!r}")
    return path


def write_csv_atomic(df: pd.DataFrame, path: PathLike) -> Path:
    """Write ``df`` to ``path`` via ``path.partial`` + ``os.replace`` (never a half-written CSV)."""
    path = check_csv_path(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class _LayerReader:
    """Rows of one stored layer, read at once when small, else batch by batch (under ``lock``, when
    worker threads share the store)."""

    def __init__(self, store: ActivationStore, ckpt: str, layer: str, lock: Any = None) -> None:
        import contextlib

        self._lock = lock if lock is not None else contextlib.nullcontext()
        with self._lock:
            ds = store._layer_ds(ckpt, layer)
            self._all = None
            self.dim = int(np.prod(ds.shape[1:]))
            if ds.size * ds.dtype.itemsize <= _READ_ALL_BYTES:
                self._all = store.read(ckpt, layer)
        self._store, self._ckpt, self._layer = store, ckpt, layer

    def rows(self, idx: np.ndarray) -> np.ndarray:
        if self._all is not None:
            return self._all if _is_identity(idx, len(self._all)) else self._all[idx]
        with self._lock:
            return self._store.read(self._ckpt, self._layer, rows=idx)


def _is_identity(idx: np.ndarray, n: int) -> bool:
    return len(idx) == n and bool(idx[0] == 0 and idx[-1] == n - 1 and np.all(np.diff(idx) == 1))


def _non_finite(reader: "_LayerReader") -> int:
    """Number of NaN/inf activations of a stored layer (read in row blocks when it is large)."""
    def count(block: np.ndarray) -> int:
        # a float64 sum of finite float16/32 values is finite: the element-wise check runs only when not
        if np.isfinite(np.sum(block, dtype=np.float64)):
            return 0
        return int(block.size - np.isfinite(block).sum())

    if reader._all is not None:
        return count(reader._all)
    with reader._lock:
        ds = reader._store._layer_ds(reader._ckpt, reader._layer)
    step = max(1, (_READ_ALL_BYTES // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:])))))
    bad = 0
    for start in range(0, ds.shape[0], step):
        with reader._lock:
            block = reader._store.read(reader._ckpt, reader._layer, rows=slice(start, start + step))
        bad += count(block)
    return bad


class _Runner:
    """Evaluates one estimator on (Z, target) with the engine of ``infoplane.estimators.protocol``.

    nHSIC caches the target side per store (the minibatch resolvents of X and Y, or their
    full-sample factors), so each layer costs one Z-side factorisation. Every other estimator goes
    through ``infoplane.estimators.assess`` on the arrays, exactly as a notebook call would.
    """

    def __init__(self, store: ActivationStore, cfg: EstimateConfig) -> None:
        from infoplane.estimators import get_estimator
        from infoplane.estimators.protocol import check_estimator_params

        self.cfg = cfg
        self.spec = get_estimator(cfg.estimator)
        self.kind = self.spec.kind
        from infoplane.device import resolve_device

        self.device = resolve_device(cfg.device)
        n = store.n_samples
        self.protocol = "full" if (cfg.full or self.kind == "neural") else "minibatch"
        m = n if self.protocol == "full" else int(cfg.batch_size)
        if m > n:
            raise ValueError(f"--batch-size {m} is larger than the {n} samples in the store; pass a smaller "
                             "--batch-size or --protocol full")
        self.m = m
        self.n_batches = n // m
        self.used = self.n_batches * m
        if n > self.used:
            log.warning("minibatch protocol: %d of %d samples left out (%d batches of %d; every value uses the "
                        "same m).", n - self.used, n, self.n_batches, m)
        self.perm = np.random.default_rng(int(cfg.seed)).permutation(n)
        self.inputs = store.inputs()
        self.labels = store.labels()
        nc = (store.dataset or {}).get("num_classes")
        self.num_classes = int(nc) if nc else int(self.labels.max()) + 1
        params: Dict[str, Any] = dict(cfg.params or {})
        if "eps" in params:
            raise ValueError("set eps with --eps (EstimateConfig.eps), not as an estimator parameter")
        if "eps" in self.spec.defaults or self.spec.name == "nhsic":
            params["eps"] = float(cfg.eps)
        if self.kind == "neural":  # trained estimators: the run's seed, device and progress setting
            params.update(seed=int(cfg.seed), progress=bool(cfg.progress))
        try:
            self.params = check_estimator_params(self.spec, params) if self.kind != "neural" else params
        except TypeError as e:
            raise ValueError(f"--param: {e}") from None
        self.targets = tuple(t for t in ("x", "y") if t in self.spec.targets)
        self.sigma_rule = "" if self.kind != "kernel" else (
            cfg.sigma if isinstance(cfg.sigma, str) else f"{float(cfg.sigma):g}")
        self.dim_x = int(np.prod(self.inputs.shape[1:]))
        self.fast = self.spec.name == "nhsic"
        if cfg.tolerance is not None and not (self.fast and cfg.full):
            raise ValueError("--tolerance applies to full-sample nHSIC (--protocol full --estimator nhsic) only")
        self._cache: Dict[tuple, Any] = {}

    @property
    def eps(self) -> float:
        return float(self.params.get("eps", math.nan))

    def _target_data(self, target: str) -> np.ndarray:
        return self.inputs[: self.used] if target == "x" else self.labels[: self.used]

    def _target_side(self, target: str):
        """Minibatch side or full-sample factor of X (RBF) or Y (one-hot, linear), once per store."""
        key = ("side", target)
        if key not in self._cache:
            from infoplane.estimators import batched, fast

            kern = "rbf" if target == "x" else "label"
            if self.protocol == "minibatch":
                side = batched.prepare_minibatch_side(
                    self._target_data(target), kernel=kern, batch_size=self.m, eps=self.eps, sigma=self.cfg.sigma,
                    squared=self.cfg.squared, device=self.device, num_classes=self.num_classes)
            elif kern == "rbf" and self.cfg.tolerance is None:    # exact: the resolvent, no eigenvectors
                from infoplane.estimators import exact

                side = exact.prepare_resolvent(self._target_data(target), sigma=self.cfg.sigma, eps=self.eps,
                                               squared=self.cfg.squared, device=self.device)
            else:
                side = fast.factorize(self._target_data(target), kernel=kern, sigma=self.cfg.sigma,
                                      squared=self.cfg.squared, device=self.device, num_classes=self.num_classes,
                                      tolerance=self.cfg.tolerance if target == "x" else None)
            self._cache[key] = side
        return self._cache[key]

    def prepare(self) -> None:
        """Compute the target sides now (before worker threads share this runner read-only)."""
        if self.fast:
            for target in ("x", "y"):
                self._target_side(target)

    def result(self, reader: _LayerReader, target: str, shuffled: bool, cache: Optional[Dict[tuple, Any]] = None):
        """DependenceResult of the estimator on (Z rows, target rows) (Z rows permuted if shuffled).

        ``cache``: a dict private to one layer's job, holding its Z side for both targets (and, for
        the low-rank path, the target factors as refined for this layer)."""
        from infoplane.estimators import assess, batched, fast, protocol

        zidx = self.perm[: self.used] if shuffled else np.arange(self.used)
        if self.fast:
            cache = {} if cache is None else cache
            key = ("z", shuffled)
            if key not in cache:  # one Z side per layer (minibatch resolvents or factor), both targets
                z = reader.rows(zidx)
                if self.protocol == "minibatch":
                    cache[key] = batched.prepare_minibatch_side(
                        z, kernel="rbf", batch_size=self.m, eps=self.eps, sigma=self.cfg.sigma,
                        squared=self.cfg.squared, device=self.device)
                elif self.cfg.tolerance is None:
                    from infoplane.estimators import exact

                    cache[key] = exact.prepare_resolvent(z, sigma=self.cfg.sigma, eps=self.eps,
                                                         squared=self.cfg.squared, device=self.device)
                else:
                    cache[key] = fast.factorize(z, kernel="rbf", sigma=self.cfg.sigma, squared=self.cfg.squared,
                                                tolerance=self.cfg.tolerance, device=self.device)
            if self.protocol == "minibatch":
                return protocol.nhsic_minibatch_result(cache[key], self._target_side(target))
            if self.cfg.tolerance is None:
                return protocol.nhsic_resolvent_result(cache[key], self._target_side(target))
            fz, ft = cache[key], cache.get(("side", target))
            if ft is None:
                ft = self._target_side(target)
            if self.cfg.tolerance is not None:
                # a target side that falls back to its exact resolvent computes it once per store
                # (dict.setdefault is atomic: worker threads all get the same holder)
                holder = self._cache.setdefault(("exact", target), fast.ExactSideCache())
                ref = fast.refine_nhsic(fz, ft, eps=self.eps, tolerance=self.cfg.tolerance, other_exact=holder)
                fz, ft = ref.z_factor, ref.other_factor
                cache[key], cache[("side", target)] = fz, ft   # this layer's extended factors
            return protocol.nhsic_factor_result(fz, ft, self.eps)
        z, t = reader.rows(zidx), self._target_data(target)
        return assess(z, t, self.spec, protocol=self.protocol, batch_size=self.m, sigma=self.cfg.sigma,
                      kernel_x="rbf", kernel_y="rbf" if target == "x" else "label",
                      distance=self.cfg.distance, num_classes=self.num_classes, device=self.device,
                      **self.params)


def _regime_name(regime: Any) -> str:
    if isinstance(regime, dict):
        return str(regime.get("name") or regime.get("regime") or json.dumps(regime, sort_keys=True))
    return str(regime)


def estimate_store(path: PathLike, config: Optional[EstimateConfig] = None) -> pd.DataFrame:
    """Estimate dependence between every stored layer Z and X / Y at every complete checkpoint.

    Returns a tidy DataFrame with :data:`COLUMNS` (one row per checkpoint x layer x target).
    """
    cfg = config or EstimateConfig()
    cfg.validate()
    return _with_threads(cfg, lambda: _estimate(path, cfg))


def _with_threads(cfg: EstimateConfig, run: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    threads = cfg.threads
    if threads is None:   # 1 per worker thread; torch's own setting only for one full-sample job at a time
        from infoplane.parallel import n_jobs

        threads = None if (cfg.protocol == "full" and n_jobs(cfg) == 1) else 1
    saved = torch.get_num_threads()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        return run()
    finally:
        torch.set_num_threads(saved)


def _estimate(path: PathLike, cfg: EstimateConfig, finished: Optional[Mapping[tuple, List[Dict[str, Any]]]] = None,
              on_rows: Optional[Callable[[tuple, List[Dict[str, Any]]], None]] = None) -> pd.DataFrame:
    """All rows of a store, in (checkpoint, layer, target) order. ``finished`` maps (checkpoint,
    layer) to rows computed before (a resumed run: not recomputed); ``on_rows(key, rows)`` is called
    after each newly estimated layer (``estimate_to_csv`` streams them to disk). Independent
    (checkpoint, layer) jobs run on ``cfg.jobs`` workers or a Dask cluster (``infoplane.parallel``)."""
    from tqdm.auto import tqdm

    from infoplane import parallel

    finished = dict(finished or {})
    path = Path(path)
    with ActivationStore(path) as store:
        ckpts = store.checkpoints()
        incomplete = [c for c in store.checkpoints(include_incomplete=True) if c not in set(ckpts)]
        if cfg.checkpoints is not None:
            incomplete = [c for c in incomplete if any(fnmatch.fnmatchcase(c, pat) for pat in cfg.checkpoints)]
        if incomplete and not cfg.allow_incomplete:
            raise ValueError(f"{str(path)!r} holds incomplete checkpoints ({', '.join(incomplete)}): their extraction "
                             "was interrupted. Re-run `infoplane extract` with the same checkpoints and --out to finish "
                             "them, or pass --allow-incomplete to estimate the complete ones only")
        if incomplete:
            log.warning("skipping incomplete checkpoints of %s: %s (re-run `infoplane extract` to finish them)",
                        path, ", ".join(incomplete))
        if not ckpts:
            raise ValueError(f"{str(path)!r} has no complete checkpoint; run `infoplane extract` first")
        if cfg.checkpoints is not None:
            chosen = select_names(cfg.checkpoints, ckpts + incomplete, "checkpoints", str(path))
            ckpts = [c for c in ckpts if c in chosen]
        jobs = []
        for c in ckpts:
            names = store.layers(c)
            chosen = set(names) if cfg.layers is None else select_names(cfg.layers, names, "layers",
                                                                        f"checkpoint {c!r}")
            for i, name in enumerate(names, start=1):
                if name in chosen:
                    jobs.append((c, name, i))
        jobs = parallel.shard(jobs, cfg.shard)
        rows: List[Dict[str, Any]] = []
        todo = [j for j in jobs if (j[0], j[1]) not in finished]
        runner = _Runner(store, cfg)              # validates the settings before any work starts
        if runner.n_batches < 1:
            raise ValueError(f"the store has {store.n_samples} samples, fewer than one batch")
        ctx = None
        if todo and not (cfg.scheduler or parallel.uses_processes(cfg)):
            ctx = _Context(store, cfg, path, runner)  # serial or threads: one open store, shared target sides
        for c in incomplete:
            a = store.checkpoint_attrs(c)
            rows.append({**_base_row(path, _names_of(store), cfg, c, a, "", 0, "", runner.eps, runner.sigma_rule),
                         "value": math.nan,
                         "status": f"skipped: incomplete ({int(a.get('rows_done', 0))} of {store.n_samples} rows)"})
        done: Dict[tuple, List[Dict[str, Any]]] = {}
        bar = tqdm(total=len(jobs), desc=f"estimate {cfg.estimator}", unit="layer",
                   disable=None if cfg.progress else True)
        bar.update(len(jobs) - len(todo))
        try:
            for job, job_rows in parallel.run_jobs(todo, cfg, path, ctx):
                done[(job[0], job[1])] = job_rows
                if on_rows is not None:
                    on_rows((job[0], job[1]), job_rows)
                bar.update(1)
        finally:
            bar.close()
        for c, name, _ in jobs:
            rows += finished.get((c, name)) or done[(c, name)]
    extra_cols = sorted({k for r in rows for k in r} - set(COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS + extra_cols)


def _names_of(store: ActivationStore) -> Tuple[str, str]:
    """(model name, dataset name) of a store (read once per store: each is a JSON attribute)."""
    return (store.model or {}).get("name", ""), (store.dataset or {}).get("name", "")


def _base_row(path: Path, names: Tuple[str, str], cfg: EstimateConfig, c: str, a: Dict[str, Any], name: str,
              i: int, target: str, eps: float, sigma_rule: str = "") -> Dict[str, Any]:
    protocol = "full" if cfg.full else "minibatch"
    return {"run": a.get("run", ""), "regime": _regime_name(a.get("regime", "")),
            "model": names[0], "dataset": names[1],
            "checkpoint": c, "epoch": int(a.get("epoch", -1)), "layer": name, "layer_index": i,
            "estimator": cfg.estimator, "target": target, "protocol": protocol, "eps": eps,
            "sigma_rule": sigma_rule, "distance": cfg.distance, "seed": int(cfg.seed), "store": str(path),
            "shard": cfg.shard or ""}


class _Context:
    """What every job of one store needs: the open store (reads under a lock, so worker threads can
    share it), the runner with its once-per-store target sides, checkpoint attributes."""

    def __init__(self, store: ActivationStore, cfg: EstimateConfig, path: PathLike,
                 runner: Optional["_Runner"] = None) -> None:
        import threading

        self.store, self.cfg, self.path = store, cfg, Path(path)
        self.lock = threading.RLock()
        self.runner = runner if runner is not None else _Runner(store, cfg)
        self.runner.prepare()
        self.baseline = (cfg.baseline if cfg.baseline is not None
                         else self.runner.spec.null_prepare is None and not self.runner.fast)
        self._attrs: Dict[str, Dict[str, Any]] = {}
        self.names = _names_of(store)
        self.single_class = len(np.unique(store.labels())) < 2

    def attrs(self, c: str) -> Dict[str, Any]:
        with self.lock:
            if c not in self._attrs:
                self._attrs[c] = self.store.checkpoint_attrs(c)
            return self._attrs[c]

    def job_rows(self, job: Tuple[str, str, int]) -> List[Dict[str, Any]]:
        """The rows of one (checkpoint, layer, index) job: one per target (or one status row)."""
        c, name, i = job
        cfg, runner, path = self.cfg, self.runner, self.path
        a = self.attrs(c)
        with self.lock:
            reader = _LayerReader(self.store, c, name, self.lock)
        n_bad = _non_finite(reader)
        out: List[Dict[str, Any]] = []
        if n_bad:
            log.warning("%s: checkpoint %r, layer %r has %d non-finite activation(s) (NaN/inf); its rows are "
                        "marked and left without a value", path, c, name, n_bad)
            return [{**_base_row(path, self.names, cfg, c, a, name, i, target, runner.eps, runner.sigma_rule),
                     "value": math.nan, "status": f"non-finite activations ({n_bad} values)"}
                    for target in runner.targets]
        zcache: Dict[tuple, Any] = {}
        dims = {"dim_z": reader.dim, "x": runner.dim_x, "y": runner.num_classes}
        for target in runner.targets:     # a label-only estimator (the SNN loss) has no x row
            t0 = time.perf_counter()
            res = runner.result(reader, target, shuffled=False, cache=zcache)
            if res.null_sd == 0.0:
                side = ("the labels have a single class" if target == "y" and self.single_class
                        else "one side is constant in every batch (e.g. a dead layer)")
                log.warning("%s: checkpoint %r, layer %r, target %s: %s, so the value is %g and no chance "
                            "level exists (z and adjusted are NaN)", path, c, name, target, side, res.value)
            base = runner.result(reader, target, shuffled=True, cache=zcache) if self.baseline else None
            seconds = time.perf_counter() - t0
            d = res.to_dict()
            d.pop("estimator")
            d.pop("protocol")
            row = _base_row(path, self.names, cfg, c, a, name, i, target, runner.eps, runner.sigma_rule)
            row.update(d)
            row.update(dim_z=dims["dim_z"], dim_target=dims[target])
            row.update({"baseline": base.value if base is not None else math.nan,
                        "baseline_std": base.std if base is not None else math.nan,
                        "protocol": runner.protocol, "eps": runner.eps, "seconds": seconds, "status": OK})
            out.append(row)
        return out


def select_names(patterns: Sequence[str], names: Sequence[str], what: str, where: str) -> set:
    """Names matching any of ``patterns`` (exact names or globs such as ``'epoch_00*'``); a pattern
    that matches nothing is an error listing what is stored."""
    chosen = set()
    for pat in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"--{what} {pat!r} matches nothing stored in {where}; stored: {', '.join(names)}")
        chosen.update(hit)
    return chosen


def resume_path(out: PathLike) -> Path:
    """Where :func:`estimate_to_csv` keeps the finished rows of an unfinished run: ``OUT.partial.jsonl``."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl")


def _resume_key(path: PathLike, cfg: EstimateConfig) -> Dict[str, Any]:
    """What must match for rows of an earlier, interrupted run to be reused: the store (path and the
    sha256 of every checkpoint) and every setting that changes a value."""
    with ActivationStore(path) as store:
        ckpts = {c: str(store.checkpoint_attrs(c).get("sha256", "")) for c in store.checkpoints()}
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("progress", "threads", "device", "jobs", "backend", "scheduler")}
    return json.loads(json.dumps({"store": str(Path(path).resolve()), "checkpoints": ckpts, "settings": settings},
                                 default=str))


def estimate_to_csv(path: PathLike, out: PathLike, config: Optional[EstimateConfig] = None,
                    resume: bool = True) -> Path:
    """:func:`estimate_store` writing each finished layer to ``OUT.partial.jsonl`` as it goes, then
    the CSV atomically (``.partial`` + rename) and the partial file removed. An interrupted run
    (Ctrl-C, a killed job) keeps the partial file; the same call again resumes from it when the
    store and the settings are unchanged (else it starts over, saying so). Returns the CSV path."""
    cfg = config or EstimateConfig()
    cfg.validate()
    out = check_csv_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = resume_path(out)
    key = _resume_key(path, cfg)
    finished: Dict[tuple, List[Dict[str, Any]]] = {}
    if resume and partial.exists():
        finished = _read_partial(partial, key)
    with open(partial, "w") as fh:
        fh.write(json.dumps({"resume_key": key}) + "\n")
        for (c, layer), rows in finished.items():
            fh.write(json.dumps({"checkpoint": c, "layer": layer, "rows": rows}) + "\n")
        fh.flush()

        def on_rows(job: tuple, rows: List[Dict[str, Any]]) -> None:
            fh.write(json.dumps({"checkpoint": job[0], "layer": job[1], "rows": rows}, default=_json_value) + "\n")
            fh.flush()

        try:
            df = _with_threads(cfg, lambda: _estimate(path, cfg, finished=finished, on_rows=on_rows))
        except KeyboardInterrupt:
            raise
        except BaseException:
            fh.close()
            partial.unlink(missing_ok=True)
            raise
    write_csv_atomic(df, out)
    partial.unlink(missing_ok=True)
    return out


#: Columns that must agree between the parts of one sharded run (the settings of the values).
SETTING_COLUMNS = ["estimator", "protocol", "batch_size", "eps", "sigma_rule", "distance", "seed"]


def merge_estimates(parts: Sequence[PathLike], out: PathLike) -> Path:
    """Concatenate the CSVs of a sharded run (``--shard i/n``) into one table, written atomically.

    Refused, naming the file and column: parts with different settings (:data:`SETTING_COLUMNS`),
    a part that is not one shard (its ``shard`` column), shards of different N, a shard given twice
    or missing (failed or not run), and a (store, checkpoint, layer, target) row in two parts. Rows
    are put in the store's order (epoch, checkpoint, layer index, target).
    """
    from infoplane.plot import read_estimates

    paths = [Path(p) for p in parts]
    if not paths:
        raise ValueError("merge: pass the CSVs of every shard")
    out = check_csv_path(out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"--out {str(out)!r} is one of the inputs; write the merged table to a new file")
    seen: Dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise ValueError(f"merge: {str(p)!r} is given twice; pass each shard once")
        seen[p.resolve()] = p
    tables = []
    for p in paths:
        df = read_estimates(p)
        df["_part"] = str(p)
        tables.append(df)
    df = pd.concat(tables, ignore_index=True)
    ok = df[df["status"].astype(object).where(df["status"].notna(), OK) == OK] if "status" in df else df
    for col in SETTING_COLUMNS:
        if col in ok:
            vals = ok[col].dropna().astype(str).unique()
            if len(vals) > 1:
                first = {v: ok.loc[ok[col].astype(str) == v, "_part"].iloc[0] for v in vals}
                raise ValueError(f"merge: the parts differ in {col!r} ({'; '.join(f'{v} in {f}' for v, f in first.items())}); "
                                 "merge only the shards of one run")
    shards: Dict[int, str] = {}
    n_parts = set()
    for part, sub in df.groupby("_part", sort=False):
        specs = set(sub["shard"].astype(object).where(sub["shard"].notna(), "").astype(str)) if "shard" in sub else {""}
        if len(specs) != 1 or "" in specs or "nan" in specs:
            raise ValueError(f"merge: {part} is not one shard of a run (its 'shard' column is {sorted(specs)}); "
                             "merge the CSVs written with --shard I/N")
        from infoplane.parallel import parse_shard

        i, n = parse_shard(specs.pop())
        n_parts.add(n)
        if i in shards:
            raise ValueError(f"merge: {part} and {shards[i]} are both shard {i}/{n}; pass each shard once")
        shards[i] = str(part)
    if len(n_parts) != 1:
        raise ValueError(f"merge: the parts come from runs cut into different numbers of shards ({sorted(n_parts)})")
    n = n_parts.pop()
    missing = [f"{i}/{n}" for i in range(n) if i not in shards]
    if missing:
        raise ValueError(f"merge: shard(s) {', '.join(missing)} are missing; run them (same command with "
                         f"--shard {missing[0]}) and pass every part")
    key = ["store", "checkpoint", "layer", "target"]
    dup = df[df.duplicated(key, keep=False) & (df["layer"].astype(str) != "")]
    if len(dup):
        r = dup.iloc[0]
        files = sorted(set(dup[(dup[key] == r[key]).all(axis=1)]["_part"]))
        raise ValueError(f"merge: checkpoint {r['checkpoint']!r}, layer {r['layer']!r}, target {r['target']!r} is in "
                         f"{' and '.join(files)}; pass each shard once")
    df = df.drop(columns="_part")
    df["_t"] = df["target"].astype(str)
    df = df.sort_values(["store", "epoch", "checkpoint", "layer_index", "_t"], kind="stable").drop(columns="_t")
    return write_csv_atomic(df.reset_index(drop=True), out)


def _json_value(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


def _read_partial(partial: Path, key: Dict[str, Any]) -> Dict[tuple, List[Dict[str, Any]]]:
    """Rows of an interrupted run whose resume key matches ``key``; {} (and a log line) otherwise."""
    finished: Dict[tuple, List[Dict[str, Any]]] = {}
    try:
        lines = partial.read_text().splitlines()
        head = json.loads(lines[0]) if lines else {}
        if head.get("resume_key") != key:
            log.warning("%s is from a run with another store or other settings; starting over", partial)
            return {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except ValueError:  # the line being written when the run was killed
                break
            finished[(rec["checkpoint"], rec["layer"])] = rec["rows"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        log.warning("%s is unreadable; starting over", partial)
        return {}
    if finished:
        log.warning("resuming from %s: %d finished layer(s) reused", partial, len(finished))
    return finished



__all__ = ["EstimateConfig", "estimate_store", "estimate_to_csv", "merge_estimates", "resume_path",
           "write_csv_atomic", "COLUMNS"]
