"""Run checkpoints over a fixed evaluation set and stream the chosen layers into an HDF5 store.

docs/formats_store.md flow: checkpoints -> ``extract`` (forward hooks) -> activations.h5. The model is
put in ``eval()`` mode and run under ``torch.no_grad()`` batch by batch; each batch's activations
are written straight to the store (never the whole dataset in memory). One store per run; calling
``extract`` again appends new checkpoints, skips those already complete (same sha256) and resumes
an interrupted one from its last written batch.
"""
from __future__ import annotations

import logging
import platform
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

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


def _nonfinite_message(ck_path: Path, layer: str, bad: int, start: int, z: torch.Tensor, dtype: str,
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


def extract(checkpoints: Union[PathLike, Sequence[PathLike]], layers: LayerSpec = "all",
            out: PathLike = "acts.h5", split: str = "test", samples: Union[None, int, Sequence[int]] = None,
            batch_size: int = 256, dtype: str = "float32", data_root: PathLike = "data",
            device: Union[str, torch.device] = "cpu", model_factory: Optional[str] = None,
            progress: bool = True, command: Optional[str] = None, allow_nonfinite: bool = False) -> Path:
    """Extract activations of ``layers`` for every checkpoint into the store ``out``.

    checkpoints: ``.pt`` files of format ``infoplane.checkpoint/1`` (same model and dataset). Each is
    rebuilt as the function its regime trained (:meth:`Checkpoint.build_inference_model`: ContSup
    context paths, forward-forward normalisation and label channel, ...); the checkpoint group's
    attributes record that ``inference`` record, the ``prediction_layer`` (``out``, or ``goodness`` /
    ``linear_eval`` for forward-forward / contrastive E2E, stored when selected by name) and
    ``metrics_samples`` (``same`` when the recorded accuracy was computed on exactly these samples).
    layers: ``"all"`` (a LayeredNet's top-level layers), names, or glob patterns (see ``hooks``).
    samples: None (the whole split), N (stratified seeded subset) or explicit dataset indices.
    dtype: ``float32`` or ``float16`` storage. allow_nonfinite: store NaN/inf activations (the
    layer's ``nonfinite_rows`` attribute counts them) instead of raising
    :class:`NonFiniteActivationError`, which names the checkpoint, layer and rows and keeps nothing
    of that checkpoint. Returns the store path.
    """
    from infoplane.device import resolve_device

    device = resolve_device(device)
    from tqdm.auto import tqdm

    from infoplane.checkpoint import load_checkpoint
    from infoplane.data import dataset_labels, load_dataset

    if isinstance(checkpoints, (str, Path)):
        checkpoints = [checkpoints]
    paths = [Path(p) for p in checkpoints]
    if not paths:
        raise ValueError("no checkpoints given")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out)
    store: Optional[ActivationStore] = None
    datasets: Dict[str, Any] = {}
    try:
        for ck_path in tqdm(paths, desc="checkpoints", unit="ckpt", disable=None if progress else True):
            ck = load_checkpoint(ck_path)
            ds_meta = dict(ck.dataset or {})
            ds_name = ds_meta.get("name")
            if not ds_name:
                raise ValueError(f"checkpoint {str(ck_path)!r} does not name its dataset; cannot extract")
            if ds_name not in datasets:
                ds = load_dataset(ds_name, split=split, root=data_root)
                labels = dataset_labels(ds).numpy()
                idx = select_samples(labels, samples)
                datasets[ds_name] = (ds, labels, idx)
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
                if out.exists():
                    store = ActivationStore(out, "a")
                else:
                    x0 = ds[int(idx[0])][0]
                    store = ActivationStore.create(
                        out, index=idx, labels=labels[idx], input_shape=tuple(torch.as_tensor(x0).shape),
                        model=model_id, dataset=ds_meta, split=split,
                        provenance={"command": command or " ".join(sys.argv), "versions": _versions(),
                                    "created": datetime.now(timezone.utc).isoformat(), "checkpoints": []})
            store.check_compatible(model=model_id, index=idx, dataset_name=ds_name, split=split)

            sha = ck.sha256
            cid = _checkpoint_id(store, ck_path, sha)
            if cid in store.checkpoints():
                continue  # already complete: nothing to do
            attrs = {"epoch": int(ck.epoch), "step": int(ck.step if ck.step is not None else -1),
                     "regime": dict(ck.regime or {}), "metrics": dict(ck.metrics or {}), "sha256": sha,
                     "model": ck.model_name, "run": ck_path.parent.name, "source": str(ck_path),
                     "layers_spec": layers if isinstance(layers, str) else ",".join(layers), "dtype": dtype,
                     "inference": spec, "prediction_layer": str(spec.get("prediction_layer", "out")),
                     "metrics_samples": metrics_samples(_recorded_sizes(ck), ck.seed, labels, idx, split)}
            done = store.begin_checkpoint(cid, attrs=attrs)
            write_inputs = not store.samples_complete
            start = 0 if write_inputs else done
            loader = DataLoader(Subset(ds, idx[start:].tolist()), batch_size=int(batch_size), shuffle=False)
            with torch.no_grad(), capture(model, names) as acts:
                row = start
                bar = tqdm(loader, desc=f"extract {cid}", unit="batch", leave=False,
                           disable=None if progress else True)
                for xb, _yb in bar:
                    b = xb.shape[0]
                    if write_inputs:
                        store.write_inputs(row, xb.numpy())
                    if row + b > done:
                        model(xb.to(device))
                        if not acts:
                            raise ValueError(f"none of the layers {names} ran in the forward pass of "
                                             f"{str(ck_path)!r}")
                        for order, (lname, z) in enumerate(acts.items()):
                            path_, call = split_call_name(lname)
                            s = max(done - row, 0)
                            bad = store.write_layer_rows(cid, lname, row + s, z[s:].float().cpu().numpy(),
                                                         dtype=dtype, module_path=path_, call_index=call,
                                                         order=order)
                            if bad and not allow_nonfinite:
                                store.discard_checkpoint(cid)
                                raise NonFiniteActivationError(_nonfinite_message(
                                    ck_path, lname, bad, row + s, z[s:], dtype, ck.state_dict))
                            if bad:
                                log.warning("%s, layer %s: %d row(s) with NaN/inf stored (allow_nonfinite); "
                                            "estimate marks the layer", ck_path, lname, bad)
                        store.set_rows_done(cid, row + b)
                    row += b
            if write_inputs:
                store.mark_inputs_complete()
            store.finish_checkpoint(cid)
            store.add_provenance(checkpoints=[{"id": cid, "path": str(ck_path), "sha256": sha}])
    finally:
        if store is not None:
            store.close()
    return out


__all__ = ["extract", "select_samples", "metrics_samples", "StoreError", "NonFiniteActivationError"]
