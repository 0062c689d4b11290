"""The HDF5 activation store (docs/formats_store.md, "Activation store"; format ``infoplane.store/1``).

Layout::

    /                    attrs: format, provenance (JSON), model (JSON name+kwargs), dataset (JSON),
                                split, samples_complete, reduction (JSON; absent: none)
    /samples/index       (N,) int64   dataset indices, fixed for the whole file
    /samples/label       (N,) int64
    /samples/input       (N, ...)     inputs X as fed to the model (after normalisation)
    /checkpoints/<id>/   attrs: epoch, step, regime (JSON), metrics (JSON), sha256, model, run,
                                source, layers_spec, dtype, reduce, compression, rows_done, complete
      layers/<name>      (N, ...) float32|float16, chunked by whole rows (optionally lzf/gzip);
                         attrs: module_path, call_index, original_shape, order, reduction (JSON)

Writes are streamed batch by batch (rows ``[start, start+b)``); ``rows_done`` is raised only after
the rows it counts were written and flushed, and a checkpoint group is marked ``complete=True``
only after its last row is written. Readers ignore incomplete groups; writers continue them from
``rows_done`` (resume after an interruption).

Integrity: every dataset carries HDF5's Fletcher-32 checksum per chunk, verified on read; a damaged
block is a :class:`StoreError` naming the checkpoint and layer (stores written before checksums
were added are read without the check). A new store is built as ``<path>.partial`` and renamed, so a
file with the final name is never a half-created store. One writer at a time: a writer holds an
exclusive lock on ``<path>.lock`` (with its pid); a second writer is refused with that pid.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

FORMAT = "infoplane.store/1"
_CHUNK_BYTES = 1 << 20  # target ~1 MiB chunks made of whole rows
_PIECE_BYTES = 4 << 20  # larger writes go to HDF5 in pieces of whole chunks (h5py holds the GIL per call)

Rows = Union[None, slice, Sequence[int], np.ndarray]

#: ``compression=`` of new layer datasets: h5py filter options (the byte-shuffle filter goes with
#: either codec; Fletcher-32 checksums stay on in every case)
COMPRESSION = {"none": {}, "lzf": {"compression": "lzf", "shuffle": True},
               "gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True}}


def compression_options(name: Optional[str]) -> Dict[str, Any]:
    """h5py ``create_dataset`` options of a compression name: ``none``, ``lzf`` or ``gzip`` (level 4)."""
    key = "none" if name is None else str(name)
    if key not in COMPRESSION:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSION)} (--compression), not {name!r}")
    return dict(COMPRESSION[key])


class StoreError(ValueError):
    """A file that is not a readable infoplane activation store, or a refused append."""


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _acquire_lock(path: Path):
    """Exclusive, non-blocking lock on ``<path>.lock`` (released when the file object is closed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
        return None
    lp = _lock_path(path)
    fh = open(lp, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip() or "unknown"
        fh.close()
        raise StoreError(f"{str(path)!r} is in use by another process (pid {pid}) writing to it; wait for it "
                         f"to finish, or write to another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


#: HDF5 file-format versions of new stores: 1.10 and later object headers carry checksums, so
#: a damaged attribute or group (not only a damaged data chunk) is detected on read.
LIBVER = ("v110", "latest")


def _open_error(path: Path, exc: OSError) -> StoreError:
    msg = str(exc)
    if "truncated file" in msg.lower():
        return StoreError(f"{str(path)!r} is truncated ({msg.split('(')[-1].rstrip(')')}); it was cut short by a "
                          "copy or a full disk. Re-copy it, or delete it and run `infoplane extract` again")
    if "already open for write" in msg.lower():
        return StoreError(f"{str(path)!r} was left marked open by a writer that was killed before it closed the file "
                          f"(HDF5 consistency flag). Clear the flag with `h5clear -s {str(path)!r}` (Debian package "
                          "hdf5-tools) and re-run the same `infoplane extract` to resume it, or delete the file")
    if "unable to lock" in msg.lower():
        return StoreError(f"{str(path)!r} is in use by another process writing to it (HDF5 file lock); wait for "
                          "it to finish, or write to another --out")
    size = path.stat().st_size if path.exists() else 0
    if size < 2048:
        return StoreError(f"{str(path)!r} is not an HDF5 file ({size} bytes: probably a store whose "
                          f"creation was interrupted). Delete it (rm {str(path)!r}) and run `infoplane extract` again")
    return StoreError(f"{str(path)!r} is not an HDF5 file (or is corrupt): {exc}; "
                      "activation stores are written by `infoplane extract`")


def _h5py():
    import h5py

    return h5py


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _unjson(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _row_chunks(row_shape: Sequence[int], itemsize: int, n: int, align: Optional[int] = None) -> tuple:
    """Chunk shape of whole rows, about ``_CHUNK_BYTES`` at most. With ``align`` (the rows written
    per call, e.g. the batch size) a chunk holds a whole number of such writes, or, when one write
    is larger than a chunk, a divisor of it (where one at least a quarter of the size limit
    exists), so that aligned writes never cut a chunk that is already on disk. A dataset that fits
    in one chunk is one chunk."""
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    rows = int(max(1, min(n, _CHUNK_BYTES // row_bytes)))
    if align is not None and int(align) > 0 and rows < n:
        a = int(align)
        if a <= rows:
            rows = min(n, (rows // a) * a)
        else:
            best = max((c for c in range(1, rows + 1) if a % c == 0), default=1)
            if 4 * best >= rows:
                rows = best
    return (rows, *row_shape)


def _normalize_rows(rows: Rows, n: int):
    """Rows for h5py fancy indexing: slice as is; index arrays sorted-unique then re-ordered."""
    if rows is None:
        return slice(None), None
    if isinstance(rows, slice):
        return rows, None
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"row index out of range for a store of {n} samples")
    idx = np.where(idx < 0, idx + n, idx)
    uniq, inverse = np.unique(idx, return_inverse=True)
    return uniq, inverse


class ActivationStore:
    """Read (and, with ``mode="a"``, append to) an activation store.

    ``ActivationStore(path)`` opens an existing store read-only; use :meth:`create` for a new one.
    Usable as a context manager; :meth:`close` releases the file.
    """

    def __init__(self, path: Union[str, Path], mode: str = "r") -> None:
        h5py = _h5py()
        self.path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        if not self.path.exists():
            raise FileNotFoundError(f"activation store {str(self.path)!r} does not exist; "
                                    "create one with `infoplane extract`")
        self._lock = _acquire_lock(self.path) if mode == "a" else None
        try:
            self._f = h5py.File(self.path, mode, **({"libver": LIBVER} if mode == "a" else {}))
        except OSError as exc:
            self._release()
            raise _open_error(self.path, exc) from None
        try:
            fmt = self._f.attrs.get("format")
        except (OSError, KeyError, RuntimeError) as exc:  # the root object header itself is damaged
            self._f.close()
            self._release()
            raise StoreError(f"{str(self.path)!r} is damaged (HDF5 root unreadable: {exc}); re-create it with "
                             "`infoplane extract` into a new --out") from None
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT or "samples" not in self._f:
            self._f.close()
            self._release()
            raise StoreError(f"{str(self.path)!r} is not an infoplane activation store (format "
                             f"{fmt!r}, expected {FORMAT!r}); create one with `infoplane extract`")
        self.mode = mode
        self._handles: Dict[tuple, Any] = {}
        try:
            self._check_structure()
        except StoreError:
            self.close()
            raise

    def _check_structure(self) -> None:
        """Consistency checks on open: every group, attribute, shape and dtype the readers rely on,
        plus the (small) sample index and labels. Object headers carry checksums (``LIBVER``), so
        reading every attribute here detects damaged metadata. A damaged or hand-edited store is a
        :class:`StoreError` naming the object or field."""
        try:
            self._check_objects()
        except StoreError:
            raise
        except (OSError, KeyError, RuntimeError, AttributeError, ValueError, TypeError) as exc:
            raise StoreError(f"{str(self.path)!r} is damaged (HDF5 metadata unreadable: {exc}); re-create it with "
                             "`infoplane extract` into a new --out") from None

    def _check_objects(self) -> None:
        f, n_path = self._f, str(self.path)

        def damaged(what: str) -> StoreError:
            return StoreError(f"{n_path!r} is damaged: {what}; re-create it with `infoplane extract` into a new --out")

        def read_attrs(obj: Any, where: str, required: Sequence[str]) -> Dict[str, Any]:
            names = list(obj.attrs.keys())
            missing = [a for a in required if a not in names]
            if missing:
                raise damaged(f"{where} lacks the attribute(s) {missing}")
            return {a: obj.attrs[a] for a in names}  # h5py raises on a damaged attribute

        read_attrs(f, "the root", ("format", "model", "dataset", "provenance", "split", "samples_complete"))

        for name in ("samples/index", "samples/label", "samples/input", "checkpoints"):
            if name not in f:
                raise damaged(f"'{name}' is missing")
        idx, lab = f["samples/index"], f["samples/label"]
        if not hasattr(idx, "shape") or len(idx.shape) != 1 or idx.dtype.kind not in "iu":
            raise damaged("'samples/index' must be a 1-D integer dataset")
        n = int(idx.shape[0])
        if not hasattr(lab, "shape") or tuple(lab.shape) != (n,) or lab.dtype.kind not in "iu":
            raise damaged(f"'samples/label' must hold one integer label per sample, shape ({n},); "
                          f"found {getattr(lab, 'dtype', '?')} of shape {getattr(lab, 'shape', '?')}")
        if tuple(f["samples/input"].shape[:1]) != (n,):
            raise damaged(f"'samples/input' has {f['samples/input'].shape[0]} rows for {n} samples")
        index, labels = idx[()], lab[()]
        if n and np.unique(index).size != n:
            raise damaged(f"'samples/index' repeats {n - np.unique(index).size} sample(s); every sample must be "
                          "stored once")
        n_classes = _unjson(f.attrs.get("dataset", "{}"))
        n_classes = n_classes.get("num_classes") if isinstance(n_classes, dict) else None
        if n and (labels.min() < 0 or (isinstance(n_classes, int) and labels.max() >= n_classes)):
            raise damaged(f"'samples/label' holds labels in [{labels.min()}, {labels.max()}] but the dataset has "
                          f"{n_classes} classes (0..{(n_classes or 0) - 1})")
        for attr in ("model", "dataset", "provenance", "reduction"):
            raw = f.attrs.get(attr, "{}")
            val = _unjson(raw)
            if not isinstance(val, dict):
                raise damaged(f"the root attribute {attr!r} is not a JSON object ({str(raw)[:40]!r})")
        for cid in list(f["checkpoints"].keys()):
            g = f["checkpoints"].get(cid)
            if g is None or not hasattr(g, "attrs"):
                raise damaged(f"checkpoint group {cid!r} cannot be opened")
            attrs = read_attrs(g, f"checkpoint {cid!r}", ("epoch", "step", "rows_done", "complete"))
            for attr in ("epoch", "step", "rows_done"):
                try:
                    int(attrs[attr])
                except (TypeError, ValueError):
                    raise damaged(f"checkpoint {cid!r}: attribute {attr!r} is not an integer "
                                  f"({attrs[attr]!r})") from None
            if not bool(attrs["complete"]):
                continue
            if int(attrs["rows_done"]) != n:
                raise damaged(f"checkpoint {cid!r} is marked complete with {attrs['rows_done']} of {n} rows")
            if "layers" not in g or not len(g["layers"]):
                raise damaged(f"checkpoint {cid!r} is marked complete but holds no layers")
            for lname in list(g["layers"].keys()):
                ds = g["layers"].get(lname)
                if ds is None:
                    raise damaged(f"checkpoint {cid!r}, layer {lname!r} cannot be opened")
                read_attrs(ds, f"checkpoint {cid!r}, layer {lname!r}", ("order", "module_path"))
                if not hasattr(ds, "shape") or len(ds.shape) < 1 or int(ds.shape[0]) != n:
                    raise damaged(f"checkpoint {cid!r}, layer {lname!r} has shape {getattr(ds, 'shape', '?')}; "
                                  f"expected {n} rows (one per sample)")
                if ds.dtype not in (np.dtype("float32"), np.dtype("float16")):
                    raise damaged(f"checkpoint {cid!r}, layer {lname!r} has dtype {ds.dtype}; stores hold "
                                  "float32 or float16 activations")

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: Union[str, Path], *, index: Sequence[int], labels: Sequence[int],
               input_shape: Sequence[int], model: Mapping[str, Any], dataset: Mapping[str, Any],
               split: str, provenance: Optional[Mapping[str, Any]] = None,
               input_dtype: str = "float32", reduction: Optional[Mapping[str, Any]] = None,
               row_align: Optional[int] = None, compression: Optional[str] = None) -> "ActivationStore":
        """Create a new store with a fixed sample set; inputs are written later with
        :meth:`write_inputs` (streamed). Refuses to overwrite an existing file.

        reduction: the record of what every checkpoint's layers are reduced with (root attribute
        ``reduction``; see :meth:`check_compatible`). row_align: the rows of one input write (the
        batch size), to align the input chunks with (:func:`_row_chunks`). compression: ``none``,
        ``lzf`` or ``gzip`` for the stored inputs."""
        comp = compression_options(compression)
        h5py = _h5py()
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{str(path)!r} already exists; open it with ActivationStore(path, 'a')")
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if index.shape != labels.shape:
            raise ValueError(f"index ({index.shape}) and labels ({labels.shape}) must have the same length")
        n = int(index.size)
        if n == 0:
            raise ValueError("cannot create a store with zero samples")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        with h5py.File(tmp, "w", libver=LIBVER) as f:
            f.attrs["format"] = FORMAT
            f.attrs["provenance"] = _json(dict(provenance or {}))
            f.attrs["model"] = _json(dict(model))
            f.attrs["dataset"] = _json(dict(dataset))
            f.attrs["split"] = str(split)
            f.attrs["samples_complete"] = False
            if reduction is not None:
                f.attrs["reduction"] = _json(dict(reduction))
            g = f.create_group("samples")
            g.create_dataset("index", data=index, fletcher32=True)
            g.create_dataset("label", data=labels, fletcher32=True)
            shape = tuple(int(s) for s in input_shape)
            dt = np.dtype(input_dtype)
            g.create_dataset("input", shape=(n, *shape), dtype=dt,
                             chunks=_row_chunks(shape, dt.itemsize, n, row_align), fletcher32=True, **comp)
            f.create_group("checkpoints")
        os.replace(tmp, path)
        return cls(path, "a")

    # ------------------------------------------------------------------ generic
    def close(self) -> None:
        if getattr(self, "_f", None) is not None and self._f.id.valid:
            self._f.close()
        self._release()

    def _release(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            try:  # leave no lock file behind (HDF5's own file lock still guards the narrow race)
                os.unlink(lock.name)
            except OSError:
                pass
            lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> "ActivationStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def _require_write(self) -> None:
        if self.mode != "a":
            raise ValueError("store is open read-only; open it with ActivationStore(path, 'a')")

    @property
    def n_samples(self) -> int:
        n = getattr(self, "_n", None)
        if n is None:
            n = self._n = int(self._f["samples/index"].shape[0])
        return n

    @property
    def model(self) -> Dict[str, Any]:
        return _unjson(self._f.attrs.get("model", "{}"))

    @property
    def dataset(self) -> Dict[str, Any]:
        return _unjson(self._f.attrs.get("dataset", "{}"))

    @property
    def provenance(self) -> Dict[str, Any]:
        return _unjson(self._f.attrs.get("provenance", "{}"))

    @property
    def reduction(self) -> Dict[str, Any]:
        """The root ``reduction`` record: ``{"method": "none"}`` for a store without one."""
        val = _unjson(self._f.attrs.get("reduction", "{}"))
        return val if isinstance(val, dict) and val.get("method") else {"method": "none"}

    @property
    def samples_complete(self) -> bool:
        return bool(self._f.attrs.get("samples_complete", False))

    # ------------------------------------------------------------------ samples
    def index(self) -> np.ndarray:
        """(N,) int64 dataset indices of the stored samples."""
        return self._read_ds(self._f["samples/index"], None, "the sample index")

    def labels(self) -> np.ndarray:
        """(N,) int64 labels Y."""
        return self._read_ds(self._f["samples/label"], None, "the labels")

    def inputs(self, rows: Rows = None) -> np.ndarray:
        """(N, ...) inputs X (or the chosen rows)."""
        if not self.samples_complete:
            raise StoreError(f"the inputs of {str(self.path)!r} were never fully written (interrupted "
                             "extract); re-run `infoplane extract` with the same arguments to finish it")
        return self._read_ds(self._f["samples/input"], rows, "the stored inputs")

    def write_inputs(self, start: int, x: np.ndarray) -> None:
        """Write input rows ``[start, start + len(x))``."""
        self._require_write()
        ds = self._handles.get(("samples/input",))
        if ds is None:
            ds = self._handles[("samples/input",)] = self._f["samples/input"]
        x = np.asarray(x, dtype=ds.dtype)
        if x.shape[1:] != ds.shape[1:] or start < 0 or start + x.shape[0] > ds.shape[0]:
            raise ValueError(f"input rows of shape {x.shape} at {start} do not fit the stored "
                             f"inputs {ds.shape}")
        ds[start:start + x.shape[0]] = x

    def mark_inputs_complete(self) -> None:
        self._require_write()
        self._f.attrs["samples_complete"] = True
        self._f.flush()

    # ------------------------------------------------------------------ checkpoints
    def _group(self, ckpt: str):
        try:
            return self._f["checkpoints"][ckpt]
        except KeyError:
            raise KeyError(f"no checkpoint {ckpt!r} in {str(self.path)!r}; stored checkpoints are: "
                           f"{', '.join(self.checkpoints()) or '(none)'}") from None

    def checkpoints(self, include_incomplete: bool = False) -> List[str]:
        """Ids of complete checkpoints ordered by (epoch, step, id)."""
        out = []
        for cid, g in self._f["checkpoints"].items():
            if include_incomplete or bool(g.attrs.get("complete", False)):
                out.append((int(g.attrs.get("epoch", -1)), int(g.attrs.get("step", -1)), cid))
        return [cid for _, _, cid in sorted(out)]

    def checkpoint_attrs(self, ckpt: str) -> Dict[str, Any]:
        """Attributes of a checkpoint group, JSON fields decoded."""
        g = self._group(ckpt)
        return {k: (_unjson(v) if k in ("regime", "metrics", "model") else
                    (v.item() if isinstance(v, np.generic) else v)) for k, v in g.attrs.items()}

    def find_checkpoint(self, sha256: str) -> Optional[str]:
        """The id of the group holding the checkpoint with this sha256 (complete or not), if any."""
        for cid, g in self._f["checkpoints"].items():
            if g.attrs.get("sha256") == sha256:
                return cid
        return None

    def layers(self, ckpt: str) -> List[str]:
        """Layer names stored for a checkpoint, in network order."""
        g = self._group(ckpt)
        if "layers" not in g:
            return []
        names = list(g["layers"].keys())
        order = {n: int(g["layers"][n].attrs.get("order", i)) for i, n in enumerate(names)}
        return sorted(names, key=lambda n: order[n])

    def layer_attrs(self, ckpt: str, layer: str) -> Dict[str, Any]:
        ds = self._layer_ds(ckpt, layer)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else (v.item() if isinstance(v, np.generic) else v))
                for k, v in ds.attrs.items()}

    def _layer_ds(self, ckpt: str, layer: str):
        g = self._group(ckpt)
        if "layers" not in g or layer not in g["layers"]:
            raise KeyError(f"no layer {layer!r} for checkpoint {ckpt!r}; stored layers are: "
                           f"{', '.join(self.layers(ckpt)) or '(none)'}")
        return g["layers"][layer]

    def read(self, ckpt: str, layer: str, rows: Rows = None) -> np.ndarray:
        """Activations (N, ...) of ``layer`` at checkpoint ``ckpt`` (rows: slice or index array)."""
        return self._read_ds(self._layer_ds(ckpt, layer), rows, f"checkpoint {ckpt!r}, layer {layer!r}")

    def _read_ds(self, ds, rows: Rows, what: str = "") -> np.ndarray:
        sel, inverse = _normalize_rows(rows, ds.shape[0])
        try:
            data = ds[sel]
        except OSError as exc:
            raise StoreError(f"{str(self.path)!r}: {what or ds.name} is damaged (checksum or read error: {exc}); "
                             "re-extract that checkpoint into a new store") from None
        return data if inverse is None else data[inverse]

    def begin_checkpoint(self, ckpt: str, *, attrs: Mapping[str, Any]) -> int:
        """Create (or reopen, for resume) a checkpoint group; returns the rows already written.

        A reopened incomplete group whose ``sha256`` (or ``layers_spec`` / ``dtype``, when given)
        differs from ``attrs`` is restarted from row 0.
        """
        self._require_write()
        groups = self._f["checkpoints"]
        if ckpt in groups:
            g = groups[ckpt]
            if bool(g.attrs.get("complete", False)):
                raise StoreError(f"checkpoint {ckpt!r} is already complete in {str(self.path)!r}")
            same = all(g.attrs.get(k) == attrs.get(k) for k in ("sha256", "layers_spec", "dtype")
                       if k in attrs)
            if same:
                return int(g.attrs.get("rows_done", 0))
            self._forget(ckpt)
            del groups[ckpt]
        g = groups.create_group(ckpt)
        for k, v in {"epoch": -1, "step": -1, **dict(attrs)}.items():
            g.attrs[k] = _json(v) if isinstance(v, (dict, list, tuple)) or v is None else v
        g.attrs["rows_done"] = 0
        g.attrs["complete"] = False
        g.create_group("layers")
        self._f.flush()
        return 0

    def write_layer_rows(self, ckpt: str, layer: str, start: int, z: np.ndarray, *,
                         dtype: str = "float32", module_path: Optional[str] = None,
                         call_index: int = 1, order: int = 0, row_align: Optional[int] = None,
                         compression: Optional[str] = None, nonfinite: Optional[int] = None,
                         attrs: Optional[Mapping[str, Any]] = None) -> int:
        """Write rows ``[start, start+len(z))`` of a layer; creates the dataset on first use.

        Returns the number of written rows holding NaN/inf *after* the cast to the storage dtype
        (float16 overflows above 65504); the layer's ``nonfinite_rows`` attribute keeps the total.
        ``nonfinite``: that count when the caller has it already (the check is then skipped).
        On creation: ``row_align`` (rows per write, see :func:`_row_chunks`), ``compression``
        (``none``/``lzf``/``gzip``) and ``attrs`` (further attributes, e.g. ``reduction``; dicts
        are stored as JSON). ``rows_done`` is not changed: call :meth:`set_rows_done` when the
        rows of every layer up to a row are written.
        """
        self._require_write()
        key = (ckpt, layer)
        ds = self._handles.get(key)
        z = np.asarray(z)
        n = self.n_samples
        if ds is None:
            g = self._group(ckpt)["layers"]
            if layer not in g:
                dt = np.dtype(dtype)
                if dt not in (np.dtype("float32"), np.dtype("float16")):
                    raise ValueError(f"dtype must be float32 or float16, not {dtype!r}")
                row_shape = tuple(int(s) for s in z.shape[1:])
                ds = g.create_dataset(layer, shape=(n, *row_shape), dtype=dt,
                                      chunks=_row_chunks(row_shape, dt.itemsize, n, row_align), fletcher32=True,
                                      **compression_options(compression))
                ds.attrs["module_path"] = module_path if module_path is not None else layer
                ds.attrs["call_index"] = int(call_index)
                ds.attrs["original_shape"] = np.asarray(row_shape, dtype=np.int64)
                ds.attrs["order"] = int(order)
                for k, v in dict(attrs or {}).items():
                    ds.attrs[k] = _json(v) if isinstance(v, (dict, list, tuple)) else v
            else:
                ds = g[layer]
            self._handles[key] = ds
        if z.shape[1:] != ds.shape[1:] or start < 0 or start + z.shape[0] > n:
            raise ValueError(f"layer {layer!r}: rows of shape {z.shape} at {start} do not fit the "
                             f"stored dataset {ds.shape}")
        with np.errstate(over="ignore"):  # float16 overflow becomes inf: counted and reported below
            stored = z.astype(ds.dtype, copy=False)
        if nonfinite is None:
            bad = int((~np.isfinite(stored.reshape(stored.shape[0], -1))).any(axis=1).sum()) if stored.size else 0
        else:
            bad = int(nonfinite)
        rows = z.shape[0]
        step = rows
        if ds.chunks and stored.nbytes > _PIECE_BYTES:  # whole chunks at a time: other threads get the GIL
            c = int(ds.chunks[0])
            step = max(c, (_PIECE_BYTES // max(1, stored[:1].nbytes)) // c * c)
        for lo in range(0, rows, step):
            ds[start + lo:start + min(rows, lo + step)] = stored[lo:lo + step]
        if bad:
            ds.attrs["nonfinite_rows"] = int(ds.attrs.get("nonfinite_rows", 0)) + bad
        return bad

    def flush(self) -> None:
        """Write everything buffered by HDF5 to the file (call before :meth:`set_rows_done`)."""
        self._require_write()
        self._f.flush()

    def _forget(self, ckpt: str) -> None:
        for key in [k for k in self._handles if k[0] == ckpt]:
            del self._handles[key]

    def discard_checkpoint(self, ckpt: str) -> None:
        """Remove an *incomplete* checkpoint group (e.g. one refused for non-finite activations)."""
        self._require_write()
        g = self._group(ckpt)
        if bool(g.attrs.get("complete", False)):
            raise StoreError(f"checkpoint {ckpt!r} of {str(self.path)!r} is complete; refusing to discard it")
        self._forget(ckpt)
        del self._f["checkpoints"][ckpt]
        self._f.flush()

    def set_rows_done(self, ckpt: str, rows: int) -> None:
        """Record that rows ``[0, rows)`` of every layer of ``ckpt`` are written (and flush)."""
        self._require_write()
        self._group(ckpt).attrs["rows_done"] = int(rows)
        self._f.flush()

    def finish_checkpoint(self, ckpt: str) -> None:
        """Mark a checkpoint complete (all rows of all layers written)."""
        self._require_write()
        g = self._group(ckpt)
        done = int(g.attrs.get("rows_done", 0))
        if done != self.n_samples:
            raise StoreError(f"checkpoint {ckpt!r} has {done} of {self.n_samples} rows; cannot mark complete")
        g.attrs["complete"] = True
        self._f.flush()

    def set_reduction_fingerprints(self, fingerprints: Mapping[str, str]) -> None:
        """Add fingerprints (e.g. of the random-projection matrix) to the root ``reduction`` record;
        a name already recorded with another fingerprint is a StoreError."""
        self._require_write()
        rec = self.reduction
        known = dict(rec.get("fingerprints") or {})
        for name, fp in fingerprints.items():
            if name in known and known[name] != fp:
                raise StoreError(f"{str(self.path)!r}: the random-projection matrix ({name}) is not the one its "
                                 f"earlier checkpoints were projected with (fingerprint {fp}, stored {known[name]}: "
                                 "this torch draws other random numbers). Extract into a new --out file, or use "
                                 "the torch version named in the store's reduction record")
            known[name] = fp
        if known != (rec.get("fingerprints") or {}):
            rec["fingerprints"] = known
            self._f.attrs["reduction"] = _json(rec)

    def add_provenance(self, **items: Any) -> None:
        """Merge entries into the root provenance JSON (lists are extended)."""
        self._require_write()
        prov = self.provenance
        for k, v in items.items():
            if isinstance(v, list) and isinstance(prov.get(k), list):
                prov[k] = prov[k] + [x for x in v if x not in prov[k]]
            else:
                prov[k] = v
        self._f.attrs["provenance"] = _json(prov)

    # ------------------------------------------------------------------ checks
    def check_compatible(self, *, model: Mapping[str, Any], index: Sequence[int],
                         dataset_name: Optional[str] = None, split: Optional[str] = None,
                         reduction: Optional[Mapping[str, Any]] = None) -> None:
        """Refuse to mix models, sample sets or layer reductions in one store (raises StoreError).

        reduction: the record of the reduction to append with (``method``, ``dim``, ``seed``,
        ``spec``); a store without a root ``reduction`` attribute holds unreduced layers."""
        mine = self.model
        theirs = json.loads(_json(dict(model)))
        if mine != theirs:
            raise StoreError(f"{str(self.path)!r} holds activations of model {mine}, not {theirs}; "
                             "write this checkpoint to a different --out file")
        if dataset_name is not None and self.dataset.get("name") != dataset_name:
            raise StoreError(f"{str(self.path)!r} holds samples of dataset {self.dataset.get('name')!r}, "
                             f"not {dataset_name!r}; use a different --out file")
        if split is not None and self._f.attrs.get("split") != split:
            raise StoreError(f"{str(self.path)!r} holds the {self._f.attrs.get('split')!r} split, not "
                             f"{split!r}; use a different --out file")
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if not np.array_equal(idx, self.index()):
            raise StoreError(f"{str(self.path)!r} was written for a different sample set "
                             f"({self.n_samples} samples); use the same --samples/--split or a new --out file")
        if reduction is not None:
            have, want = self.reduction, dict(reduction)
            keys = ("method", "dim", "seed")
            if any(have.get(k) != want.get(k) for k in keys):
                def name(rec: Mapping[str, Any]) -> str:
                    seed = f" (seed {rec['seed']})" if rec.get("seed") is not None else ""
                    return f"{rec.get('spec', rec.get('method'))!r}{seed}"

                spec = have.get("spec", have.get("method"))
                seed = f" --reduce-seed {have['seed']}" if have.get("seed") is not None else ""
                raise StoreError(f"{str(self.path)!r} holds layers reduced with {name(have)}, not {name(want)}: "
                                 f"values of other reductions are not comparable. Pass --reduce {spec}{seed} "
                                 "(reduce=, reduce_seed=) to append to it, or write to a new --out file")

    def verify(self) -> List[str]:
        """Read every stored block (checksums verified); returns one line per damaged dataset
        (empty: the whole store reads back intact). Reads the whole file: O(store size)."""
        damaged: List[str] = []
        names = [("samples/index", "the sample index"), ("samples/label", "the labels"),
                 ("samples/input", "the stored inputs")]
        for cid in self.checkpoints(include_incomplete=True):
            names += [(f"checkpoints/{cid}/layers/{lname}", f"checkpoint {cid!r}, layer {lname!r}")
                      for lname in self.layers(cid)]
        for name, what in names:
            ds = self._f[name]
            step = max(1, ds.chunks[0] if ds.chunks else ds.shape[0] or 1) if ds.shape else 1
            try:
                if not ds.shape:
                    ds[()]
                for start in range(0, ds.shape[0] if ds.shape else 0, step):
                    ds[start:start + step]
            except OSError as exc:
                damaged.append(f"{what} is damaged ({exc})")
        return damaged

    # ------------------------------------------------------------------ notebook views
    def __repr__(self) -> str:
        """Path, samples, model, dataset/split, checkpoints (count, first, last) and layer shapes."""
        f = getattr(self, "_f", None)
        if f is None or not f.id.valid:
            return f"<ActivationStore {str(self.path)!r} (closed)>"
        try:
            return self._describe()
        except Exception as exc:  # a repr must not raise, whatever the file holds
            return f"<ActivationStore {str(self.path)!r} ({self.mode}; unreadable: {exc})>"

    def _describe(self) -> str:
        mode = "read-only" if self.mode == "r" else "open for writing"
        model, ds = self.model, self.dataset
        kwargs = model.get("kwargs") or {}
        model_s = str(model.get("name", "?")) + (f" {kwargs}" if kwargs else "")
        if isinstance(model.get("parameters"), int):
            model_s += f" ({model['parameters']:,} parameters)"
        ds_s = str(ds.get("name", "?")) + (f", {ds['num_classes']} classes" if ds.get("num_classes") else "")
        data = ds.get("data") if isinstance(ds.get("data"), dict) else {}
        if data.get("root") or data.get("factory"):
            ds_s += f" from {data.get('root') or data.get('factory')}"
        if data.get("loader"):
            ds_s += " (via a DataLoader)"
        complete = self.checkpoints()
        pending = len(self.checkpoints(include_incomplete=True)) - len(complete)

        def ck(cid: str) -> str:
            return f"{cid} (epoch {int(self._group(cid).attrs.get('epoch', -1))})"

        if complete:
            ck_s = f"{len(complete)} complete: {ck(complete[0])}" + (f" .. {ck(complete[-1])}"
                                                                      if len(complete) > 1 else "")
        else:
            ck_s = "none complete"
        if pending:
            ck_s += f" (+{pending} incomplete: re-run extract to finish)"
        lines = [f"<ActivationStore {str(self.path)!r} ({mode})",
                 f"  samples:     {self.n_samples}, input {tuple(self._f['samples/input'].shape[1:])}"
                 + ("" if self.samples_complete else " (inputs not fully written)"),
                 f"  model:       {model_s}",
                 f"  dataset:     {ds_s}; split {self._f.attrs.get('split', '?')!s}",
                 f"  checkpoints: {ck_s}"]
        if complete:
            last = complete[-1]
            shapes = [f"{n} {tuple(self._layer_ds(last, n).shape[1:])}" for n in self.layers(last)]
            lines.append(f"  layers:      " + ", ".join(shapes))
        return "\n".join(lines) + ">"

    def to_dataframe(self, ckpt: str, layer: str, rows: Rows = None) -> "pandas.DataFrame":  # noqa: F821
        """One layer at one checkpoint as a table: one row per stored sample.

        Columns ``index`` (the sample's dataset index), ``label`` (its class) and ``f0`` ..
        ``f{d-1}``: the activations flattened in C order (a ``(C, H, W)`` layer gives ``d = C*H*W``
        columns; the stored shape, ``read(...).shape[1:]``, says how to fold them back: it is the
        :meth:`layer_attrs` ``original_shape`` unless the layer was reduced). The frame's
        index is the row of the store (name ``row``). ``rows``: a slice or row indices (default
        all). For arrays instead of a table use :meth:`read`, :meth:`labels` and :meth:`index`.
        """
        import pandas as pd

        z = self.read(ckpt, layer, rows)
        n = self.n_samples
        sel = np.arange(n)[rows] if isinstance(rows, slice) else (
            np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1) % max(n, 1))
        flat = z.reshape(z.shape[0], -1)
        frame = pd.DataFrame(flat, columns=[f"f{i}" for i in range(flat.shape[1])],
                             index=pd.Index(sel, name="row"))
        frame.insert(0, "label", self.labels()[sel])
        frame.insert(0, "index", self.index()[sel])
        return frame

    @property
    def info(self) -> Dict[str, Any]:
        """A summary: format, path, samples, model, dataset, split, checkpoints and their layers."""
        ckpts = []
        for cid in self.checkpoints(include_incomplete=True):
            a = self.checkpoint_attrs(cid)
            ckpts.append({"id": cid, "epoch": a.get("epoch"), "step": a.get("step"),
                          "regime": a.get("regime"), "run": a.get("run"),
                          "complete": bool(a.get("complete", False)),
                          "layers": {n: list(self._layer_ds(cid, n).shape[1:]) for n in self.layers(cid)}})
        return {"format": FORMAT, "path": str(self.path), "n_samples": self.n_samples,
                "input_shape": list(self._f["samples/input"].shape[1:]),
                "model": self.model, "dataset": self.dataset, "split": self._f.attrs.get("split"),
                "samples_complete": self.samples_complete, "provenance": self.provenance,
                "checkpoints": ckpts}
