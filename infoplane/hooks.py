"""Choose layers of a network and capture their outputs with forward hooks.

Layer names are the module paths of ``named_modules()`` (docs/formats_store.md, "Activation store").
A module called more than once in one forward pass is recorded as ``name:1``, ``name:2``, ...
By default hooks store ``output.detach().clone()`` so that in-place operations downstream
(``ReLU(inplace=True)``) cannot change what was saved. With ``copy="auto"`` (what ``extract`` uses)
they keep the detached output itself and its version counter; :meth:`Captured.intact` then tells,
after the forward pass, whether an in-place operation changed a kept output (the caller runs the
batch again, and from then on that module's output is cloned). Inside :func:`not_captured` the hooks
record nothing: inference networks use it for auxiliary passes through the same layers (e.g.
forward-forward's per-label goodness passes), so each layer is stored once, from the pass that
defines its representation.
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

LayerSpec = Union[str, Sequence[str]]

_GLOB_CHARS = set("*?[")
_SUSPENDED: ContextVar[bool] = ContextVar("infoplane_hooks_suspended", default=False)


@contextmanager
def not_captured() -> Iterator[None]:
    """Within this block the hooks of :func:`capture` record nothing (auxiliary forward passes)."""
    token = _SUSPENDED.set(True)
    try:
        yield
    finally:
        _SUSPENDED.reset(token)


def default_layers(model: nn.Module) -> List[str]:
    """The layers ``"all"`` selects: a LayeredNet's top-level layers, else every leaf module."""
    from infoplane.models.base import LayeredNet

    if isinstance(model, LayeredNet):
        return list(model.layer_names)
    leaves = [name for name, mod in model.named_modules() if name and not any(True for _ in mod.children())]
    if not leaves:
        raise ValueError(f"model {type(model).__name__} has no submodules to hook; "
                         "wrap it in an nn.Sequential or pass a model with named layers")
    return leaves


def list_layers(model: nn.Module) -> List[Tuple[str, str]]:
    """Every selectable module path with its class name (the root module excluded)."""
    return [(name, type(mod).__name__) for name, mod in model.named_modules() if name]


def resolve_layers(model: nn.Module, layers: LayerSpec = "all") -> List[str]:
    """Turn a layer specification into module paths, in network (``named_modules``) order.

    ``layers``: ``"all"``; a comma-separated string or a list of names; names may be glob patterns
    (``"features.*"``) matched against ``named_modules()``. Unknown names raise ValueError listing
    the valid ones.
    """
    if isinstance(layers, str):
        tokens = [t.strip() for t in layers.split(",") if t.strip()]
    else:
        tokens = [str(t).strip() for t in layers]
    if not tokens:
        raise ValueError("no layers given; pass 'all', a comma-separated list of names or glob patterns")
    valid = [name for name, _ in model.named_modules() if name]
    chosen: set = set()
    for tok in tokens:
        if tok == "all":
            chosen.update(default_layers(model))
        elif _GLOB_CHARS & set(tok):
            hits = fnmatch.filter(valid, tok)
            if not hits:
                raise ValueError(f"layer pattern {tok!r} matches no module; valid layer names are: "
                                 f"{', '.join(valid)}")
            chosen.update(hits)
        elif tok in valid:
            chosen.add(tok)
        else:
            raise ValueError(f"unknown layer {tok!r}; valid layer names are: {', '.join(valid)} "
                             "(or 'all', or a glob pattern such as 'features.*')")
    return [name for name in valid if name in chosen]


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot capture a module output of type {type(output).__name__}; choose a layer "
                    "that returns a tensor")


#: ``transform(module_path, call_index, output)``: applied to each captured output in the hook
Transform = Callable[[str, int, torch.Tensor], torch.Tensor]


def _version(t: torch.Tensor) -> Optional[int]:
    """The tensor's in-place version counter (None: not tracked, e.g. an inference-mode tensor)."""
    try:
        return int(t._version)
    except (RuntimeError, AttributeError):
        return None


class Captured(OrderedDict):
    """``{name: tensor (N, ...)}`` of the last forward pass, in network order (see :func:`capture`).

    ``copy_paths``: the module paths whose outputs are cloned in the hook (``copy="auto"``; None
    until the first pass, which clones every output and learns which ones are changed in place)."""

    def __init__(self, copy: Union[bool, str]) -> None:
        super().__init__()
        self.copy = copy
        self.copy_paths: Optional[Set[str]] = None
        self._track: Dict[str, Tuple[str, torch.Tensor, Optional[int]]] = {}

    def _must_copy(self, path: str) -> bool:
        return self.copy is True or self.copy_paths is None or path in self.copy_paths

    def intact(self) -> bool:
        """After a forward pass: True when every kept output still holds the values its module
        returned. False when an in-place operation later in the pass changed a kept (not cloned)
        output; its module is then cloned from now on and the caller must run the pass again.
        With ``copy=True`` always True."""
        if self.copy is True:
            return True
        changed = {path for path, t, v in self._track.values() if v is not None and _version(t) != v}
        if self.copy_paths is None:  # first pass: everything was cloned; remember what needs it
            self.copy_paths = changed
            return True
        unsafe = changed - self.copy_paths
        self.copy_paths |= changed
        return not unsafe


@contextmanager
def capture(model: nn.Module, layers: LayerSpec = "all", *, copy: Union[bool, str] = True,
            transform: Optional[Transform] = None) -> Iterator[Captured]:
    """Context manager: hook ``layers`` of ``model``; yields a dict filled by every ``model(x)``.

    After each forward pass of the root module the dict holds ``{name: tensor (N, ...)}`` for the
    chosen layers in network order (``name:1``, ``name:2`` for modules called twice). The dict is
    cleared at the start of each forward pass. Hooks are removed on exit.

    copy: ``True`` clones every output (safe whatever the model does afterwards); ``"auto"`` keeps
    the detached output and clones only modules whose outputs were seen changed in place, and
    outputs that share memory with a parameter or buffer of the model (call
    :meth:`Captured.intact` after each pass and run the pass again when it returns False).
    transform: ``f(module_path, call_index, output) -> tensor``, applied in the hook (e.g. a
    reduction of the output), so that only its result is kept.
    """
    if copy is not True and copy != "auto":
        raise ValueError(f"copy must be True or 'auto', not {copy!r}")
    names = resolve_layers(model, layers)
    modules = dict(model.named_modules())
    result = Captured(copy)
    # outputs that are a parameter or buffer of the model (or a view of one) are always cloned
    held = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    calls: Dict[str, List[torch.Tensor]] = OrderedDict((n, []) for n in names)
    handles = []

    def make_hook(name: str):
        def hook(_mod, _inp, out):
            if _SUSPENDED.get():
                return
            lst = calls[name]
            t = _first_tensor(out).detach()
            if transform is not None:
                t = transform(name, len(lst) + 1, t)
            if copy is True:
                lst.append(t.clone())
                return
            v = _version(t)
            result._track[f"{name}\0{len(lst)}"] = (name, t, v)
            own = v is None or result._must_copy(name) or t.untyped_storage().data_ptr() in held
            lst.append(t.clone() if own else t)
        return hook

    def start(_mod, _inp):
        result.clear()
        result._track.clear()
        for lst in calls.values():
            lst.clear()

    def finish(_mod, _inp, _out):
        result.clear()
        for name, lst in calls.items():
            if len(lst) == 1:
                result[name] = lst[0]
            else:
                for i, t in enumerate(lst, start=1):
                    result[f"{name}:{i}"] = t
            lst.clear()

    try:
        handles.append(model.register_forward_pre_hook(start))
        for name in names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        handles.append(model.register_forward_hook(finish))
        yield result
    finally:
        for h in handles:
            h.remove()
        result._track.clear()


def split_call_name(name: str) -> Tuple[str, int]:
    """``"fc1:2" -> ("fc1", 2)``; ``"fc1" -> ("fc1", 1)`` (module path and call index)."""
    base, sep, idx = name.rpartition(":")
    if sep and idx.isdigit():
        return base, int(idx)
    return name, 1
