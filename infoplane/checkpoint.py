"""The checkpoint format ``infoplane.checkpoint/1``: save, load (weights only), rebuild the model.

A checkpoint is a ``torch.save`` of plain types only (dicts with string keys, lists, tuples,
str/int/float/bool/None and tensors), so ``torch.load(weights_only=True)`` opens it::

    {"format": "infoplane.checkpoint/1",
     "model": {"name": str, "kwargs": dict},          # registry name (or the user's label) + kwargs
     "state_dict": {param name: tensor},               # the backbone only
     "epoch": int, "step": int,
     "regime": dict,                                   # e.g. {"name": "layerwise", "loss": "ce", ...}
     "dataset": {"name", "num_classes", "input_shape", "normalization": {"mean", "std"}},
     "metrics": dict, "seed": int | None,
     "created": ISO-8601 UTC str, "versions": {"torch", "infoplane", "python", "numpy"},
     "aux_state": dict | None,                         # auxiliary heads etc., never mixed into state_dict
     "extra": dict | None}

``aux_state["inference"]`` (optional, plain types) says what besides the backbone computes the trained
function (ContSup context paths, forward-forward normalisation, an evaluation head; weights in
``aux_state["heads"]``); :meth:`Checkpoint.build_inference_model` rebuilds it (:mod:`infoplane.inference`).

Files are written to ``path + ".partial"`` and renamed with ``os.replace``, so a file with the final
name is always complete. A user's own architecture is rebuilt only from a factory the *user* passes
(``"pkg.mod:fn"`` or a callable); nothing is imported because a checkpoint names it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import os
import pickle
import platform
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

FORMAT = "infoplane.checkpoint/1"
REQUIRED_KEYS = ("format", "model", "state_dict", "epoch", "step", "regime", "dataset", "metrics", "seed",
                 "created", "versions")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "weights")

PathLike = Union[str, os.PathLike]
Factory = Union[str, Callable[..., nn.Module]]


class CheckpointError(ValueError):
    """A file that is not a usable infoplane checkpoint (corrupt, foreign, or not matching its model)."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _plain(obj: Any, where: str) -> Any:
    """Convert to the plain types ``weights_only`` loading accepts, or raise naming the bad key."""
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, str):  # str subclasses (e.g. torch's TorchVersion) are not weights_only-safe
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (os.PathLike,)):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"{where}: key {k!r} must be a str or int to be stored in a checkpoint")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, tuple):
        return tuple(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "as_dict") and callable(obj.as_dict):
        return _plain(obj.as_dict(), where)
    raise ValueError(f"{where}: value of type {type(obj).__name__} cannot be stored in a checkpoint; "
                     f"use plain types (dict, list, str, int, float, bool, None, tensors)")


def _versions() -> Dict[str, str]:
    import infoplane

    return {"torch": str(torch.__version__), "infoplane": str(getattr(infoplane, "__version__", "unknown")),
            "python": str(platform.python_version()), "numpy": str(np.__version__)}


def _dataset_record(dataset: Any) -> Dict[str, Any]:
    if isinstance(dataset, str):
        from .data import dataset_info

        return dataset_info(dataset).as_dict()
    if hasattr(dataset, "as_dict"):
        return dict(dataset.as_dict())
    if isinstance(dataset, Mapping):
        if "name" not in dataset:
            raise ValueError(f"dataset record needs at least a 'name' (got keys {sorted(dataset)}); pass a "
                             f"dataset name, a DatasetInfo or a dict with name/num_classes/input_shape/normalization")
        return dict(dataset)
    raise ValueError(f"dataset must be a name, a DatasetInfo or a dict, got {type(dataset).__name__}")


def _regime_record(regime: Any) -> Dict[str, Any]:
    if isinstance(regime, str):
        return {"name": regime}
    if isinstance(regime, Mapping):
        return dict(regime)
    if hasattr(regime, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(regime)
    raise ValueError(f"regime must be a name or a dict, got {type(regime).__name__}")


def content_digest(record: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint record's content (every field but ``digest``; tensors by name, dtype,
    shape and bytes), written into the file on save and verified on load: ``torch.load`` does not
    check the zip CRCs, so without it a damaged weight loads silently."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, Mapping):
            h.update(b"{")
            for k in sorted(obj, key=str):
                feed(str(k))
                feed(obj[k])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for v in obj:
                feed(v)
            h.update(b"]")
        else:
            h.update(f"{type(obj).__name__}:{obj!r};".encode())

    feed({k: v for k, v in record.items() if k != "digest"})
    return h.hexdigest()


def _atomic_save(payload: Dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    payload = {**payload, "digest": content_digest(payload)}
    try:
        torch.save(payload, partial)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


def _state_dict_cpu(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v.detach().cpu().clone()
    return out


def checkpoint_filename(epoch: int) -> str:
    """The file name a run directory uses for a checkpoint: ``epoch_0003.pt``."""
    if int(epoch) < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return f"epoch_{int(epoch):04d}.pt"


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------

def _payload(state_dict: Mapping[str, Any], *, model_name: str, model_kwargs: Optional[Mapping[str, Any]],
             epoch: int, step: int, regime: Any, dataset: Any, metrics: Optional[Mapping[str, Any]],
             seed: Optional[int], aux_state: Optional[Mapping[str, Any]],
             extra: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if not isinstance(model_name, str) or not model_name:
        raise ValueError("model_name must be a non-empty string (a registered name or your own label)")
    if int(epoch) < 0 or int(step) < 0:
        raise ValueError(f"epoch and step must be >= 0, got epoch={epoch}, step={step}")
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    return {
        "format": FORMAT,
        "model": {"name": model_name, "kwargs": _plain(dict(model_kwargs or {}), "model_kwargs")},
        "state_dict": _state_dict_cpu(state_dict),
        "epoch": int(epoch),
        "step": int(step),
        "regime": _plain(_regime_record(regime), "regime"),
        "dataset": _plain(_dataset_record(dataset), "dataset"),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "seed": None if seed is None else int(seed),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "aux_state": None if aux_state is None else _plain(dict(aux_state), "aux_state"),
        "extra": None if extra is None else _plain(dict(extra), "extra"),
    }


def save_checkpoint(path: PathLike, model: nn.Module, *, model_name: str, model_kwargs: Mapping[str, Any],
                    epoch: int, step: int, regime: Any, dataset: Any, metrics: Optional[Mapping[str, Any]] = None,
                    seed: Optional[int] = None, aux_state: Optional[Mapping[str, Any]] = None,
                    extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` (its ``state_dict``, on CPU) and its provenance as ``infoplane.checkpoint/1``.

    ``regime`` is a dict (or a name), ``dataset`` a dict / :class:`~infoplane.data.DatasetInfo` / name;
    ``aux_state`` holds auxiliary heads (and e.g. optimiser state) apart from the backbone. Plain types
    only; the write is atomic (``.partial`` then ``os.replace``). Returns the path.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    payload = _payload(model.state_dict(), model_name=model_name, model_kwargs=model_kwargs, epoch=epoch,
                       step=step, regime=regime, dataset=dataset, metrics=metrics, seed=seed,
                       aux_state=aux_state, extra=extra)
    return _atomic_save(payload, Path(path))


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A loaded ``infoplane.checkpoint/1`` file (fields as in the format) plus its path and sha256."""

    path: Path
    sha256: str
    format: str
    model_name: str
    model_kwargs: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]
    epoch: int
    step: int
    regime: Dict[str, Any]
    dataset: Dict[str, Any]
    metrics: Dict[str, Any]
    seed: Optional[int]
    created: str
    versions: Dict[str, str]
    aux_state: Optional[Dict[str, Any]] = None
    extra: Optional[Dict[str, Any]] = None

    def build_model(self, factory: Optional[Factory] = None, device: Union[str, torch.device] = "cpu",
                    strict: bool = True) -> nn.Module:
        """Rebuild the network and load the weights (in eval mode, on ``device``).

        Without ``factory`` the registered architecture ``model_name`` is built with ``model_kwargs``.
        With ``factory`` (``"pkg.mod:fn"`` or a callable, chosen by the user) ``fn(**model_kwargs)`` is
        called. A state-dict mismatch raises :class:`CheckpointError` listing the missing/unexpected keys.
        """
        if factory is None:
            from .models import get_model_factory, list_models

            if self.model_name not in list_models():
                raise CheckpointError(
                    f"{self.path}: model {self.model_name!r} is not a registered architecture "
                    f"({', '.join(list_models())}); pass your own factory explicitly, e.g. "
                    f"build_model(factory='pkg.module:make_net') or --model-factory pkg.module:make_net")
            fn: Callable[..., nn.Module] = get_model_factory(self.model_name)
        else:
            fn = resolve_factory(factory)
        self._check_buildable(fn, strict)
        try:
            model = fn(**self.model_kwargs)
        except Exception as err:  # a factory can fail in any way on damaged kwargs
            raise CheckpointError(self._kwargs_message(err)) from None
        if not isinstance(model, nn.Module):
            raise CheckpointError(f"{self.path}: the factory returned {type(model).__name__}, not an nn.Module")
        check_state_dict(model, self.state_dict, strict=strict, source=str(self.path))
        model.load_state_dict(self.state_dict, strict=strict)
        return model.to(device).eval()

    def _kwargs_message(self, err: BaseException) -> str:
        return (f"{self.path}: could not build {self.model_name!r} from the recorded model kwargs "
                f"{self.model_kwargs} ({type(err).__name__}: {' '.join(str(err).split())[:300]}); the checkpoint's "
                "'model.kwargs' field is damaged or was edited - re-save the checkpoint with the kwargs the model "
                "was trained with")

    def _check_buildable(self, fn: Callable[..., nn.Module], strict: bool) -> None:
        """Build the model on the ``meta`` device first (no memory): damaged kwargs (negative or huge
        sizes) become a :class:`CheckpointError` naming the field before anything is allocated."""
        from infoplane.device import available_memory_bytes

        try:
            with torch.device("meta"):
                meta = fn(**self.model_kwargs)
        except Exception:  # bad kwargs fail the real build too (and it names them); a factory with
            return         # data-dependent code may only fail on 'meta': the real build decides
        if not isinstance(meta, nn.Module):
            return
        check_state_dict(meta, self.state_dict, strict=strict, source=str(self.path))
        need = sum(t.numel() * t.element_size() for t in list(meta.parameters()) + list(meta.buffers()))
        avail = available_memory_bytes("cpu")
        if need > avail:
            raise CheckpointError(f"{self.path}: the model described by 'model.kwargs' {self.model_kwargs} needs "
                                  f"{need / 2 ** 30:.1f} GiB but {avail / 2 ** 30:.1f} GiB is available; the "
                                  "kwargs are damaged or the model is too large for this machine")

    def build_inference_model(self, factory: Optional[Factory] = None, device: Union[str, torch.device] = "cpu"
                              ) -> nn.Module:
        """The function the regime trained (eval mode, on ``device``): the backbone of
        :meth:`build_model`, wrapped with what inference needs beyond it (ContSup context encoders,
        forward-forward normalisation and label channel, a contrastive run's evaluation head), as
        recorded in ``aux_state["inference"]`` (see :mod:`infoplane.inference`). Top-level layer names
        are the backbone's."""
        from .inference import build_inference_model

        backbone = self.build_model(factory, device=device)
        try:
            return build_inference_model(backbone, self.regime, self.aux_state, source=str(self.path)).to(device)
        except ValueError as err:
            raise CheckpointError(str(err)) from None

    def inference_spec(self) -> Dict[str, Any]:
        """The inference record (``aux_state["inference"]`` or derived from an older regime record)."""
        from .inference import inference_spec

        return inference_spec(self.regime, self.aux_state, source=str(self.path))

    def summary(self) -> Dict[str, Any]:
        """Everything but the tensors (for printing / provenance)."""
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format,
                "model": {"name": self.model_name, "kwargs": self.model_kwargs}, "epoch": self.epoch,
                "step": self.step, "regime": self.regime, "dataset": self.dataset, "metrics": self.metrics,
                "seed": self.seed, "created": self.created, "versions": self.versions,
                "has_aux_state": self.aux_state is not None, "parameters": self.parameter_count(),
                "nonfinite_weights": self.nonfinite_weights()}

    def parameter_count(self) -> int:
        """Number of scalars in the state_dict."""
        return int(sum(v.numel() for v in self.state_dict.values() if torch.is_tensor(v)))

    def nonfinite_weights(self) -> int:
        """Number of NaN/inf scalars in the state_dict (non-zero: training diverged)."""
        return int(sum(int((~torch.isfinite(v)).sum()) for v in self.state_dict.values()
                       if torch.is_tensor(v) and v.is_floating_point()))


def resolve_factory(factory: Factory) -> Callable[..., nn.Module]:
    """Turn a user-given ``"pkg.mod:fn"`` (attribute path after ``:`` may be dotted) into a callable."""
    if callable(factory):
        return factory
    if not isinstance(factory, str) or factory.count(":") != 1:
        raise ValueError(f"factory must be 'package.module:function' or a callable, got {factory!r}")
    mod_name, attr = factory.split(":")
    if not re.fullmatch(r"[A-Za-z_][\w.]*", mod_name) or not re.fullmatch(r"[A-Za-z_][\w.]*", attr):
        raise ValueError(f"factory {factory!r} is not of the form 'package.module:function'")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as err:
        raise ValueError(f"factory {factory!r}: cannot import module {mod_name!r} ({err}); "
                         f"is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"factory {factory!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory {factory!r} is not callable")
    return obj


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                     source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` if ``state_dict`` does not fit ``model`` (keys or shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if shapes or (strict and (missing or unexpected)):
        def _fmt(xs: List[str]) -> str:
            return ", ".join(xs[:20]) + (f" ... ({len(xs)} in all)" if len(xs) > 20 else "") if xs else "none"

        raise CheckpointError(
            f"{source}: the state_dict does not match the rebuilt model ({type(model).__name__}). "
            f"Missing keys: {_fmt(missing)}. Unexpected keys: {_fmt(unexpected)}. "
            f"Shape mismatches: {_fmt(shapes)}. Check the model name/kwargs (or the factory) used to rebuild it.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_load(path: Path, map_location: Any) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: corrupt or truncated torch file (a damaged zip archive); "
                              f"re-copy or re-create it")
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise CheckpointError(f"{path}: not a torch file (neither a torch.save zip archive nor a pickle; "
                              f"first bytes {head!r}); the file is corrupt or of another kind")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        globals_ = [ln.strip() for ln in text.splitlines() if "global" in ln.lower() and "GLOBAL" in ln]
        if globals_:
            raise CheckpointError(
                f"{path}: holds Python objects other than plain types and tensors ({globals_[0]}), so it "
                f"cannot be opened with weights_only=True. If you trust its source, load it yourself and "
                f"convert it with infoplane.checkpoint.wrap_state_dict(state_dict, out_path, model_name=..., "
                f"model_kwargs=..., dataset=...).") from None
        raise CheckpointError(f"{path}: not a torch checkpoint or corrupt ({text.splitlines()[0] if text else ''})") from None
    except Exception as err:  # a damaged archive can fail anywhere inside the unpickler
        raise CheckpointError(f"{path}: not a torch checkpoint or corrupt/truncated file "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def _foreign_message(path: Path, obj: Any) -> str:
    if not isinstance(obj, dict):
        return (f"{path}: not an infoplane checkpoint: it holds a {type(obj).__name__}, not a dict with "
                f"format {FORMAT!r}. Convert it with infoplane.checkpoint.wrap_state_dict(...) or "
                f"save_checkpoint(...).")
    keys = sorted(str(k) for k in obj)
    shown = ", ".join(keys[:15]) + (f" ... ({len(keys)} keys)" if len(keys) > 15 else "")
    looks_sd = bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
    hint = ("it looks like a bare state_dict" if looks_sd else
            "it looks like another tool's checkpoint" if any(k in obj for k in _STATE_DICT_KEYS) else
            "its format is unknown")
    return (f"{path}: not an infoplane checkpoint (no format {FORMAT!r}; {hint}; keys: {shown}). Convert it "
            f"with infoplane.checkpoint.wrap_state_dict(obj, out_path, model_name=..., model_kwargs=..., "
            f"dataset=...), which accepts a state_dict or a dict holding one under "
            f"{'/'.join(_STATE_DICT_KEYS)}, or re-save your model with save_checkpoint(...).")


def _check_fields(path: Path, obj: Mapping[str, Any]) -> None:
    """Types of the record's fields; a damaged or hand-edited one is named in the error."""
    def bad(field: str, want: str, got: Any) -> CheckpointError:
        return CheckpointError(f"{path}: field {field!r} must be {want}, got {type(got).__name__} {str(got)[:60]!r}; "
                               "the file is damaged or was edited - re-save it with save_checkpoint(...)")

    for field in ("epoch", "step"):
        v = obj[field]
        if field == "step" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < -1:
            raise bad(field, "an integer >= 0", v)
    kwargs = obj["model"].get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise bad("model.kwargs", "a dict of keyword arguments", kwargs)
    for field in ("regime", "dataset", "metrics", "versions"):
        v = obj.get(field)
        if v is not None and not isinstance(v, dict):
            raise bad(field, "a dict (or None)", v)
    bad_keys = [k for k, v in obj["state_dict"].items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad_keys:
        raise bad("state_dict", "a dict of name -> tensor", obj["state_dict"][bad_keys[0]])


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Checkpoint:
    """Open an ``infoplane.checkpoint/1`` file with ``torch.load(weights_only=True)``.

    Raises ``FileNotFoundError`` if missing, :class:`CheckpointError` if corrupt, foreign (the message
    lists its keys and how to convert it) or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        hint = f" (a partial write {path.name}.partial exists)" if path.with_name(path.name + ".partial").exists() else ""
        raise FileNotFoundError(f"checkpoint {path} does not exist{hint}")
    digest = _sha256(path)
    obj = _torch_load(path, map_location)
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(_foreign_message(path, obj))
    fmt = obj["format"]
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: format {fmt!r} is not supported by this version of infoplane "
                              f"(it reads {FORMAT!r}); upgrade infoplane or re-save the model")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: an {FORMAT} file missing the keys {missing}; the file is damaged or was "
                              f"written by hand; re-save it with save_checkpoint(...)")
    model = obj["model"]
    if not isinstance(model, dict) or "name" not in model or not isinstance(obj["state_dict"], dict):
        raise CheckpointError(f"{path}: 'model' must be {{'name', 'kwargs'}} and 'state_dict' a dict")
    _check_fields(path, obj)
    if "digest" in obj and obj["digest"] != content_digest(obj):
        raise CheckpointError(f"{path}: damaged - its content no longer matches the digest written when it was "
                              "saved (a flipped or truncated byte); re-copy it or re-create it")
    return Checkpoint(path=path, sha256=digest, format=fmt, model_name=str(model["name"]),
                      model_kwargs=dict(model.get("kwargs") or {}), state_dict=obj["state_dict"],
                      epoch=int(obj["epoch"]), step=int(obj["step"]), regime=dict(obj["regime"] or {}),
                      dataset=dict(obj["dataset"] or {}), metrics=dict(obj["metrics"] or {}), seed=obj["seed"],
                      created=str(obj["created"]), versions=dict(obj["versions"] or {}),
                      aux_state=obj.get("aux_state"), extra=obj.get("extra"))


# --------------------------------------------------------------------------------------------
# conversion of foreign checkpoints, run directories
# --------------------------------------------------------------------------------------------

def _extract_state_dict(obj: Any, state_dict_key: Optional[str]) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state_dict, a dict holding one, or an nn.Module; got {type(obj).__name__}")
    if state_dict_key is not None:
        if state_dict_key not in obj:
            raise ValueError(f"key {state_dict_key!r} not found; the dict has keys {sorted(map(str, obj))}")
        return obj[state_dict_key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for k in _STATE_DICT_KEYS:
        if k in obj and isinstance(obj[k], Mapping):
            return obj[k]
    raise ValueError(f"no state_dict found: the dict has keys {sorted(map(str, obj))}; pass state_dict_key=...")


def wrap_state_dict(obj: Any, out_path: PathLike, *, model_name: str, model_kwargs: Optional[Mapping[str, Any]] = None,
                    dataset: Any, epoch: int = 0, step: int = 0, regime: Any = None,
                    metrics: Optional[Mapping[str, Any]] = None, seed: Optional[int] = None,
                    state_dict_key: Optional[str] = None, strip_prefix: str = "",
                    factory: Optional[Factory] = None, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Convert a foreign checkpoint into ``infoplane.checkpoint/1``.

    ``obj`` is a state_dict, a dict holding one (``state_dict``/``model_state_dict``/... or
    ``state_dict_key``), an ``nn.Module``, or a path to such a file (opened with ``weights_only=True``).
    ``strip_prefix`` removes e.g. ``"module."`` (DataParallel). If ``model_name`` is registered or a
    ``factory`` is given, the weights are checked against the rebuilt model before writing.
    """
    if isinstance(obj, (str, os.PathLike)):
        src = Path(obj)
        if not src.is_file():
            raise FileNotFoundError(f"{src} does not exist")
        obj = _torch_load(src, "cpu")
    sd = _extract_state_dict(obj, state_dict_key)
    if strip_prefix:
        sd = {(k[len(strip_prefix):] if k.startswith(strip_prefix) else k): v for k, v in sd.items()}
    from .models import get_model_factory, list_models

    fn = resolve_factory(factory) if factory is not None else (
        get_model_factory(model_name) if model_name in list_models() else None)
    if fn is not None:
        check_state_dict(fn(**dict(model_kwargs or {})), sd, source=f"wrap_state_dict({model_name!r})")
    payload = _payload(sd, model_name=model_name, model_kwargs=model_kwargs, epoch=epoch, step=step,
                       regime=regime if regime is not None else {"name": "imported"}, dataset=dataset,
                       metrics=metrics, seed=seed, aux_state=None, extra=extra)
    return _atomic_save(payload, Path(out_path))


_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


def list_checkpoints(run_dir: PathLike) -> List[Path]:
    """The ``epoch_*.pt`` files of a run directory, sorted by epoch (``.partial`` files are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_file() and (m := _EPOCH_RE.match(p.name))]
    return [p for _, p in sorted(found)]





def summarize_run(run_dir: PathLike) -> List[Dict[str, Any]]:
    """One row per recorded epoch of a run directory (``metrics.csv`` written by ``trainers``, else
    the checkpoints' own metrics): epoch, train/test accuracy and loss, seconds, and whether a
    checkpoint file exists for that epoch."""
    import csv

    run_dir = Path(run_dir)
    ckpts = {int(p.stem.split("_")[-1]): p for p in list_checkpoints(run_dir)}
    rows: List[Dict[str, Any]] = []
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as fh:
            for rec in csv.DictReader(fh):
                try:
                    epoch = int(float(rec.get("epoch", "")))
                except ValueError:
                    continue
                row: Dict[str, Any] = {"epoch": epoch}
                for k in ("train_acc", "test_acc", "train_loss", "test_loss", "seconds"):
                    try:
                        row[k] = float(rec[k]) if rec.get(k) not in (None, "") else float("nan")
                    except ValueError:
                        row[k] = float("nan")
                rows.append(row)
    else:
        for epoch, path in sorted(ckpts.items()):
            m = load_checkpoint(path).metrics
            rows.append({"epoch": epoch, **{k: float(m.get(k, float("nan"))) for k in
                                            ("train_acc", "test_acc", "train_loss", "test_loss")}})
    for row in rows:
        row["checkpoint"] = ckpts[row["epoch"]].name if row["epoch"] in ckpts else ""
    return rows


def format_run_summary(rows: Sequence[Mapping[str, Any]], last: int = 0) -> str:
    """A small text table of :func:`summarize_run` rows (``last`` > 0: only the final rows), with the
    total training time when recorded."""
    import math

    def f(v: Any, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    shown = list(rows)[-last:] if last else list(rows)
    lines = [f"{'epoch':>5}  {'train_acc':>9}  {'test_acc':>8}  {'train_loss':>10}  {'test_loss':>9}  checkpoint"]
    for r in shown:
        lines.append(f"{r['epoch']:>5}  {f(r.get('train_acc'), '.4f'):>9}  {f(r.get('test_acc'), '.4f'):>8}  "
                     f"{f(r.get('train_loss'), '.4f'):>10}  {f(r.get('test_loss'), '.4f'):>9}  {r.get('checkpoint', '')}")
    secs = [r.get("seconds") for r in rows if isinstance(r.get("seconds"), float) and math.isfinite(r["seconds"])]
    if secs:
        lines.append(f"training time {sum(secs):.1f} s over {len(rows)} recorded epochs")
    return "\n".join(lines)


__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "list_checkpoints",
           "wrap_state_dict", "resolve_factory", "check_state_dict", "checkpoint_filename", "summarize_run", "format_run_summary"]
