"""Run checkpoints (or a model object) over a fixed evaluation set and stream the chosen layers into an HDF5 store.

docs/formats_store.md flow: checkpoints -> ``extract`` (forward hooks) -> activations.h5. The model is
put in ``eval()`` mode and run under ``torch.no_grad()`` batch by batch; each batch's activations
are written straight to the store (never the whole dataset in memory). One store per run; calling
``extract`` again appends new checkpoints, skips those already complete (same sha256) and resumes
an interrupted one from its last written batch.

Two forms, one function (docs/notebook.md): ``extract(checkpoints, ...)`` rebuilds each checkpoint
file and runs it over the dataset it names (or over your data); ``extract(model, data, ...)`` runs
any ``torch.nn.Module`` as it is over a ``Dataset`` / ``DataLoader`` of ``(x, y)`` pairs, or over
``dataset_factory="pkg.mod:fn"`` / ``image_folder=ROOT``.
"""
from __future__ import annotations

import hashlib
import logging
import platform
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler,
                              Subset, SubsetRandomSampler, TensorDataset, WeightedRandomSampler)

from infoplane.estimators.protocol import MIN_SAMPLES
from infoplane.hooks import LayerSpec, capture, resolve_layers, split_call_name
from infoplane.store import ActivationStore, StoreError

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

    def batches(self, start: int = 0) -> Iterator[Tuple[int, torch.Tensor, np.ndarray]]:
        """``(row, x, y)`` batches covering rows ``[start, N)`` (a DataLoader: rows from 0, in its order)."""
        n = len(self.index)
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

def _stream(store: ActivationStore, cid: str, model: nn.Module, names: List[str], batches: Any, done: int,
            write_inputs: bool, verify: Optional[_Data], device: torch.device, dtype: str, allow_nonfinite: bool,
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
        _stream_rows(store, cid, model, names, batches, done, write_inputs, verify, device, dtype,
                     allow_nonfinite, source, state_dict, progress, total)
    except Exception as exc:
        try:
            if cid in store.checkpoints(include_incomplete=True) and cid not in store.checkpoints():
                rows = int(store.checkpoint_attrs(cid).get("rows_done", 0))
                if (done == 0 and isinstance(exc, DataMismatchError)) or (discard_empty and rows == 0):
                    store.discard_checkpoint(cid)
        except Exception:  # pragma: no cover - never hide the original error
            pass
        raise


def _stream_rows(store: ActivationStore, cid: str, model: nn.Module, names: List[str], batches: Any, done: int,
                 write_inputs: bool, verify: Optional[_Data], device: torch.device, dtype: str,
                 allow_nonfinite: bool, source: str, state_dict: Any, progress: bool, total: Optional[int]) -> None:
    from tqdm.auto import tqdm

    # floating inputs in the model's floating dtype (numpy data often arrives as float64)
    want = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    with torch.no_grad(), capture(model, names) as acts:
        bar = tqdm(batches, desc=f"extract {cid}", unit="batch", leave=False, total=total,
                   disable=None if progress else True)
        for row, xb, yb in bar:
            b = xb.shape[0]
            if verify is not None:
                _check_rows(store, verify, row, xb, yb, write_inputs)
            if write_inputs:
                store.write_inputs(row, xb.detach().cpu().numpy())
            if row + b > done:
                xin = xb.to(device)
                model(xin.to(want) if want is not None and xin.is_floating_point() else xin)
                if not acts:
                    raise ValueError(f"none of the layers {names} ran in the forward pass of {source}")
                for order, (lname, z) in enumerate(acts.items()):
                    path_, call = split_call_name(lname)
                    s = max(done - row, 0)
                    bad = store.write_layer_rows(cid, lname, row + s, z[s:].float().cpu().numpy(),
                                                 dtype=dtype, module_path=path_, call_index=call, order=order)
                    if bad and not allow_nonfinite:
                        store.discard_checkpoint(cid)
                        raise NonFiniteActivationError(_nonfinite_message(
                            source, lname, bad, row + s, z[s:], dtype, state_dict))
                    if bad:
                        log.warning("%s, layer %s: %d row(s) with NaN/inf stored (allow_nonfinite); "
                                    "estimate marks the layer", source, lname, bad)
                store.set_rows_done(cid, row + b)


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
            image_folder: Optional[PathLike] = None) -> Path:
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
    and rows and keeps nothing of that checkpoint. Returns the store path.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(source, nn.Module):
        if model_factory is not None:
            raise ValueError("model_factory rebuilds the model of a checkpoint file; with a model object it has "
                             "nothing to do (leave it out)")
        user = _user_data(data, dataset_factory, image_folder, split, data_root, samples, int(batch_size))
        if user is None:
            raise TypeError("a model needs data: pass data= a Dataset or DataLoader yielding (x, y), or (x, y) arrays; "
                            "or dataset_factory= / image_folder=")
        return _extract_model(source, user, layers=layers, out=Path(out), split=split, dtype=dtype, device=device,
                              progress=progress, command=command, allow_nonfinite=allow_nonfinite, epoch=epoch,
                              name=name)
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
    return _extract_checkpoints(paths, user, layers=layers, out=Path(out), split=split, samples=samples,
                                batch_size=int(batch_size), dtype=dtype, data_root=data_root,
                                device=device if device is not None else "cpu", model_factory=model_factory,
                                progress=progress, command=command, allow_nonfinite=allow_nonfinite)


def _extract_checkpoints(paths: List[Path], user: Optional[_Data], *, layers: LayerSpec, out: Path, split: str,
                         samples: Union[None, int, Sequence[int]], batch_size: int, dtype: str, data_root: PathLike,
                         device: Union[str, torch.device], model_factory: Optional[str], progress: bool,
                         command: Optional[str], allow_nonfinite: bool) -> Path:
    from tqdm.auto import tqdm

    from infoplane.checkpoint import load_checkpoint
    from infoplane.data import dataset_labels, list_datasets, load_dataset
    from infoplane.device import resolve_device

    device = resolve_device(device)
    store: Optional[ActivationStore] = None
    datasets: Dict[str, Any] = {}
    try:
        for ck_path in tqdm(paths, desc="checkpoints", unit="ckpt", disable=None if progress else True):
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
                store = _open_store(out, lambda: ActivationStore.create(
                    out, index=idx, labels=labels[idx] if user is None else user.labels, input_shape=shape,
                    model=model_id, dataset=ds_meta, split=split,
                    provenance={"command": command or " ".join(sys.argv), "versions": _versions(),
                                "created": datetime.now(timezone.utc).isoformat(), "checkpoints": [],
                                **({"data": user.record} if user is not None else {})}))
            if user is None and "data" in store.dataset:
                raise StoreError(f"{str(out)!r} holds samples of your own data ({store.dataset['data'].get('class')}); "
                                 "pass the same data= (or dataset_factory= / image_folder=) again, or write to a new "
                                 "out= file")
            store.check_compatible(model=model_id, index=idx, dataset_name=ds_name, split=split)
            if user is not None:
                _check_labels(store, user)

            sha = ck.sha256
            cid = _checkpoint_id(store, ck_path, sha)
            if cid in store.checkpoints():
                continue  # already complete: nothing to do
            attrs = {"epoch": int(ck.epoch), "step": int(ck.step if ck.step is not None else -1),
                     "regime": dict(ck.regime or {}), "metrics": dict(ck.metrics or {}), "sha256": sha,
                     "model": ck.model_name, "run": ck_path.parent.name, "source": str(ck_path),
                     "layers_spec": layers if isinstance(layers, str) else ",".join(layers), "dtype": dtype,
                     "inference": spec, "prediction_layer": str(spec.get("prediction_layer", "out")),
                     "metrics_samples": "unknown" if user is not None else
                     metrics_samples(_recorded_sizes(ck), ck.seed, labels, idx, split)}
            done = store.begin_checkpoint(cid, attrs=attrs)
            write_inputs = not store.samples_complete
            start = 0 if write_inputs else done
            if user is not None:
                batches, total = user.batches(start), user.n_batches(start)
            else:
                loader = DataLoader(Subset(ds, idx[start:].tolist()), batch_size=batch_size, shuffle=False)
                batches, total = _rows(loader, start), len(loader)
            _stream(store, cid, model, names, batches, done, write_inputs, user, device, dtype, allow_nonfinite,
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


def _extract_model(model: nn.Module, data: _Data, *, layers: LayerSpec, out: Path, split: str, dtype: str,
                   device: Union[str, torch.device, None], progress: bool, command: Optional[str],
                   allow_nonfinite: bool, epoch: Optional[int], name: Optional[str]) -> Path:
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
    try:
        store = _open_store(out, lambda: ActivationStore.create(
            out, index=data.index, labels=data.labels, input_shape=data.input_shape, model=model_id,
            dataset=ds_meta, split=split,
            provenance={"command": command or f"infoplane.extract({cls.__name__}, {type(data.data).__name__})",
                        "versions": _versions(), "created": datetime.now(timezone.utc).isoformat(),
                        "checkpoints": [], "data": data.record, "model_class": qualname,
                        "model_summary": summary}))
        store.check_compatible(model=model_id, index=data.index, dataset_name=ds_meta["name"], split=split)
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
                 "layers_spec": layers if isinstance(layers, str) else ",".join(layers)}
        done = store.begin_checkpoint(cid, attrs=attrs)
        write_inputs = not store.samples_complete
        if run_on != home:
            model.to(run_on)
        model.eval()
        start = 0 if write_inputs else done
        _stream(store, cid, model, names, data.batches(start), done, write_inputs, data, run_on, dtype,
                allow_nonfinite, f"{cls.__name__} ({cid})", model.state_dict(), progress, data.n_batches(start),
                discard_empty=True)
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
           "NonFiniteActivationError", "DataMismatchError"]
