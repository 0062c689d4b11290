"""Run checkpoints (or a model object) over a fixed evaluation set and stream the chosen layers into an HDF5 store.

docs/formats_store.md flow: checkpoints -> ``extract`` (forward hooks) -> activations.h5. The model is
put in ``eval()`` mode and run under ``torch.no_grad()`` batch by batch; each batch's activations
(optionally reduced, :mod:`infoplane.reduce`) are handed to a writer thread that stores them while
the next batch is computed (never the whole dataset in memory). One store per run; calling
``extract`` again appends new checkpoints, skips those already complete (same sha256) and resumes
an interrupted one from its last written batch. Before the first row, the size of what is to be
written is logged and checked against the free disk space (:class:`SizeEstimate`).

Two forms, one function (docs/notebook.md): ``extract(checkpoints, ...)`` rebuilds each checkpoint
file and runs it over the dataset it names (or over your data); ``extract(model, data, ...)`` runs
any ``torch.nn.Module`` as it is over a ``Dataset`` / ``DataLoader`` of ``(x, y)`` pairs, or over
``dataset_factory="pkg.mod:fn"`` / ``image_folder=ROOT``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler,
                              Subset, SubsetRandomSampler, TensorDataset, WeightedRandomSampler)

from infoplane.estimators.protocol import MIN_SAMPLES
from infoplane.hooks import LayerSpec, _version, capture, resolve_layers, split_call_name
from infoplane.reduce import ReductionError, Reducer, Reduction, parse_reduction
from infoplane.store import ActivationStore, StoreError, compression_options

PathLike = Union[str, Path]
log = logging.getLogger(__name__)


def _versions() -> Dict[str, str]:
    import h5py

    import infoplane

    return {"infoplane": infoplane.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "python": platform.python_version()}


def select_samples(labels: Union[np.ndarray, torch.Tensor], samples: Union[None, int, Sequence[int]],
                   seed: int = 0) -> np.ndarray:
    """Dataset indices of the evaluation set: all (None), a stratified seeded subset of N (int,
    ``infoplane.data.stratified_subset_indices``), or the given indices (sorted as given)."""
    n_total = len(labels)
    if samples is None:
        return np.arange(n_total, dtype=np.int64)
    if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool):
        n = int(samples)
        if n < MIN_SAMPLES:
            raise ValueError(f"--samples must be at least {MIN_SAMPLES} (no dependence value or chance level exists "
                             f"below that), got {n}")
        if n > n_total:
            raise ValueError(f"--samples {n} is more than the {n_total} samples of this split; pass --samples "
                             f"{n_total} or fewer, or leave it out to use them all")
        if n == n_total:
            return np.arange(n_total, dtype=np.int64)
        from infoplane.data import stratified_subset_indices

        return np.asarray(stratified_subset_indices(np.asarray(labels), n, seed), dtype=np.int64)
    idx = np.asarray(samples, dtype=np.int64).reshape(-1)
    if idx.size < MIN_SAMPLES or idx.min() < 0 or idx.max() >= n_total:
        raise ValueError(f"sample indices must lie in [0, {n_total}) and be at least {MIN_SAMPLES}, got {idx.size} "
                         f"in [{idx.min() if idx.size else '-'}, {idx.max() if idx.size else '-'}]")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"sample indices contain {idx.size - np.unique(idx).size} duplicate(s); a repeated sample "
                         "inflates every dependence value, so pass each index once")
    return idx


class NonFiniteActivationError(ValueError):
    """A layer produced NaN/inf activations (or overflowed the float16 storage)."""


class DataMismatchError(StoreError):
    """The data given does not match the samples a store holds (other labels, inputs or order)."""


def _nonfinite_message(ck_path: Union[str, Path], layer: str, bad: int, start: int, z: torch.Tensor, dtype: str,
                       state_dict: Any) -> str:
    if bool(torch.isfinite(z).all()):
        cause = (f"the values are finite in float32 but overflow float16 (max |z| = {float(z.abs().max()):.3g} > "
                 "65504); use --dtype float32")
    elif any(torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
             for v in state_dict.values()):
        cause = "the checkpoint's weights contain NaN/inf (training diverged); use an earlier checkpoint"
    else:
        cause = "the forward pass overflows with these weights"
    return (f"{ck_path}: layer {layer!r} has {bad} sample row(s) with NaN/inf activations (rows from {start}); "
            f"{cause}. Nothing of this checkpoint was kept; pass --allow-nonfinite (allow_nonfinite=True) to "
            "store them anyway (estimate then marks the layer).")


def _recorded_sizes(ck: Any) -> Dict[str, Any]:
    """The train/test sizes the training loop recorded in the checkpoint's dataset record."""
    ds = dict(getattr(ck, "dataset", None) or {})
    return {k: ds[k] for k in ("train_size", "test_size") if k in ds}


def metrics_samples(sizes: Dict[str, Any], seed: Optional[int], labels: np.ndarray, idx: np.ndarray,
                    split: str) -> str:
    """Whether the checkpoint's recorded ``<split>_acc`` was computed on exactly the extracted samples.

    The training loop (``trainers.loop``) evaluates on the whole split or on the stratified subset
    ``stratified_subset_indices(labels, <split>_size, seed)``; returns ``"same"``, ``"different"`` or
    ``"unknown"`` (size not recorded)."""
    size = sizes.get(f"{split}_size")
    if size is None:
        return "unknown"
    size = int(size)
    n_total = len(labels)
    if size >= n_total:
        expected = np.arange(n_total, dtype=np.int64)
    else:
        from infoplane.data import stratified_subset_indices

        expected = np.asarray(stratified_subset_indices(labels, size, int(seed or 0)), dtype=np.int64)
    same = len(expected) == len(idx) and np.array_equal(np.sort(expected), np.sort(np.asarray(idx)))
    return "same" if same else "different"


def _checkpoint_id(store: ActivationStore, path: Path, sha: str) -> str:
    existing = store.find_checkpoint(sha)
    if existing is not None:
        return existing
    taken = set(store.checkpoints(include_incomplete=True))
    cid = path.stem
    return cid if cid not in taken else f"{cid}-{sha[:8]}"


# --------------------------------------------------------------------------------------------
# data given by the caller: a Dataset, a DataLoader or (x, y) arrays
# --------------------------------------------------------------------------------------------

ArrayLike = Union[np.ndarray, torch.Tensor]
DataLike = Union[Dataset, DataLoader, Tuple[ArrayLike, ArrayLike]]
_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


def _describe(value: Any) -> str:
    """A short description of a yielded value for error messages: type, dtype, shape, a preview."""
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:8]}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + ('...' if len(text) > 60 else '')}"


def class_interleaved(labels: Union[np.ndarray, torch.Tensor], seed: int = 0) -> np.ndarray:
    """A seeded order of the positions ``0..n-1`` of ``labels`` (n,) that spreads every class evenly.

    Within each class the order is a seeded permutation; the classes are then merged by the key
    (rank within the class + 0.5) / class size, so every run of consecutive positions holds the
    classes in proportion to their sizes (up to rounding). Estimate's minibatch protocol cuts a
    store's rows into consecutive batches; in this order each batch is a stratified sample even
    when the data lists its samples class by class (as an image folder does)."""
    y = np.asarray(labels).reshape(-1)
    perm = np.random.default_rng(int(seed)).permutation(len(y))
    keys = np.empty(len(y), dtype=np.float64)
    yp = y[perm]
    for c in np.unique(yp):
        pos = np.nonzero(yp == c)[0]
        keys[pos] = (np.arange(len(pos)) + 0.5) / len(pos)
    return perm[np.argsort(keys, kind="stable")]


def _labels(y: Any, what: str, batch: Optional[int] = None, kept: bool = False) -> np.ndarray:
    """Integer class labels of one sample (``batch=None``: a scalar) or a batch (``(batch,)``) as int64.

    Anything else (floats, bools, one-hot rows, strings) is a ValueError naming what was yielded
    (``kept``: the labels the dataset keeps, e.g. a TensorDataset's label tensor)."""
    arr: Optional[np.ndarray] = None
    is_float = isinstance(y, float) or (torch.is_tensor(y) and y.dtype.is_floating_point) or (
        isinstance(y, (np.ndarray, np.generic)) and np.asarray(y).dtype.kind == "f")
    if torch.is_tensor(y):
        if not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool):
            arr = y.detach().cpu().numpy()
    elif isinstance(y, (np.ndarray, np.generic, list, tuple)) or (isinstance(y, int) and not isinstance(y, bool)):
        try:
            cand = np.asarray(y)
        except (TypeError, ValueError):
            cand = None
        if cand is not None and cand.dtype.kind in "iu":
            arr = cand
    want = "a scalar" if batch is None else f"shape ({batch},)"
    if arr is not None and tuple(arr.shape) == (() if batch is None else (batch,)):
        if arr.size and arr.min() < 0:
            raise ValueError(f"{what} yielded the label {int(arr.min())}; labels must be class indices 0, 1, ..., "
                             "C-1")
        return arr.astype(np.int64, copy=False)
    hint = "; if the values are whole numbers, convert them (y.long(), int(y))" if is_float else ""
    if getattr(y, "ndim", 0) == (1 if batch is None else 2):
        hint = "; pass one class index per sample (one-hot rows: y.argmax(-1))"
    if kept:
        raise ValueError(f"{what} must hold integer class labels, one per sample ({want}); its labels are "
                         f"{_describe(y)}{hint}")
    raise ValueError(f"{what} must yield (x, y) pairs with y an integer class label ({want}); it yielded y = "
                     f"{_describe(y)}{hint}")


def _pair(item: Any, what: str) -> Tuple[Any, Any]:
    """``(x, y)`` of one yielded item (further elements are ignored); a ValueError otherwise."""
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    extra = "; wrap it so that it yields (x, y)" if isinstance(item, Mapping) else ""
    raise ValueError(f"{what} must yield (x, y) pairs; it yielded {_describe(item)}{extra}")


def _as_input(x: Any, what: str) -> torch.Tensor:
    """A yielded input as a tensor (numpy float arrays become float32)."""
    if torch.is_tensor(x):
        return x
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.float() if t.is_floating_point() else t
    hint = (" (a PIL image: give the dataset a transform that makes tensors, e.g. "
            "torchvision.transforms.ToTensor(), or use infoplane.data.image_folder)" if hasattr(x, "getpixel") else "")
    raise ValueError(f"{what} must yield (x, y) pairs with x a tensor or a numpy array; it yielded x = "
                     f"{_describe(x)}{hint}")


def _stack(items: List[Any], what: str) -> Tuple[torch.Tensor, np.ndarray]:
    """Collate dataset items into ``(x (b, ...), y (b,))`` with the checks of :func:`_pair`."""
    xs, ys = [], []
    for item in items:
        x, y = _pair(item, what)
        xs.append(_as_input(x, what))
        ys.append(_labels(y, what))
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"{what} yields inputs of different shapes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                         "give it a transform that makes them one shape (e.g. torchvision.transforms.Resize)")
    return torch.stack(xs), np.asarray(ys, dtype=np.int64)


def _fast_labels(ds: Any, what: str) -> Optional[np.ndarray]:
    """All labels of a dataset without reading its inputs, where it keeps them (else None)."""
    if isinstance(ds, TensorDataset):
        if len(ds.tensors) < 2:
            raise ValueError(f"{what} is a TensorDataset of {len(ds.tensors)} tensor(s); make it TensorDataset(x, y)")
        return _labels(ds.tensors[1], what, len(ds), kept=True)
    if isinstance(ds, Subset):
        parent = _fast_labels(ds.dataset, what)
        return None if parent is None else parent[np.asarray(list(ds.indices), dtype=np.int64)]
    targets = getattr(ds, "targets", None)
    if targets is not None and hasattr(ds, "__len__"):
        try:
            return _labels(targets if torch.is_tensor(targets) else np.asarray(targets), f"{what}.targets", len(ds),
                           kept=True)
        except (TypeError, ValueError):
            return None  # targets of another kind: read the labels sample by sample (and check them there)
    return None


class _Data:
    """The evaluation samples taken from a caller's Dataset / DataLoader / (x, y) arrays.

    ``index`` (N,): dataset indices (a Dataset) or positions in the loader's order (a DataLoader);
    ``labels`` (N,) int64; ``input_shape``: the shape of one input; ``record``: what was used (for
    the store); :meth:`batches` yields ``(row, x (b, ...), y (b,))`` in row order."""

    def __init__(self, data: Any, samples: Union[None, int, Sequence[int]], batch_size: int,
                 record: Optional[Dict[str, Any]] = None) -> None:
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(
                torch.is_tensor(a) or isinstance(a, np.ndarray) for a in data):
            x = _as_input(data[0], "data")
            if len(x) != len(data[1]):
                raise ValueError(f"data=(x, y): x has {len(x)} rows but y has {len(data[1])} labels")
            y = torch.as_tensor(_labels(data[1], "data=(x, y)", len(x), kept=True))
            data = TensorDataset(x, y)
            record = {**(record or {}), "arrays": True}
        self.is_loader = isinstance(data, DataLoader)
        ds = data.dataset if self.is_loader else data
        if not self.is_loader and not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            hint = "; wrap an IterableDataset in a DataLoader" if isinstance(data, IterableDataset) else ""
            raise TypeError(f"data must be a torch Dataset (with __len__ and __getitem__), a DataLoader or a pair of "
                            f"arrays (x, y), not {type(data).__name__}{hint}")
        self.data = data
        self.what = f"data ({type(data).__name__})"
        self.batch_size = int(batch_size)
        self.record = {"class": f"{type(ds).__module__}.{type(ds).__qualname__}",
                       "length": len(ds) if hasattr(ds, "__len__") else None, "loader": self.is_loader,
                       **(record or {})}
        for attr in ("root", "classes"):
            value = getattr(ds, attr, None)
            if isinstance(value, (str, Path)) or (isinstance(value, list) and all(isinstance(c, str) for c in value)):
                self.record[attr] = str(value) if isinstance(value, (str, Path)) else list(value)
        if self.is_loader:
            self._init_loader(data, samples)
        else:
            self._init_dataset(data, samples)
        if len(self.index) < MIN_SAMPLES:
            raise ValueError(f"{self.what} gives {len(self.index)} samples; at least {MIN_SAMPLES} are needed (no "
                             "dependence value or chance level exists below that)")

    def _init_dataset(self, ds: Any, samples: Union[None, int, Sequence[int]]) -> None:
        if len(ds) == 0:
            raise ValueError(f"{self.what} is empty")
        first = ds[0]
        x0, _ = _pair(first, self.what)
        self.input_shape = tuple(_as_input(x0, self.what).shape)
        labels = _fast_labels(ds, self.what)
        if labels is None:  # read every sample once for its label (inputs are decoded: slow for images)
            labels = np.asarray([_labels(_pair(ds[i], self.what)[1], self.what) for i in range(len(ds))],
                                dtype=np.int64)
        self.all_labels = labels
        self.index = select_samples(labels, samples)
        if samples is None or isinstance(samples, (int, np.integer)):  # chosen indices keep the caller's order
            self.index = self.index[class_interleaved(labels[self.index])]
        self.labels = labels[self.index]
        if samples is None or len(self.index) == len(ds) and not isinstance(samples, (list, tuple, np.ndarray)):
            self.record["selection"] = "all"
        elif isinstance(samples, (int, np.integer)):
            self.record["selection"] = "stratified subset"
        else:
            self.record["selection"] = "chosen indices"

    def _init_loader(self, loader: DataLoader, samples: Union[None, int, Sequence[int]]) -> None:
        if isinstance(loader.sampler, _RANDOM_SAMPLERS):
            raise ValueError(f"data is a DataLoader with a random order ({type(loader.sampler).__name__}, e.g. "
                             "shuffle=True): every pass would give other samples in other rows. Pass shuffle=False, "
                             "or pass its Dataset (samples=N then picks a stratified subset)")
        if samples is not None and not (isinstance(samples, (int, np.integer)) and not isinstance(samples, bool)):
            raise TypeError("with a DataLoader, samples must be None (all it yields) or N (the first N it yields, in "
                            "its order); to pick samples by index pass its Dataset instead")
        limit = None if samples is None else int(samples)
        if limit is not None and limit < MIN_SAMPLES:
            raise ValueError(f"samples must be at least {MIN_SAMPLES}, got {limit}")
        self.record.update(loader_class=f"{type(loader).__module__}.{type(loader).__qualname__}",
                           loader_batch_size=loader.batch_size,
                           selection="first N in loader order" if limit else "all")
        labels = None
        if isinstance(loader.sampler, SequentialSampler) and loader.batch_sampler is not None and \
                type(loader.batch_sampler) is BatchSampler:
            labels = _fast_labels(loader.dataset, self.what)
            if labels is not None and loader.drop_last and loader.batch_size:
                labels = labels[: len(labels) // loader.batch_size * loader.batch_size]
        self.input_shape: Tuple[int, ...] = ()
        if labels is None:  # a first pass over the loader for the labels
            parts: List[np.ndarray] = []
            for batch in loader:
                x, y = _pair(batch, self.what)
                xb = _as_input(x, self.what)
                parts.append(_labels(y, self.what, len(xb)))
                self.input_shape = self.input_shape or tuple(xb.shape[1:])
                if limit is not None and sum(map(len, parts)) >= limit:
                    break
            labels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if not self.input_shape:
            x0, _ = _pair(next(iter(loader)), self.what)
            self.input_shape = tuple(_as_input(x0, self.what).shape[1:])
        if limit is not None:
            if limit > len(labels):
                raise ValueError(f"samples={limit} is more than the {len(labels)} samples the DataLoader yields")
            labels = labels[:limit]
        self.labels = self.all_labels = labels
        self.index = np.arange(len(labels), dtype=np.int64)
        if len(np.unique(labels)) > 1 and np.all(np.diff(labels) >= 0):
            log.warning("%s yields its samples sorted by class; estimate's minibatch protocol cuts the stored "
                        "order into consecutive batches, which then hold one or two classes each. Pass the "
                        "Dataset instead (its samples are stored with the classes interleaved)", self.what)

    def n_batches(self, start: int = 0) -> Optional[int]:
        """How many batches :meth:`batches` yields from ``start`` (None: a loader of unknown length)."""
        if not self.is_loader:
            return -(-(len(self.index) - start) // self.batch_size)
        try:
            return min(len(self.data), -(-len(self.index) // (self.data.batch_size or 1)))
        except TypeError:
            return None

    def probe(self, k: int = 2) -> torch.Tensor:
        """The inputs of the first ``k`` rows (at most), for a trial forward pass."""
        if not self.is_loader:
            return _stack([self.data[int(i)] for i in self.index[:k]], self.what)[0]
        x, _ = _pair(next(iter(self.data)), self.what)
        return _as_input(x, self.what)[:k]

    def batches(self, start: int = 0) -> Iterator[Tuple[int, torch.Tensor, np.ndarray]]:
        """``(row, x, y)`` batches covering rows ``[start, N)`` (a DataLoader: rows from 0, in its order)."""
        n = len(self.index)
        if not self.is_loader and _plain_tensor_dataset(self.data):
            for row, xb, yb in _tensor_batches(self.data, self.index, start, self.batch_size):
                yield row, _as_input(xb, self.what), _labels(yb, self.what, len(xb))
            return
        if not self.is_loader:
            rows = self.index[start:].tolist()
            loader = DataLoader(Subset(self.data, rows), batch_size=self.batch_size, shuffle=False,
                                collate_fn=lambda items: _stack(items, self.what))
            row = start
            for xb, yb in loader:
                yield row, xb, yb
                row += len(xb)
            return
        row = 0
        for batch in self.data:
            x, y = _pair(batch, self.what)
            xb = _as_input(x, self.what)
            yb = _labels(y, self.what, len(xb))
            if row + len(xb) > n:
                xb, yb = xb[: n - row], yb[: n - row]
            yield row, xb, yb
            row += len(xb)
            if row >= n:
                return
        if row < n:
            raise DataMismatchError(f"{self.what} yielded {row} samples in its second pass but {n} in its first; it "
                                    "must give the same samples each time it is iterated")


def _user_data(data: Any, dataset_factory: Union[str, Callable[..., Any], None], image_folder: Optional[PathLike],
               split: str, data_root: PathLike, samples: Union[None, int, Sequence[int]], batch_size: int
               ) -> Optional[_Data]:
    """The caller's data from ``data=``, ``dataset_factory=`` or ``image_folder=`` (at most one), or None."""
    given = [k for k, v in (("data", data), ("dataset_factory", dataset_factory), ("image_folder", image_folder))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"pass one source of data, not {' and '.join(given)}")
    if image_folder is not None:
        from infoplane.data import image_folder as _image_folder

        root = Path(image_folder)
        ds = _image_folder(root, split=split if (root / split).is_dir() else None)
        return _Data(ds, samples, batch_size, {"image_folder": str(root)})
    if dataset_factory is not None:
        from infoplane.data import resolve_dataset_factory

        obj = resolve_dataset_factory(dataset_factory, split=split, root=data_root)
        name = dataset_factory if isinstance(dataset_factory, str) else getattr(dataset_factory, "__qualname__", "")
        return _Data(obj, samples, batch_size, {"factory": str(name)})
    if data is None:
        return None
    if isinstance(data, (str, Path)):
        raise TypeError(f"data must be a Dataset, a DataLoader or (x, y) arrays, not the {type(data).__name__} "
                        f"{str(data)!r}; pass layers=, out= and the other options as keywords, and a folder of "
                        "images as image_folder=")
    return _Data(data, samples, batch_size)


# --------------------------------------------------------------------------------------------
# streaming one model state into the store
# --------------------------------------------------------------------------------------------

@dataclass
class _Options:
    """How rows are stored: storage dtype, NaN/inf policy, reduction, compression, chunk alignment."""

    dtype: str = "float32"
    allow_nonfinite: bool = False
    reduction: Reduction = field(default_factory=Reduction)
    reducer: Optional[Reducer] = None
    compression: str = "none"
    align: Optional[int] = None
    force: bool = False
    notify: Optional[Callable[[str], None]] = None

    def __post_init__(self) -> None:
        if self.reducer is None:
            self.reducer = Reducer(self.reduction)


#: written rows are flushed and counted in ``rows_done`` after about this many bytes, or seconds
FLUSH_BYTES = 32 << 20
FLUSH_SECONDS = 10.0
#: write to the store on one background thread, overlapping the next batch's forward pass
WRITE_IN_BACKGROUND = True
#: a batch whose stored rows are larger than this is written before the next batch is computed
#: (so that no more than one such batch is held besides the forward pass)
BACKGROUND_MAX_BYTES = 1 << 30


class _RowWriter:
    """Writes one checkpoint's rows, a batch at a time, and raises ``rows_done``.

    Each batch is handed over whole (its inputs and every layer); HDF5 is flushed and ``rows_done``
    raised to the end of the last whole batch every :data:`FLUSH_BYTES` / :data:`FLUSH_SECONDS`
    and at the end, always after the rows it counts were written, so it never claims a row that is
    not in the file. With ``threaded`` the writes run on one background thread while the next
    batch is computed (at most one batch waits or is being written); an error there is raised in
    the caller at its next hand-over."""

    def __init__(self, store: ActivationStore, cid: str, done: int, threaded: bool) -> None:
        import queue
        import threading

        self.store, self.cid = store, cid
        self.disk = self.written = int(done)
        self.pending, self.since = 0, time.monotonic()
        self.error: Optional[BaseException] = None
        self._queue: Any = None
        if threaded:
            self._queue = queue.SimpleQueue()
            self._slot = threading.Semaphore(1)
            self._thread = threading.Thread(target=self._run, name="infoplane-extract-writer", daemon=True)
            self._thread.start()

    def put(self, end: Optional[int], writes: List[Callable[[], int]]) -> None:
        """Hand over one batch: ``writes`` (each returns the bytes it wrote); ``end``: the row up to
        which every layer is then written (None: inputs only)."""
        if self._queue is None:
            self._apply(end, writes)
            return
        self._slot.acquire()
        if self.error is not None:
            self._slot.release()
            raise self.error
        self._queue.put((end, writes))

    def _apply(self, end: Optional[int], writes: List[Callable[[], int]]) -> None:
        for w in writes:
            self.pending += w()
        if end is not None:
            self.written = end
        if self.pending >= FLUSH_BYTES or time.monotonic() - self.since >= FLUSH_SECONDS:
            self._commit()

    def _commit(self) -> None:
        if self.written > self.disk:
            self.store.flush()  # the rows first, then the count that claims them
            self.store.set_rows_done(self.cid, self.written)
            self.disk = self.written
        self.pending, self.since = 0, time.monotonic()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self.error is None:
                    self._apply(*item)
            except BaseException as exc:  # handed to the caller at its next put / wait
                self.error = exc
            finally:
                self._slot.release()

    def wait(self) -> None:
        """Until the batch handed over last is written; raises an error of the writer."""
        if self._queue is not None:
            self._slot.acquire()
            self._slot.release()
        if self.error is not None:
            raise self.error

    def _stop(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def finish(self) -> None:
        """Write what is left, flush, raise ``rows_done`` to the last row; stop the thread."""
        try:
            self.wait()
            self._commit()
        finally:
            self._stop()

    def abort(self) -> None:
        """After an error or an interruption: keep the whole batches written so far (flush and
        raise ``rows_done`` to them, where the group still exists); stop the thread."""
        try:
            if self._queue is not None:
                self._slot.acquire()
                self._slot.release()
            if self.written > self.disk and self.cid in self.store.checkpoints(include_incomplete=True):
                self._commit()
        except Exception:  # pragma: no cover - never hide the original error
            pass
        finally:
            self._stop()


def _stream(store: ActivationStore, cid: str, model: nn.Module, names: List[str], batches: Any, done: int,
            write_inputs: bool, verify: Optional[_Data], device: torch.device, opts: _Options,
            source: str, state_dict: Any, progress: bool, total: Optional[int] = None,
            discard_empty: bool = False) -> None:
    """Run ``model`` over ``batches`` (``(row, x, y)``) and write the layers' rows from ``done`` on.

    ``verify``: the caller's data; its labels are checked against the rows' labels and, when the
    store already holds the inputs, its inputs against the stored ones (the same samples in the same
    rows, whatever produced them). On a :class:`DataMismatchError` the checkpoint group this call
    began is removed (its rows came from other data); with ``discard_empty`` so is a group left
    without a row by any error, so that a failed first attempt does not pin the store's samples. An
    interruption (Ctrl-C) keeps the group for the next call to continue."""
    try:
        _stream_rows(store, cid, model, names, batches, done, write_inputs, verify, device, opts, source,
                     state_dict, progress, total)
    except Exception as exc:
        try:
            if cid in store.checkpoints(include_incomplete=True) and cid not in store.checkpoints():
                rows = int(store.checkpoint_attrs(cid).get("rows_done", 0))
                if (done == 0 and isinstance(exc, DataMismatchError)) or (discard_empty and rows == 0):
                    store.discard_checkpoint(cid)
        except Exception:  # pragma: no cover - never hide the original error
            pass
        raise


def _floating_dtype(model: nn.Module) -> Optional[torch.dtype]:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _stream_rows(store: ActivationStore, cid: str, model: nn.Module, names: List[str], batches: Any, done: int,
                 write_inputs: bool, verify: Optional[_Data], device: torch.device, opts: _Options, source: str,
                 state_dict: Any, progress: bool, total: Optional[int]) -> None:
    """The streaming loop. Hooks keep each layer's output without a copy (``capture(copy="auto")``:
    a batch whose kept output an in-place operation changed is run again with that output cloned),
    reduce it and cast it to the storage dtype on the model's device; :class:`_RowWriter` writes
    the batch (chunks aligned with the batch size) while the next one is computed, and raises
    ``rows_done`` only over rows in the file. On an error or an interruption the rows of every
    whole batch written are kept."""
    from tqdm.auto import tqdm

    # floating inputs in the model's floating dtype (numpy data often arrives as float64)
    want = _floating_dtype(model)
    tdt = torch.float16 if opts.dtype == "float16" else torch.float32
    reducer = opts.reducer
    transform = reducer if reducer is not None and reducer.active else None
    layer_attrs: Dict[str, Dict[str, Any]] = {}
    expected: Optional[List[str]] = None
    writer = _RowWriter(store, cid, done, threaded=WRITE_IN_BACKGROUND)

    def inputs_write(row: int, xs: np.ndarray) -> Callable[[], int]:
        def run() -> int:
            store.write_inputs(row, xs)
            return xs.nbytes
        return run

    def layer_write(lname: str, start: int, arr: np.ndarray, order: int, bad: int) -> Callable[[], int]:
        path_, call = split_call_name(lname)
        attrs = layer_attrs[lname]

        def run() -> int:
            store.write_layer_rows(cid, lname, start, arr, dtype=opts.dtype, module_path=path_, call_index=call,
                                   order=order, row_align=opts.align, compression=opts.compression,
                                   nonfinite=bad, attrs=attrs)
            return arr.nbytes
        return run

    try:
        with torch.no_grad(), capture(model, names, copy="auto", transform=transform) as acts:
            bar = tqdm(batches, desc=f"extract {cid}", unit="batch", leave=False, total=total,
                       disable=None if progress else True)
            for row, xb, yb in bar:
                b = xb.shape[0]
                if verify is not None:
                    _check_rows(store, verify, row, xb, yb, write_inputs)
                writes: List[Callable[[], int]] = []
                if write_inputs:  # a copy: the model may change its input in place
                    writes.append(inputs_write(row, np.array(xb.detach().cpu().numpy())))
                if row + b <= done:
                    writer.put(None, writes)
                    continue
                xin = xb.to(device)
                xin = xin.to(want) if want is not None and xin.is_floating_point() else xin
                v_in = _version(xin)
                model(xin)
                while not acts.intact():  # an in-place op changed a kept output: again, cloning it
                    if _version(xin) != v_in:
                        raise RuntimeError(
                            f"{source}: an in-place operation changed the output of a chosen layer in rows {row}.."
                            f"{row + b - 1}, and the model also changes its input in place, so that batch cannot be "
                            "run again to store the layer's own values. Choose layers whose outputs are not "
                            "changed in place (--layers), or make those operations out of place")
                    model(xin)
                if not acts:
                    raise ValueError(f"none of the layers {names} ran in the forward pass of {source}")
                if expected is None:
                    expected = list(acts)
                elif list(acts) != expected:
                    raise ValueError(f"{source}: the layers that ran differ between batches ({expected} in the first, "
                                     f"{list(acts)} at rows {row}..{row + b - 1}); a store needs every layer for "
                                     "every sample, so choose layers that run on every input with --layers")
                s = max(done - row, 0)
                nbytes = 0
                for order, (lname, z) in enumerate(acts.items()):
                    zs = z[s:] if s else z
                    stored = zs if zs.dtype == tdt else zs.to(tdt)
                    bad = 0
                    # one sum tells whether any value is NaN/inf (a float32 sum overflows only past 3e38,
                    # and then the exact count below finds nothing): far cheaper than isfinite per value
                    if not bool(torch.isfinite(stored.sum(dtype=torch.float32))):
                        bad = int((~torch.isfinite(stored.reshape(stored.shape[0], -1))).any(dim=1).sum())
                        if bad and not opts.allow_nonfinite:
                            writer.abort()
                            store.discard_checkpoint(cid)
                            raise NonFiniteActivationError(_nonfinite_message(
                                source, lname, bad, row + s, zs.float(), opts.dtype, state_dict))
                        if bad:
                            log.warning("%s, layer %s: %d row(s) with NaN/inf stored (allow_nonfinite); "
                                        "estimate marks the layer", source, lname, bad)
                    arr = stored.cpu().numpy()
                    if not arr.flags.c_contiguous:
                        arr = np.ascontiguousarray(arr)
                    if lname not in layer_attrs:
                        layer_attrs[lname] = _layer_attrs(reducer, lname)
                    writes.append(layer_write(lname, row + s, arr, order, bad))
                    nbytes += arr.nbytes
                writer.put(row + b, writes)
                if nbytes > BACKGROUND_MAX_BYTES:
                    writer.wait()
        writer.finish()
    except BaseException:
        writer.abort()
        raise


def _layer_attrs(reducer: Optional[Reducer], name: str) -> Dict[str, Any]:
    """Attributes of a new layer dataset: the reduction record and the module's own row shape."""
    if reducer is None or not reducer.active:
        return {}
    plan = reducer.for_layer(name)
    return {"reduction": plan.record(), "original_shape": np.asarray(plan.in_shape, dtype=np.int64)}


def _probe_shapes(model: nn.Module, names: List[str], inputs: Callable[[int], torch.Tensor], batch_size: int,
                  device: torch.device, opts: _Options, source: str) -> Dict[str, Tuple[int, ...]]:
    """Stored row shape of every layer (after the reduction), from a trial forward pass on the first
    two samples (``inputs(k)``: the inputs of the first k rows), or on a whole first batch when the
    model does not take two. Plans the reduction of every layer, so that a reduction that cannot
    apply fails here, before anything is written."""
    want = _floating_dtype(model)
    reducer = opts.reducer
    transform = reducer if reducer is not None and reducer.active else None

    def run(k: int) -> Dict[str, Tuple[int, ...]]:
        xin = inputs(k).to(device)
        xin = xin.to(want) if want is not None and xin.is_floating_point() else xin
        with torch.no_grad(), capture(model, names, transform=transform) as acts:
            model(xin)
            return {name: tuple(int(d) for d in z.shape[1:]) for name, z in acts.items()}

    try:
        shapes = run(2)
    except ReductionError:
        raise
    except Exception:
        if batch_size <= 2:
            raise
        shapes = run(batch_size)  # e.g. a model that takes whole batches only
    if not shapes:
        raise ValueError(f"none of the layers {names} ran in the forward pass of {source}")
    return shapes


# --------------------------------------------------------------------------------------------
# the size of a store before it is written
# --------------------------------------------------------------------------------------------

class DiskSpaceError(OSError):
    """The store would not fit on the disk it is written to (see :class:`SizeEstimate`)."""


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


@dataclass
class SizeEstimate:
    """What an extraction will write: ``layer_bytes`` per sample of each layer (after the reduction,
    in the storage dtype) x ``n_samples`` x ``checkpoints``, plus ``input_bytes`` (the inputs, when
    the store does not hold them yet); uncompressed. ``free_bytes``: free space where it goes."""

    out: str
    layer_bytes: Dict[str, int]
    n_samples: int
    checkpoints: int
    input_bytes: int
    free_bytes: Optional[int]
    dtype: str = "float32"
    reduction: str = "none"
    compression: str = "none"

    @property
    def sample_bytes(self) -> int:
        """Bytes per sample and checkpoint, all layers."""
        return int(sum(self.layer_bytes.values()))

    @property
    def total_bytes(self) -> int:
        return self.sample_bytes * self.n_samples * self.checkpoints + self.input_bytes

    def detail(self) -> str:
        """How the total comes about: checkpoints x samples x bytes per sample (+ inputs)."""
        parts = [f"{self.checkpoints} checkpoint(s) x {self.n_samples} samples x {_human(self.sample_bytes)} per "
                 f"sample ({len(self.layer_bytes)} layers, {self.dtype}, --reduce {self.reduction})"]
        if self.input_bytes:
            parts.append(f"inputs {_human(self.input_bytes)}")
        return " + ".join(parts)

    def line(self) -> str:
        """One line: the total, how it comes about and the free space."""
        comp = "" if self.compression == "none" else f" before {self.compression} compression"
        free = "" if self.free_bytes is None else f"; {_human(self.free_bytes)} free there"
        return f"about {_human(self.total_bytes)} to write to {self.out}{comp}: {self.detail()}{free}"

    def largest(self, k: int = 3) -> str:
        top = sorted(self.layer_bytes.items(), key=lambda kv: -kv[1])[:k]
        return ", ".join(f"{n} {_human(v)}" for n, v in top)


def _free_bytes(out: Path) -> Optional[int]:
    where = out.resolve().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return int(shutil.disk_usage(where).free)
    except OSError:
        return None


def _size_check(out: Path, shapes: Dict[str, Tuple[int, ...]], n_samples: int, checkpoints: int,
                input_bytes: int, opts: _Options) -> SizeEstimate:
    """Log the size estimate (and pass its line to ``opts.notify``); a :class:`DiskSpaceError`
    when it exceeds the free disk space at ``out`` and ``opts.force`` is off."""
    item = 2 if opts.dtype == "float16" else 4
    est = SizeEstimate(out=str(out), layer_bytes={n: int(math.prod(sh)) * item for n, sh in shapes.items()},
                       n_samples=int(n_samples), checkpoints=int(checkpoints), input_bytes=int(input_bytes),
                       free_bytes=_free_bytes(out), dtype=opts.dtype, reduction=opts.reduction.spec,
                       compression=opts.compression)
    line = est.line()
    log.info("extract: %s", line)
    if opts.notify is not None:
        opts.notify(line)
    if est.free_bytes is not None and est.total_bytes > est.free_bytes and not opts.force:
        raise DiskSpaceError(
            f"the store would need about {_human(est.total_bytes)} ({est.detail()}; "
            f"largest layers: {est.largest()}) but only {_human(est.free_bytes)} is free at {out.resolve().parent}. "
            "Shrink it with --reduce avgpool, --reduce flatten-max:D or --reduce random-projection:D, --dtype "
            "float16, --compression lzf or gzip, fewer --layers or --samples; or pass --force to extract anyway "
            "(library: reduce=, dtype=, compression=, layers=, samples=, force=True)")
    return est


def _check_labels(store: ActivationStore, data: _Data) -> None:
    if not np.array_equal(store.labels(), data.labels):
        raise DataMismatchError(f"{str(store.path)!r} holds other labels for its samples than {data.what} gives: it "
                                "was written for other data; pass the same data, or write to a new out= file")


def _check_rows(store: ActivationStore, data: _Data, row: int, xb: torch.Tensor, yb: np.ndarray,
                writing_inputs: bool) -> None:
    want = data.labels[row: row + len(yb)]
    if not np.array_equal(np.asarray(yb), want):
        raise DataMismatchError(f"{data.what} gave other labels for rows {row}..{row + len(yb) - 1} than before: it "
                                "does not give the same samples in the same order each time (a shuffling sampler, "
                                "random transforms or changing data); make it deterministic")
    if not writing_inputs:
        stored = store.inputs(slice(row, row + len(yb)))
        x = xb.detach().cpu().numpy().astype(stored.dtype, copy=False)
        if x.shape != stored.shape or not np.allclose(x, stored, rtol=1e-5, atol=1e-6, equal_nan=True):
            raise DataMismatchError(f"{str(store.path)!r} holds other inputs in rows {row}..{row + len(yb) - 1} than "
                                    f"{data.what} gives: the store was written for other data (or the data has "
                                    "random transforms). Pass the same data as before, or write to a new out= file")


# --------------------------------------------------------------------------------------------
# the two forms of extract
# --------------------------------------------------------------------------------------------

def extract(source: Union[nn.Module, PathLike, Sequence[PathLike]], data: Optional[DataLike] = None,
            layers: LayerSpec = "all", out: PathLike = "acts.h5", split: str = "test",
            samples: Union[None, int, Sequence[int]] = None, batch_size: int = 256, dtype: str = "float32",
            data_root: PathLike = "data", device: Union[str, torch.device, None] = None,
            model_factory: Optional[str] = None, progress: bool = True, command: Optional[str] = None,
            allow_nonfinite: bool = False, *, epoch: Optional[int] = None, name: Optional[str] = None,
            dataset_factory: Union[str, Callable[..., Any], None] = None,
            image_folder: Optional[PathLike] = None, reduce: Union[str, Reduction, None] = "none",
            reduce_seed: int = 0, compression: str = "none", force: bool = False,
            notify: Optional[Callable[[str], None]] = None) -> Path:
    """Extract activations of ``layers`` into the store ``out``: of checkpoints, or of a model object.

    **Checkpoints** (``source``: one ``.pt`` file of format ``infoplane.checkpoint/1`` or several of
    the same model): each is rebuilt as the function its regime trained
    (:meth:`Checkpoint.build_inference_model`: ContSup context paths, forward-forward normalisation
    and label channel, ...; a model that is not registered needs ``model_factory="pkg.mod:fn"``)
    and run over the ``split`` of the dataset the checkpoint names, or over your data when
    ``data`` / ``dataset_factory`` / ``image_folder`` is given. Each checkpoint group records that
    ``inference`` record, the ``prediction_layer`` (``out``, or ``goodness`` / ``linear_eval`` for
    forward-forward / contrastive E2E, stored when selected by name) and ``metrics_samples``
    (``same`` when the recorded accuracy was computed on exactly these samples). Its id is the
    file's stem; a checkpoint already complete in the store (same sha256) is skipped.

    **A model** (``source``: any ``torch.nn.Module``, e.g. ``torchvision.models.resnet18()``), with
    ``data`` (or ``dataset_factory`` / ``image_folder``): its current weights are run as they are
    (put in ``eval()`` for the pass, its training mode restored afterwards) and stored as one
    checkpoint with id ``name``, else ``epoch_{epoch:04d}`` when ``epoch`` is given, else
    ``model_0000``. Call again with another ``epoch=`` (or ``name=``) to add further states of the
    same architecture to the store; the same id with the same weights is skipped, with other weights
    it is a :class:`StoreError` (nothing is overwritten). The store's model record is the class
    name with the parameter count and a digest of the parameter names and shapes, so another
    architecture is refused; the checkpoint's ``regime`` and ``run`` are the class name.

    data: a ``torch.utils.data.Dataset`` or ``DataLoader`` yielding ``(x, y)`` (more elements are
    ignored) with ``x`` a tensor or numpy array and ``y`` an integer class label, or a pair of
    arrays / tensors ``(x (N, ...), y (N,))``. Non-integer labels are a ValueError naming what was
    yielded. Floating inputs are cast to the model's floating dtype (numpy float64 data to float32)
    and stored as float32. A DataLoader is used in its own order and batches (``batch_size`` does not apply) and
    must not shuffle; it is iterated twice (labels, then activations) unless its dataset keeps its
    labels (``TensorDataset``, ``.targets``). dataset_factory: ``"pkg.mod:fn"`` or a callable
    building the data (:func:`infoplane.data.resolve_dataset_factory`; called with ``split`` and
    ``root=data_root`` where it accepts them). image_folder: a folder ``ROOT/<class>/<image>``
    (:func:`infoplane.data.image_folder`; ``ROOT/<split>/<class>/<image>`` when ``ROOT/<split>``
    exists). The store's dataset record and provenance say what was used (class, length, DataLoader
    or not, folder, factory). Data that does not match the samples a store already holds (other
    labels, inputs or order) is a :class:`DataMismatchError`.

    layers: ``"all"`` (a LayeredNet's top-level layers, else every leaf module), names, or glob
    patterns (see ``infoplane.hooks``; e.g. ``"layer1,layer4"`` for a torchvision ResNet).
    samples: None (all), N (a stratified seeded subset; with a DataLoader: the first N it yields)
    or explicit dataset indices. Rows of the store: a checkpoint's named dataset in index order;
    your Dataset with the classes interleaved (:func:`class_interleaved`, so that every minibatch
    of ``estimate`` is a stratified sample; explicit indices keep their order); a DataLoader in its
    own order (``index`` = position; a class-sorted loader is warned about). dtype: ``float32``
    or ``float16`` storage. device: where the forward pass runs (None: ``cpu`` for checkpoints,
    the model's own device for a model).
    allow_nonfinite: store NaN/inf activations (the layer's ``nonfinite_rows`` attribute counts
    them) instead of raising :class:`NonFiniteActivationError`, which names the checkpoint, layer
    and rows and keeps nothing of that checkpoint.

    reduce: what is kept of each layer (:mod:`infoplane.reduce`): ``"none"``, ``"avgpool"`` (a
    ``(C, H, W)`` map -> its ``C`` spatial means), ``"flatten-max:D"`` (layers of at most ``D``
    values as they are, larger maps adaptive-average-pooled to a grid of at most ``D`` values) or
    ``"random-projection:D"`` (larger layers -> ``D`` values by a seeded Gaussian projection,
    ``reduce_seed``, the same matrix for every checkpoint). A store keeps one reduction: appending
    with another is a :class:`StoreError`. compression: ``"none"``, ``"lzf"`` or ``"gzip"`` (level
    4), with the byte-shuffle filter; recorded per checkpoint. Before the first row is written, the
    size of what will be written (bytes per sample of each layer after the reduction x samples x
    checkpoints still to extract, plus the inputs) is logged (INFO) and passed to ``notify`` as one
    line; when it exceeds the free disk space at ``out`` it is a :class:`DiskSpaceError` naming the
    options that shrink it, unless ``force``. Returns the store path.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    reduction = parse_reduction(reduce, reduce_seed)
    compression_options(compression)
    opts = _Options(dtype=dtype, allow_nonfinite=bool(allow_nonfinite), reduction=reduction,
                    compression=str(compression), align=int(batch_size), force=bool(force), notify=notify)
    if isinstance(source, nn.Module):
        if model_factory is not None:
            raise ValueError("model_factory rebuilds the model of a checkpoint file; with a model object it has "
                             "nothing to do (leave it out)")
        user = _user_data(data, dataset_factory, image_folder, split, data_root, samples, int(batch_size))
        if user is None:
            raise TypeError("a model needs data: pass data= a Dataset or DataLoader yielding (x, y), or (x, y) arrays; "
                            "or dataset_factory= / image_folder=")
        if user.is_loader:
            opts.align = getattr(user.data, "batch_size", None)
        return _extract_model(source, user, layers=layers, out=Path(out), split=split, opts=opts, device=device,
                              progress=progress, command=command, epoch=epoch, name=name)
    if isinstance(source, (Dataset, DataLoader)):
        raise TypeError(f"the first argument is the model or the checkpoints, the second the data; got a "
                        f"{type(source).__name__} first")
    if epoch is not None or name is not None:
        raise ValueError("epoch= and name= label the state of a model object; checkpoint files carry their own "
                         "epoch and are stored under their file name")
    if device is not None:  # a bad --device is reported before any file is read
        from infoplane.device import resolve_device

        resolve_device(device)
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        raise ValueError("no checkpoints given")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    user = _user_data(data, dataset_factory, image_folder, split, data_root, samples, int(batch_size))
    if user is not None and user.is_loader:
        opts.align = getattr(user.data, "batch_size", None)
    return _extract_checkpoints(paths, user, layers=layers, out=Path(out), split=split, samples=samples,
                                batch_size=int(batch_size), opts=opts, data_root=data_root,
                                device=device if device is not None else "cpu", model_factory=model_factory,
                                progress=progress, command=command)


def _extract_checkpoints(paths: List[Path], user: Optional[_Data], *, layers: LayerSpec, out: Path, split: str,
                         samples: Union[None, int, Sequence[int]], batch_size: int, opts: _Options,
                         data_root: PathLike, device: Union[str, torch.device], model_factory: Optional[str],
                         progress: bool, command: Optional[str]) -> Path:
    from tqdm.auto import tqdm

    from infoplane.checkpoint import load_checkpoint
    from infoplane.data import dataset_labels, list_datasets, load_dataset
    from infoplane.device import resolve_device

    device = resolve_device(device)
    store: Optional[ActivationStore] = None
    created = False
    checked = False
    datasets: Dict[str, Any] = {}
    dtype = opts.dtype
    try:
        for i_ck, ck_path in enumerate(tqdm(paths, desc="checkpoints", unit="ckpt",
                                            disable=None if progress else True)):
            ck = load_checkpoint(ck_path)
            ds_meta = dict(ck.dataset or {})
            ds_name = ds_meta.get("name")
            if not ds_name:
                raise ValueError(f"checkpoint {str(ck_path)!r} does not name its dataset; cannot extract")
            if user is not None:
                nc = ds_meta.get("num_classes")
                if isinstance(nc, int) and len(user.labels) and int(user.labels.max()) >= nc:
                    raise ValueError(f"{user.what} has the label {int(user.labels.max())} but the checkpoint "
                                     f"{str(ck_path)!r} was trained on {nc} classes (0..{nc - 1})")
                ds_meta["data"] = user.record
                labels, idx = user.all_labels, user.index
            else:
                if ds_name not in datasets:
                    if _canonical_or_none(ds_name) is None:
                        raise ValueError(f"checkpoint {str(ck_path)!r} names the dataset {ds_name!r}, which infoplane "
                                         f"does not know ({', '.join(list_datasets())}); pass your data: data= a "
                                         "Dataset or DataLoader of (x, y), dataset_factory='pkg.mod:fn' or "
                                         "image_folder=ROOT (CLI: --dataset-factory, --image-folder)")
                    ds = load_dataset(ds_name, split=split, root=data_root)
                    labels_ = dataset_labels(ds).numpy()
                    datasets[ds_name] = (ds, labels_, select_samples(labels_, samples))
                ds, labels, idx = datasets[ds_name]
            model_id = {"name": ck.model_name, "kwargs": ck.model_kwargs}
            # the function the regime trained (context paths, FF normalisation, ...), not the bare backbone
            model = ck.build_inference_model(model_factory, device=device)
            model.eval()
            with warnings.catch_warnings():  # build_inference_model has warned already
                warnings.simplefilter("ignore")
                spec = ck.inference_spec()
            names = resolve_layers(model, layers)

            if store is None:
                shape = user.input_shape if user is not None else tuple(torch.as_tensor(ds[int(idx[0])][0]).shape)
                created = not out.exists()
                store = _open_store(out, lambda: ActivationStore.create(
                    out, index=idx, labels=labels[idx] if user is None else user.labels, input_shape=shape,
                    model=model_id, dataset=ds_meta, split=split,
                    provenance={"command": command or " ".join(sys.argv), "versions": _versions(),
                                "created": datetime.now(timezone.utc).isoformat(), "checkpoints": [],
                                **({"data": user.record} if user is not None else {})},
                    reduction=opts.reduction.record(), row_align=opts.align, compression=opts.compression))
            if user is None and "data" in store.dataset:
                raise StoreError(f"{str(out)!r} holds samples of your own data ({store.dataset['data'].get('class')}); "
                                 "pass the same data= (or dataset_factory= / image_folder=) again, or write to a new "
                                 "out= file")
            store.check_compatible(model=model_id, index=idx, dataset_name=ds_name, split=split,
                                   reduction=opts.reduction.record())
            if user is not None:
                _check_labels(store, user)

            sha = ck.sha256
            cid = _checkpoint_id(store, ck_path, sha)
            if cid in store.checkpoints():
                continue  # already complete: nothing to do
            if not checked:  # the size of what is left to write, before the first row of it
                complete = set(store.checkpoints())
                todo = 1 + sum(1 for p in paths[i_ck + 1:] if p.stem not in complete)
                probe = user.probe if user is not None else (lambda k, ds=ds, idx=idx: torch.stack(
                    [torch.as_tensor(ds[int(i)][0]) for i in idx[:k]]))
                n_in = int(np.prod(store._f["samples/input"].shape[1:], dtype=np.int64)) * 4
                try:
                    shapes = _probe_shapes(model, names, probe, batch_size if user is None else user.batch_size,
                                           device, opts, str(ck_path))
                    _size_check(out, shapes, store.n_samples, todo,
                                0 if store.samples_complete else n_in * store.n_samples, opts)
                except DiskSpaceError:
                    if created:
                        store = _drop_new_store(store, out)
                    raise
                _record_fingerprints(store, opts, names)
                checked = True
            attrs = {"epoch": int(ck.epoch), "step": int(ck.step if ck.step is not None else -1),
                     "regime": dict(ck.regime or {}), "metrics": dict(ck.metrics or {}), "sha256": sha,
                     "model": ck.model_name, "run": ck_path.parent.name, "source": str(ck_path),
                     "layers_spec": layers if isinstance(layers, str) else ",".join(layers), "dtype": dtype,
                     "reduce": opts.reduction.spec, "compression": opts.compression,
                     "inference": spec, "prediction_layer": str(spec.get("prediction_layer", "out")),
                     "metrics_samples": "unknown" if user is not None else
                     metrics_samples(_recorded_sizes(ck), ck.seed, labels, idx, split)}
            done = store.begin_checkpoint(cid, attrs=attrs)
            write_inputs = not store.samples_complete
            start = 0 if write_inputs else done
            if user is not None:
                batches, total = user.batches(start), user.n_batches(start)
            else:
                batches, total = _dataset_batches(ds, idx, start, batch_size)
            _stream(store, cid, model, names, batches, done, write_inputs, user, device, opts,
                    str(ck_path), ck.state_dict, progress, total)
            if write_inputs:
                store.mark_inputs_complete()
            store.finish_checkpoint(cid)
            store.add_provenance(checkpoints=[{"id": cid, "path": str(ck_path), "sha256": sha}])
    finally:
        if store is not None:
            store.close()
    return out


def _open_store(out: Path, create: Callable[[], ActivationStore]) -> ActivationStore:
    """Open the store ``out`` for appending, or ``create()`` it. A store holding nothing (no
    checkpoint, complete or not, and inputs never fully written: what a failed first attempt leaves)
    is replaced, so that it does not pin the sample set of that attempt."""
    if not out.exists():
        return create()
    store = ActivationStore(out, "a")
    if store.samples_complete or store.checkpoints(include_incomplete=True):
        return store
    store.close()
    log.info("%s holds nothing (an earlier attempt failed before storing a row); creating it anew", out)
    out.unlink()
    return create()


def _drop_new_store(store: ActivationStore, out: Path) -> Optional[ActivationStore]:
    """Remove a store this call created when it still holds nothing (returns None), so that a
    refused start leaves no file behind; otherwise keep it open (returns it). (A start that fails
    otherwise leaves the empty store, which the next call replaces: see :func:`_open_store`.)"""
    try:
        if store.checkpoints(include_incomplete=True) or store.samples_complete:
            return store
        store.close()
        out.unlink()
        return None
    except Exception:  # pragma: no cover - never hide the original error
        return store


def _canonical_or_none(name: str) -> Optional[str]:
    """The registered dataset a name (or alias) stands for, or None."""
    from infoplane.data import _canonical

    try:
        return _canonical(name)
    except ValueError:
        return None


def _rows(loader: DataLoader, start: int) -> Iterator[Tuple[int, torch.Tensor, np.ndarray]]:
    row = start
    for xb, yb in loader:
        yield row, xb, np.asarray(yb)
        row += len(xb)


def _plain_tensor_dataset(ds: Any) -> bool:
    """A TensorDataset (or subclass such as infoplane's ArrayDataset) that indexes its tensors as is."""
    return isinstance(ds, TensorDataset) and type(ds).__getitem__ is TensorDataset.__getitem__ and \
        len(ds.tensors) >= 2


def _tensor_batches(ds: TensorDataset, rows: np.ndarray, start: int, batch_size: int
                    ) -> Iterator[Tuple[int, torch.Tensor, np.ndarray]]:
    """``(row, x, y)`` batches of an in-memory TensorDataset by batched indexing (what a DataLoader
    over it yields, without collating sample by sample)."""
    x, y = ds.tensors[0], ds.tensors[1]
    rows = np.asarray(rows)
    for lo in range(start, len(rows), batch_size):
        r = rows[lo:lo + batch_size]
        if len(r) and r[-1] - r[0] == len(r) - 1 and bool(np.all(np.diff(r) == 1)):   # a run: a view, no copy
            yield lo, x[int(r[0]):int(r[-1]) + 1], np.asarray(y[int(r[0]):int(r[-1]) + 1])
            continue
        sel = torch.as_tensor(r, dtype=torch.long)
        yield lo, x[sel], np.asarray(y[sel])


def _dataset_batches(ds: Any, idx: np.ndarray, start: int, batch_size: int) -> Tuple[Iterator, int]:
    """Batches of rows ``[start, N)`` of a registered dataset (in-memory ones by batched indexing)."""
    n_batches = -(-(len(idx) - start) // batch_size)
    if _plain_tensor_dataset(ds):
        return _tensor_batches(ds, np.asarray(idx), start, batch_size), n_batches
    loader = DataLoader(Subset(ds, idx[start:].tolist()), batch_size=batch_size, shuffle=False)
    return _rows(loader, start), len(loader)


def _record_fingerprints(store: ActivationStore, opts: _Options, names: List[str]) -> None:
    """Record the fingerprint of the projection matrix in the store (when a layer of ``names`` is
    projected), or refuse (StoreError) when the store recorded another matrix."""
    reducer = opts.reducer
    if reducer is None or reducer.matrix is None:
        return
    paths = set(names)
    if any(p.projection is not None and k.rsplit(":", 1)[0] in paths for k, p in reducer.plans.items()):
        store.set_reduction_fingerprints({"matrix": reducer.matrix.fingerprint()})


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _weights_digest(model: nn.Module) -> Tuple[str, str]:
    """(sha256 of the parameter and buffer values, a 16-hex digest of their names, shapes and dtypes)."""
    values, layout = hashlib.sha256(), hashlib.sha256()
    for key, t in model.state_dict().items():
        if not torch.is_tensor(t):
            continue
        entry = f"{key}:{tuple(t.shape)}:{t.dtype};".encode()
        layout.update(entry)
        values.update(entry)
        values.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return values.hexdigest(), layout.hexdigest()[:16]


def _state_id(epoch: Optional[int], name: Optional[str]) -> str:
    """The checkpoint id of a model object's state: ``name``, else ``epoch_NNNN``, else ``model_0000``."""
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or int(epoch) < 0):
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
    if name is not None:
        if not isinstance(name, str) or not name.strip() or "/" in name or name != name.strip() or name == ".":
            raise ValueError(f"name must be a non-empty string without '/' or surrounding spaces, got {name!r}")
        return name
    return f"epoch_{int(epoch):04d}" if epoch is not None else "model_0000"


def _extract_model(model: nn.Module, data: _Data, *, layers: LayerSpec, out: Path, split: str, opts: _Options,
                   device: Union[str, torch.device, None], progress: bool, command: Optional[str],
                   epoch: Optional[int], name: Optional[str]) -> Path:
    from infoplane.device import resolve_device

    cid = _state_id(epoch, name)
    cls = type(model)
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    names = resolve_layers(model, layers)
    sha, layout = _weights_digest(model)
    model_id = {"name": cls.__name__, "kwargs": {}, "class": qualname,
                "parameters": int(sum(p.numel() for p in model.parameters())), "structure": layout}
    ds = data.data.dataset if data.is_loader else data.data
    if data.record.get("classes"):
        n_classes = len(data.record["classes"])
    else:
        n_classes = int(data.all_labels.max()) + 1
    ds_meta = {"name": "arrays" if data.record.get("arrays") else type(ds).__name__, "num_classes": n_classes,
               "input_shape": list(data.input_shape), "data": data.record}
    summary = repr(model)
    summary = summary if len(summary) <= 4000 else summary[:4000] + f"... ({len(summary)} characters)"
    home = _model_device(model)
    run_on = resolve_device(device) if device is not None else home
    was_training = model.training
    store: Optional[ActivationStore] = None
    dtype = opts.dtype
    try:
        created = not out.exists()
        store = _open_store(out, lambda: ActivationStore.create(
            out, index=data.index, labels=data.labels, input_shape=data.input_shape, model=model_id,
            dataset=ds_meta, split=split,
            provenance={"command": command or f"infoplane.extract({cls.__name__}, {type(data.data).__name__})",
                        "versions": _versions(), "created": datetime.now(timezone.utc).isoformat(),
                        "checkpoints": [], "data": data.record, "model_class": qualname,
                        "model_summary": summary},
            reduction=opts.reduction.record(), row_align=opts.align, compression=opts.compression))
        store.check_compatible(model=model_id, index=data.index, dataset_name=ds_meta["name"], split=split,
                               reduction=opts.reduction.record())
        _check_labels(store, data)
        if cid in store.checkpoints():
            if store.checkpoint_attrs(cid).get("sha256") == sha:
                log.info("%s: checkpoint %s already holds these weights; nothing to do", out, cid)
                return out
            raise StoreError(f"{str(out)!r} already holds a checkpoint {cid!r} with other weights; nothing was "
                             "overwritten. Pass another epoch= or name= for this state of the model, or a new out=")
        attrs = {"epoch": int(epoch) if epoch is not None else 0, "step": -1, "regime": {"name": cls.__name__},
                 "metrics": {}, "sha256": sha, "model": cls.__name__, "run": cls.__name__,
                 "source": f"{qualname} object", "dtype": dtype, "metrics_samples": "unknown",
                 "layers_spec": layers if isinstance(layers, str) else ",".join(layers),
                 "reduce": opts.reduction.spec, "compression": opts.compression}
        if run_on != home:
            model.to(run_on)
        model.eval()
        n_in = int(np.prod(data.input_shape, dtype=np.int64)) * 4 * store.n_samples
        try:
            shapes = _probe_shapes(model, names, data.probe, data.batch_size, run_on, opts,
                                   f"{cls.__name__} ({cid})")
            _size_check(out, shapes, store.n_samples, 1, 0 if store.samples_complete else n_in, opts)
        except DiskSpaceError:
            if created:
                store = _drop_new_store(store, out)
            raise
        _record_fingerprints(store, opts, names)
        done = store.begin_checkpoint(cid, attrs=attrs)
        write_inputs = not store.samples_complete
        start = 0 if write_inputs else done
        _stream(store, cid, model, names, data.batches(start), done, write_inputs, data, run_on, opts,
                f"{cls.__name__} ({cid})", model.state_dict(), progress, data.n_batches(start), discard_empty=True)
        if write_inputs:
            store.mark_inputs_complete()
        store.finish_checkpoint(cid)
        store.add_provenance(checkpoints=[{"id": cid, "model": qualname, "sha256": sha,
                                           "epoch": attrs["epoch"]}])
    finally:
        model.train(was_training)
        if run_on != home:
            model.to(home)
        if store is not None:
            store.close()
    return out


__all__ = ["extract", "select_samples", "metrics_samples", "class_interleaved", "StoreError",
           "NonFiniteActivationError", "DataMismatchError", "DiskSpaceError", "SizeEstimate"]
