"""Run a dependence estimator over an activation store -> a tidy table (ARCHITECTURE.md).

For every complete checkpoint and stored layer Z, two targets are estimated:
``x`` (the stored inputs X, RBF kernel) and ``y`` (the labels, linear kernel on one-hot vectors;
seed 000 appendix F.1.2). The default is the paper's minibatch protocol (F.1.2: "this study
derives the estimator by averaging values based on minibatches"): the fixed evaluation set of the
store is cut, in stored order, into ``n_batches = N // batch_size`` batches of exactly
``batch_size`` samples (the remainder is left out so every value uses the same m); ``value`` is
the mean over batches and ``std`` their standard deviation. ``full=True`` uses all N samples in
one batch. ``baseline`` is the same estimator after shuffling Z's rows with a seeded permutation
(the null level: nHSIC of independent samples is far from 0 at small m, see ESTIMATORS.md).

Estimator kinds (``infoplane.estimators`` registry): ``kernel`` estimators get Gram matrices
``fn(K_z, K_target, **params)``; ``samples`` estimators get raw minibatches ``fn(z, t)``;
``neural`` estimators get all samples at once ``fn(z, t)``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from infoplane.store import ActivationStore

PathLike = Union[str, Path]

COLUMNS = ["run", "regime", "model", "dataset", "checkpoint", "epoch", "layer", "layer_index",
           "estimator", "target", "value", "baseline", "n_samples", "batch_size", "n_batches", "std",
           "baseline_std", "seconds", "eps", "sigma_rule", "distance", "seed", "store"]

#: Above this many bytes a layer is read batch by batch instead of at once.
_READ_ALL_BYTES = 512 * 1024 * 1024


@dataclass
class EstimateConfig:
    """How to estimate (defaults: seed 000 appendix F.1.2 and the authors' evaluation protocol).

    estimator: a registered name (``infoplane estimators`` lists them).
    batch_size: m of the minibatch protocol (100). eps: nHSIC regulariser (1e-5).
    sigma: RBF bandwidth rule, "paper" (5 sqrt(d)), "median", or a positive number.
    full: one batch of all samples instead of minibatches. tolerance: accuracy of the low-rank
    nHSIC (``infoplane.estimators.fast``; None = exact). baseline: also estimate on shuffled Z.
    seed: the shuffle's seed. device: torch device for the Gram matrices. layers / checkpoints:
    restrict to these names (None = all). squared: squared distance in the RBF exponent (standard);
    False reproduces the published E2E-info code. progress: show a progress bar.
    num_threads: CPU threads for torch while estimating; None = 1 for the minibatch protocol
    (its 100 x 100 matrices gain nothing from threads, and oversubscribed threads were measured
    20x slower on a busy 2-core machine) and torch's setting for ``full``.
    """

    estimator: str = "nhsic"
    batch_size: int = 100
    eps: float = 1e-5
    sigma: Union[str, float] = "paper"
    full: bool = False
    tolerance: Optional[float] = None
    baseline: bool = True
    seed: int = 0
    device: str = "cpu"
    layers: Optional[Sequence[str]] = None
    checkpoints: Optional[Sequence[str]] = None
    squared: bool = True
    progress: bool = True
    num_threads: Optional[int] = None

    def validate(self) -> None:
        if int(self.batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if not float(self.eps) > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.tolerance is not None and not float(self.tolerance) > 0:
            raise ValueError(f"tolerance must be > 0 (or None for exact), got {self.tolerance}")
        if isinstance(self.sigma, str):
            if self.sigma not in ("paper", "median"):
                try:
                    self.sigma = float(self.sigma)
                except ValueError:
                    raise ValueError(f"sigma must be 'paper', 'median' or a positive number, "
                                     f"got {self.sigma!r}") from None
        if not isinstance(self.sigma, str) and not float(self.sigma) > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")


def _fast_api():
    """``(fast, batched)`` modules of ``infoplane.estimators`` when they provide the factored /
    vectorised nHSIC (``CenteredFactor``, ``factorize``, ``nhsic_factored``, ``nhsic_minibatches``),
    else None (then the registry's plain ``nhsic`` is called batch by batch)."""
    try:
        from infoplane.estimators import batched, fast
    except ImportError:
        return None
    ok = all(hasattr(fast, n) for n in ("CenteredFactor", "factorize", "nhsic_factored")) and \
        hasattr(batched, "nhsic_minibatches")
    return (fast, batched) if ok else None


def write_csv_atomic(df: pd.DataFrame, path: PathLike) -> Path:
    """Write ``df`` to ``path`` via ``path.partial`` + ``os.replace`` (never a half-written CSV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


class _LayerReader:
    """Rows of one stored layer, read at once when small, else batch by batch."""

    def __init__(self, store: ActivationStore, ckpt: str, layer: str) -> None:
        ds = store._layer_ds(ckpt, layer)
        self._all = None
        if ds.size * ds.dtype.itemsize <= _READ_ALL_BYTES:
            self._all = ds[()]
        self._store, self._ckpt, self._layer = store, ckpt, layer

    def rows(self, idx: np.ndarray) -> np.ndarray:
        if self._all is not None:
            return self._all[idx]
        return self._store.read(self._ckpt, self._layer, rows=idx)


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().cpu().double().item())
    if isinstance(v, dict):
        for key in ("value", "estimate", "mi"):
            if key in v:
                return _to_float(v[key])
        raise ValueError(f"estimator returned a dict without a 'value' entry: {sorted(v)}")
    return float(v)


class _NotApplicable(Exception):
    """The estimator does not measure this target (e.g. a label-only estimator and X)."""


class _Runner:
    """Evaluates one estimator on (Z, target) over the batch plan, caching target-side work.

    nHSIC goes through the vectorised minibatch code (``estimators.batched``) or, with ``full``,
    the factored full-sample code (``estimators.fast``) with the target's factor computed once per
    store. Other kernel estimators get Gram matrices per batch (target Grams cached).
    """

    def __init__(self, store: ActivationStore, cfg: EstimateConfig) -> None:
        from infoplane import kernels
        from infoplane.estimators import get_estimator

        self.k = kernels
        self.cfg = cfg
        self.spec = get_estimator(cfg.estimator)
        self.kind = self.spec.kind
        self.device = torch.device(cfg.device)
        n = store.n_samples
        m = n if cfg.full or self.kind == "neural" else min(int(cfg.batch_size), n)
        self.m = m
        self.n_batches = n // m
        self.used = self.n_batches * m
        self.batches = [np.arange(b * m, (b + 1) * m) for b in range(self.n_batches)]
        self.perm = np.random.default_rng(int(cfg.seed)).permutation(n)
        self.inputs = store.inputs()
        self.labels = store.labels()
        nc = (store.dataset or {}).get("num_classes")
        self.num_classes = int(nc) if nc else int(self.labels.max()) + 1
        self.params: Dict[str, Any] = dict(self.spec.defaults)
        if "eps" in self.params or self.spec.name == "nhsic":
            self.params["eps"] = float(cfg.eps)
        if self.kind == "neural":  # trained estimators: the run's seed, device and progress setting
            self.params.update(seed=int(cfg.seed), device=str(cfg.device), progress=bool(cfg.progress))
        self.extras: Dict[str, float] = {}
        self.fast = _fast_api() if self.spec.name == "nhsic" else None
        if cfg.tolerance is not None and not (self.fast is not None and cfg.full):
            raise ValueError("--tolerance applies to full-sample nHSIC (--full --estimator nhsic) only")
        self._cache: Dict[tuple, Any] = {}

    def _rbf(self, a: np.ndarray) -> torch.Tensor:
        return self.k.rbf_gram(torch.as_tensor(a), sigma=self.cfg.sigma, squared=self.cfg.squared,
                               device=self.device)

    def _target_gram(self, target: str, b: int) -> torch.Tensor:
        key = ("gram", target, b)
        if key not in self._cache:
            rows = self.batches[b]
            if target == "x":
                g = self._rbf(self.inputs[rows])
            else:
                g = self.k.label_gram(torch.as_tensor(self.labels[rows]), num_classes=self.num_classes,
                                      device=self.device)
            self._cache[key] = g
        return self._cache[key]

    def _target_raw(self, target: str, rows: np.ndarray) -> np.ndarray:
        return self.inputs[rows] if target == "x" else self.labels[rows]

    def _target_factor(self, target: str):
        """Full-sample factor of X (RBF) or Y (one-hot, linear), computed once per store."""
        key = ("factor", target)
        if key not in self._cache:
            fast = self.fast[0]
            if target == "x":
                f = fast.factorize(self.inputs[: self.used], kernel="rbf", sigma=self.cfg.sigma,
                                   squared=self.cfg.squared, tolerance=self.cfg.tolerance, device=self.device)
            else:
                f = fast.factorize(self.labels[: self.used], kernel="label", num_classes=self.num_classes,
                                   device=self.device)
            self._cache[key] = f
        return self._cache[key]

    def values(self, reader: _LayerReader, target: str, shuffled: bool) -> List[float]:
        """Per-batch values of the estimator on (Z rows, target rows) (Z rows permuted if shuffled)."""
        zidx = self.perm[: self.used] if shuffled else np.arange(self.used)
        if self.fast is not None:
            fast, batched = self.fast
            z = reader.rows(zidx)
            if self.cfg.full:
                fz = fast.factorize(z, kernel="rbf", sigma=self.cfg.sigma, squared=self.cfg.squared,
                                    tolerance=self.cfg.tolerance, device=self.device)
                v, _err = fast.nhsic_factored(fz, self._target_factor(target), eps=float(self.cfg.eps))
                return [float(v)]
            other = self.inputs[: self.used] if target == "x" else self.labels[: self.used]
            vals = batched.nhsic_minibatches(z, other, kernel_other="rbf" if target == "x" else "label",
                                             batch_size=self.m, eps=float(self.cfg.eps), sigma=self.cfg.sigma,
                                             squared=self.cfg.squared, device=self.device,
                                             num_classes=self.num_classes)
            return [float(v) for v in vals]
        out = []
        for b, rows in enumerate(self.batches):
            z = reader.rows(zidx[rows])
            if self.kind == "kernel":
                v = self.spec.fn(self._rbf(z), self._target_gram(target, b), **self.params)
            else:
                try:
                    v = self.spec.fn(z, self._target_raw(target, rows), **self.params)
                except ValueError:
                    if target == "x" and b == 0:
                        raise _NotApplicable() from None
                    raise
            out.append(_to_float(v))
            if isinstance(v, dict):  # secondary outputs (held-out accuracy, BCE, ...) become columns
                self.extras = {k: float(x) for k, x in v.items()
                               if k != "value" and isinstance(x, (int, float)) and not isinstance(x, bool)}
        if self.kind != "kernel" and all(math.isnan(v) for v in out):
            raise _NotApplicable()
        return out


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
    threads = cfg.num_threads if cfg.num_threads is not None else (None if cfg.full else 1)
    saved = torch.get_num_threads()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"num_threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        return _estimate(path, cfg)
    finally:
        torch.set_num_threads(saved)


def _estimate(path: PathLike, cfg: EstimateConfig) -> pd.DataFrame:
    from tqdm.auto import tqdm

    with ActivationStore(path) as store:
        ckpts = store.checkpoints()
        if not ckpts:
            raise ValueError(f"{str(path)!r} has no complete checkpoint; run `infoplane extract` first")
        if cfg.checkpoints is not None:
            missing = sorted(set(cfg.checkpoints) - set(ckpts))
            if missing:
                raise ValueError(f"checkpoints {missing} are not in {str(path)!r}; stored: {', '.join(ckpts)}")
            ckpts = [c for c in ckpts if c in set(cfg.checkpoints)]
        runner = _Runner(store, cfg)
        if runner.n_batches < 1:
            raise ValueError(f"the store has {store.n_samples} samples, fewer than one batch")
        sigma_rule = cfg.sigma if isinstance(cfg.sigma, str) else f"{float(cfg.sigma):g}"
        model = (store.model or {}).get("name", "")
        dataset = (store.dataset or {}).get("name", "")
        jobs = []
        for c in ckpts:
            names = store.layers(c)
            if cfg.layers is not None:
                unknown = sorted(set(cfg.layers) - set(names))
                if unknown:
                    raise ValueError(f"layers {unknown} are not stored for checkpoint {c!r}; stored: "
                                     f"{', '.join(names)}")
            for i, name in enumerate(names, start=1):
                if cfg.layers is None or name in set(cfg.layers):
                    jobs.append((c, name, i))
        rows: List[Dict[str, Any]] = []
        attrs_cache: Dict[str, Dict[str, Any]] = {}
        bar = tqdm(jobs, desc=f"estimate {cfg.estimator}", unit="layer",
                   disable=None if cfg.progress else True)
        for c, name, i in bar:
            a = attrs_cache.setdefault(c, store.checkpoint_attrs(c))
            reader = _LayerReader(store, c, name)
            for target in ("x", "y"):
                t0 = time.perf_counter()
                runner.extras = {}
                try:
                    vals = runner.values(reader, target, shuffled=False)
                except _NotApplicable:
                    continue  # e.g. a label-only estimator and target x: no row
                extras = dict(runner.extras)
                base = runner.values(reader, target, shuffled=True) if cfg.baseline else []
                seconds = time.perf_counter() - t0
                rows.append({
                    "run": a.get("run", ""), "regime": _regime_name(a.get("regime", "")), "model": model,
                    "dataset": dataset, "checkpoint": c, "epoch": int(a.get("epoch", -1)), "layer": name,
                    "layer_index": i, "estimator": cfg.estimator, "target": target,
                    "value": float(np.mean(vals)),
                    "baseline": float(np.mean(base)) if base else math.nan,
                    "n_samples": runner.used, "batch_size": runner.m,
                    "n_batches": runner.n_batches,
                    "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan,
                    "baseline_std": float(np.std(base, ddof=1)) if len(base) > 1 else math.nan,
                    "seconds": seconds, "eps": float(runner.params["eps"]) if "eps" in runner.params else math.nan,
                    "sigma_rule": sigma_rule, "distance": "squared" if cfg.squared else "euclidean",
                    "seed": int(cfg.seed), "store": str(path), **extras})
    extra_cols = sorted({k for r in rows for k in r} - set(COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS + extra_cols)


def estimate_to_csv(path: PathLike, out: PathLike, config: Optional[EstimateConfig] = None) -> Path:
    """:func:`estimate_store` then an atomic CSV write; returns the CSV path."""
    return write_csv_atomic(estimate_store(path, config), out)



__all__ = ["EstimateConfig", "estimate_store", "estimate_to_csv", "write_csv_atomic", "COLUMNS"]
