"""The one epoch loop shared by every regime: data, seeding, evaluation, checkpoints, progress.

``train(TrainConfig) -> list[Path]`` builds the dataset and the model, asks the regime
(``trainers.regimes``) to train it epoch by epoch, evaluates train/test accuracy and CE loss
after every epoch (in eval mode, through ``regime.predict``), and writes into ``config.out``:

* ``config.json``  the configuration as used (options the run does not read are left out, see
  ``trainers.options``) and what was resolved from it (device, epochs, learning rate per epoch,
  the preset and its source);
* ``metrics.csv``  one row per epoch (epoch 0 = initialisation), rewritten atomically each epoch;
* ``epoch_0000.pt`` (initialisation) and ``epoch_NNNN.pt`` on the checkpoint schedule
  (``every`` epoch, or a ``log``-spaced grid), written by ``infoplane.checkpoint.save_checkpoint``
  with the backbone's state_dict, the regime's description and auxiliary state, and the metrics.

Started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment), the run trains
data-parallel on every process and writes the same files from rank 0 (``trainers.distributed``):
``batch_size`` is the global batch, and the numbers recorded are those of one process on that batch.
"""
from __future__ import annotations

import math

import csv
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from infoplane.checkpoint import checkpoint_filename, save_checkpoint
from infoplane.data import dataset_info, dataset_labels, load_dataset, stratified_subset_indices
from infoplane.models import build_model

from .augment import crop_flip
from .config import TrainConfig
from . import distributed
from .distributed import (DataParallel, Shard, ShardSampler, World, check_batch_size, check_last_batch,
                          process_device, shard_dataset, world_from_env)
from .options import check_options, used_config
from .precision import check_precision
from .regimes import Regime, get_regime

_RUN_FILES = ("config.json", "metrics.csv")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU raises a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); ``deterministic`` also selects deterministic
    kernels (``torch.use_deterministic_algorithms``, cuDNN without benchmarking)."""
    random.seed(int(seed))
    np.random.seed(int(seed) % (2 ** 32))
    torch.manual_seed(int(seed))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def checkpoint_epochs(total: int, schedule: str = "every", num: int = 30) -> List[int]:
    """Epochs (1..total) that get a checkpoint: all of them, or ~``num`` log-spaced ones
    (always including 1 and ``total``); epoch 0 (initialisation) is handled by ``save_init``."""
    if total < 1:
        raise ValueError(f"total epochs must be >= 1, got {total}")
    if schedule == "every":
        return list(range(1, total + 1))
    if schedule == "log":
        grid = np.unique(np.round(np.geomspace(1, total, num=max(2, int(num)))).astype(int))
        return sorted(set(int(e) for e in grid) | {1, total})
    raise ValueError(f"schedule must be 'every' or 'log', got {schedule!r}")


def prepare_out_dir(out: os.PathLike, overwrite: bool) -> Path:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` (then remove only the files a
    run writes: epoch_*.pt, config.json, metrics.csv and their .partial leftovers)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {path} is not empty; choose another --out or pass --overwrite")
        for f in path.iterdir():
            base = f.name[:-len(".partial")] if f.name.endswith(".partial") else f.name
            if f.is_file() and ((base.startswith("epoch_") and base.endswith(".pt")) or base in _RUN_FILES):
                f.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_metrics_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    """All rows so far, columns = union of keys (fixed ones first), written atomically."""
    first = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
    keys = [k for k in first if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r} - set(keys))
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)
    os.replace(partial, path)


def _subset(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    if n is None or n >= len(ds):  # type: ignore[arg-type]
        return ds
    idx = stratified_subset_indices(dataset_labels(ds), int(n), seed)
    if isinstance(ds, TensorDataset):
        return TensorDataset(ds.tensors[0][idx], ds.tensors[1][idx])
    return Subset(ds, idx.tolist())


class Batches:
    """Mini-batches of a dataset: in-memory tensors are sliced directly (fast); other datasets go
    through a ``DataLoader``. Shuffling uses its own generator seeded from the run's seed: the k-th
    iteration (epoch k, or the epoch given to :meth:`set_epoch`) is the k-th permutation it draws.

    ``world`` (several processes): ``batch_size`` is the global batch and each iteration yields this
    process's shard of every global batch (:class:`~trainers.distributed.ShardSampler`; the shards of
    all processes make up the batches of a single-process run); :meth:`shards` says which rows.
    """

    def __init__(self, ds: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                 world: World = World()) -> None:
        self.ds, self.batch_size, self.shuffle = ds, int(batch_size), shuffle
        self.sampler = ShardSampler(ds, self.batch_size, num_replicas=world.size, rank=world.rank, shuffle=shuffle,
                                    seed=seed)
        self._next_epoch = 1
        self.tensors = ds.tensors if isinstance(ds, TensorDataset) else None
        self.loader = None if self.tensors is not None else DataLoader(
            ds, batch_size=check_batch_size(self.batch_size, world), sampler=self.sampler, num_workers=num_workers,
            generator=torch.Generator().manual_seed(int(seed)))

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (1-based) of the shuffled order."""
        self._next_epoch = int(epoch)

    def shards(self) -> List[Shard]:
        """This process's rows of every global batch of an epoch (the whole batch on one process)."""
        return self.sampler.shards()

    def __len__(self) -> int:
        n = len(self.ds)  # type: ignore[arg-type]
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(self._next_epoch)
        self._next_epoch += 1
        if self.loader is not None:
            for x, y in self.loader:
                yield x, torch.as_tensor(y).long()
            return
        x, y = self.tensors
        for idx in self.sampler.batches():
            yield x[idx], y[idx].long()


@torch.no_grad()
def evaluate(regime: Regime, batches: Batches, device: torch.device,
             dp: Optional[DataParallel] = None) -> Tuple[float, float]:
    """(accuracy, mean CE loss) of ``regime.predict`` over ``batches`` in eval mode; with ``dp`` on
    several processes, ``batches`` is this process's part of the data and the sums are added up."""
    regime.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches:
        if len(y) == 0:
            continue
        x, y = x.to(device), y.to(device)
        logits = regime.predict(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    if dp is not None:
        correct, loss_sum, n = dp.sum_values([correct, loss_sum, n])
    return correct / max(n, 1), loss_sum / max(n, 1)


def _model_kwargs(config: TrainConfig, info) -> Dict[str, Any]:
    kw = dict(config.model_kwargs)
    for key, value in (("input_shape", list(info.input_shape)), ("num_classes", int(info.num_classes))):
        if key in kw and (list(kw[key]) if key == "input_shape" else int(kw[key])) != value:
            raise ValueError(f"model kwarg {key}={kw[key]!r} does not match dataset {info.name!r} ({value!r}); "
                             f"leave it out, it is taken from the dataset")
        kw[key] = value
    return kw


class NonFiniteLossError(ValueError):
    """The training loss became NaN or inf (the run stops; earlier checkpoints are kept)."""


def train(config: TrainConfig) -> List[Path]:
    """Run ``config`` and return the checkpoint paths written (empty when ``config.out`` is None);
    under ``torchrun`` every process trains its share and returns the paths rank 0 wrote."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        return _train(config)
    finally:  # deterministic mode is global torch state: give it back as we found it
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def _lr_record(config: TrainConfig, regime: Regime, total: int) -> Dict[str, Any]:
    """The learning-rate schedule as resolved for the record (per-stage for staged regimes)."""
    stage = int(regime.schedule_epochs())
    rec: Dict[str, Any] = {"schedule": config.lr_schedule, "warmup_epochs": config.warmup,
                           "epochs_per_schedule": stage,
                           "lr_per_epoch": [config.lr * config.lr_factor(e, stage) for e in range(1, stage + 1)]}
    if config.lr_schedule == "step":
        rec.update(milestones=config.resolved_milestones(stage), gamma=config.gamma)
    return rec


def _preset_record(config: TrainConfig) -> Optional[Dict[str, Any]]:
    if config.preset is None:
        return None
    from .presets import get_preset

    return get_preset(config.preset).describe()


def _check_data_parallel(config: TrainConfig, world: World) -> None:
    """Refuse, before any process waits for another, what several processes cannot train."""
    if not world.distributed:
        return
    issue = get_regime(config.regime).data_parallel_issue(config)
    if issue:
        raise ValueError(f"regime {config.regime!r} cannot train data-parallel on {world.size} processes "
                         f"(torchrun): {issue}")
    check_batch_size(config.batch_size, world)


def _train(config: TrainConfig) -> List[Path]:
    config.validate()
    check_options(config)
    world = world_from_env()
    device = process_device(resolve_device(config.device), world, config.device)
    check_precision(config.precision, device)
    _check_data_parallel(config, world)
    seed_everything(config.seed, config.deterministic)
    info = dataset_info(config.dataset)
    train_ds = _subset(load_dataset(config.dataset, "train", config.data_root, config.download),
                       config.subset, config.seed)
    test_n = config.test_subset if config.test_subset is not None else config.subset
    test_ds = _subset(load_dataset(config.dataset, "test", config.data_root, config.download), test_n, config.seed)
    check_last_batch(len(train_ds), config.batch_size, world)
    dp = distributed.init(world, device)  # several processes: from here on they wait for each other

    model_kwargs = _model_kwargs(config, info)
    try:
        model = build_model(config.model, **model_kwargs).to(device)
    except TypeError as err:
        raise ValueError(f"model {config.model!r} does not accept kwargs {sorted(config.model_kwargs)}: {err}; "
                         f"see its factory in infoplane.models for the valid ones") from None
    regime = get_regime(config.regime)(model, config, device)
    if world.distributed:
        dp.broadcast_modules(model, regime.heads)
        regime.distribute(dp)
    total = regime.total_epochs()
    save_at = set(checkpoint_epochs(total, config.schedule, config.num_checkpoints))

    train_batches = Batches(train_ds, config.batch_size, True, config.seed, config.num_workers, world)
    train_eval = Batches(shard_dataset(train_ds, world), config.eval_batch_size, False, config.seed,
                         config.num_workers)
    test_eval = Batches(shard_dataset(test_ds, world), config.eval_batch_size, False, config.seed,
                        config.num_workers)

    out = dp.on_main(prepare_out_dir, config.out, config.overwrite) if config.out is not None else None
    dataset_record = dict(info.as_dict(), train_size=len(train_ds), test_size=len(test_ds))
    if out is not None:
        resolved = {"device": str(device), "total_epochs": total, "checkpoint_epochs": sorted(save_at),
                    "lr": _lr_record(config, regime, total), "model_kwargs": model_kwargs,
                    "regime": regime.describe(), "dataset": dataset_record}
        if config.lr_schedule == "step":
            resolved["milestones"] = config.resolved_milestones(total)
        preset = _preset_record(config)
        if preset is not None:
            resolved["preset"] = preset
        if world.distributed:
            resolved["distributed"] = dict(dp.describe(), batch_size_per_process=config.batch_size // world.size)
        dp.on_main(_atomic_write_text, out / "config.json",
                   json.dumps({"config": used_config(config), "resolved": resolved}, indent=2, default=str))

    rows: List[Dict[str, Any]] = []
    paths: List[Path] = []
    step = 0
    disable = None if config.progress and world.is_main else True

    def write_epoch(epoch: int, row: Dict[str, Any]) -> Optional[Path]:
        write_metrics_csv(out / "metrics.csv", rows)
        if epoch in save_at or (epoch == 0 and config.save_init):
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            return save_checkpoint(out / checkpoint_filename(epoch), model, model_name=config.model,
                                   model_kwargs=model_kwargs, epoch=epoch, step=step, regime=regime.describe(),
                                   dataset=dataset_record, metrics=metrics, seed=config.seed,
                                   aux_state=regime.aux_state())
        return None

    def finish_epoch(epoch: int, stats: Dict[str, float], lr: float, seconds: float) -> None:
        row: Dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr, "seconds": round(seconds, 4)}
        if config.eval_train:
            row["train_acc"], row["train_loss"] = evaluate(regime, train_eval, device, dp)
        row["test_acc"], row["test_loss"] = evaluate(regime, test_eval, device, dp)
        row.update({f"step_{k}": v for k, v in stats.items()})
        rows.append(row)
        if out is None:
            return
        path = dp.on_main(write_epoch, epoch, row)  # rank 0 writes; the others wait for it
        if path is not None:
            paths.append(path)

    finish_epoch(0, {}, regime.lr(), 0.0)
    bar = tqdm(range(1, total + 1), desc=f"{config.regime} {config.model}/{config.dataset}", disable=disable)
    for epoch in bar:
        t0 = time.perf_counter()
        regime.on_epoch_start(epoch)
        lr = regime.lr()
        sums: Dict[str, float] = {}
        count = 0
        train_batches.set_epoch(epoch)
        batches = zip(train_batches, train_batches.shards())
        for (x, y), shard in tqdm(batches, total=len(train_batches), desc=f"epoch {epoch}", leave=False,
                                  disable=disable):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            dp.begin_step(shard)  # this process's rows of the global batch (several processes)
            if config.train_augment != "none":
                x = crop_flip(x, config.train_crop_pad, flip=config.train_augment == "crop-flip", shard=shard)
            with regime.precision.autocast():
                stats = regime.training_step(x, y)
            if "loss" not in stats:
                raise ValueError(f"regime {config.regime!r}: training_step must return a dict with key 'loss'")
            stats = dp.reduce_stats(stats)  # means over the global batch
            if not config.allow_nonfinite and not math.isfinite(float(stats["loss"])):
                raise NonFiniteLossError(
                    f"the training loss became {float(stats['loss'])} at epoch {epoch}, step {step + 1}; the "
                    f"checkpoints before this epoch are kept in {str(config.out)!r}. Lower --lr (it is "
                    f"{config.lr:g}) or check the data; --allow-nonfinite keeps training anyway")
            n = shard.total
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
            step += 1
        regime.on_epoch_end(epoch)
        dp.average_batchnorm(model, regime.heads)  # several processes: running statistics of all shards
        finish_epoch(epoch, {k: v / max(count, 1) for k, v in sums.items()}, lr, time.perf_counter() - t0)
        bar.set_postfix(loss=f"{rows[-1].get('step_loss', float('nan')):.3f}", test_acc=f"{rows[-1]['test_acc']:.3f}")
    return paths
