"""infoplane: information-plane analysis of neural networks.

Stages (each a file with a documented format, see docs/):
checkpoints (``infoplane.checkpoint``) -> activations (``infoplane.hooks``, ``infoplane.store``)
-> estimates (``infoplane.estimators``, ``infoplane.estimate``) -> figures (``infoplane.plot``).

Notebook API (``import infoplane as ip``; docs/notebook.md)::

    ip.extract(checkpoints_or_model, data=None, layers=..., out="acts.h5")  -> Path of the store
    ip.ActivationStore(path)                                                -> the store (repr, to_dataframe)
    ip.estimate(store, batch_size=100, ...)                                 -> DataFrame of estimates
    ip.plot_plane(df, ax=... | fig=..., out=None)                           -> matplotlib Figure
    ip.plot_curves(df, ax=... | fig=..., out=None)                          -> matplotlib Figure
    ip.report(inputs, out, ...)                                             -> Path of report.md
    ip.dependence(z, x) / ip.assess(z, x)                                   -> a value / DependenceResult
    ip.load_checkpoint(path) / ip.save_checkpoint(path, model, ...)
    ip.image_folder(root)                                                   -> torchvision ImageFolder

Everything is imported on first use (PEP 562), so ``import infoplane`` loads neither torch nor
h5py, pandas or matplotlib. ``ip.extract``, ``ip.estimate`` and ``ip.report`` share their names
with the submodules ``infoplane.extract``, ``infoplane.estimate`` and ``infoplane.report``: each is
that submodule, made callable, so ``ip.estimate(...)`` runs the stage while
``import infoplane.estimate as est`` and ``from infoplane.estimate import EstimateConfig`` keep
working. ``inspect.signature(ip.estimate)`` and ``help`` show the function that a call runs.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

if TYPE_CHECKING:  # annotations only: nothing heavy is imported at run time
    from os import PathLike

    import pandas as pd

    from infoplane.estimate import EstimateConfig
    from infoplane.store import ActivationStore

__version__ = "0.1.0"

#: Public name -> (module, attribute). The three stage names are the callable submodules.
_EXPORTS: Dict[str, Tuple[str, str]] = {
    "ActivationStore": ("infoplane.store", "ActivationStore"),
    "StoreError": ("infoplane.store", "StoreError"),
    "extract": ("infoplane.extract", ""),
    "estimate": ("infoplane.estimate", ""),
    "report": ("infoplane.report", ""),
    "EstimateConfig": ("infoplane.estimate", "EstimateConfig"),
    "dependence": ("infoplane.estimators", "dependence"),
    "assess": ("infoplane.estimators", "assess"),
    "DependenceResult": ("infoplane.estimators", "DependenceResult"),
    "plot_plane": ("infoplane.plot", "plot_information_plane"),
    "plot_curves": ("infoplane.plot", "plot_layer_curves"),
    "load_checkpoint": ("infoplane.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("infoplane.checkpoint", "save_checkpoint"),
    "image_folder": ("infoplane.data", "image_folder"),
}

#: Submodules reachable as attributes (``ip.data.load_dataset``) without an explicit import.
_SUBMODULES = ("bounds", "checkpoint", "cli", "data", "demo", "device", "estimate", "estimators", "extract",
               "hooks", "inference", "kernels", "models", "plot", "report", "store", "weights")

#: Submodule -> "module:function" run when the submodule is called.
_STAGES: Dict[str, str] = {
    "extract": "infoplane.extract:extract",
    "estimate": "infoplane:_estimate",
    "report": "infoplane.report:build_report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def _estimate(store: Union[str, "PathLike[str]", "ActivationStore"], config: Optional["EstimateConfig"] = None,
              **options: Any) -> "pd.DataFrame":
    """Estimate dependence between every stored layer Z and the inputs X / labels Y of a store.

    store: the path of an activation store (or an open :class:`ActivationStore`, whose path is
    used). config: an :class:`~infoplane.estimate.EstimateConfig`; ``options`` are its fields as
    keywords and override it, e.g. ``ip.estimate("acts.h5", batch_size=500, layers="conv*,fc1")``
    (``layers`` / ``checkpoints`` take a list or a comma-separated string of names or globs). An
    unknown keyword is a ``TypeError`` naming it and listing the valid ones.

    Returns the tidy table of :func:`infoplane.estimate.estimate_store`: one row per checkpoint x
    layer x target (``x``, ``y``) with ``value``, the exact chance level ``null_mean`` /
    ``null_sd``, ``z = (value - null_mean) / null_sd`` and ``adjusted`` (0 = chance, 1 = maximal).
    """
    import dataclasses
    from pathlib import Path

    from infoplane.estimate import EstimateConfig, estimate_store

    valid = [f.name for f in dataclasses.fields(EstimateConfig)]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise TypeError(f"estimate() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                        f"valid options are the EstimateConfig fields: {', '.join(valid)}")
    if config is not None and not isinstance(config, EstimateConfig):
        raise TypeError(f"config must be an EstimateConfig (or None), not {type(config).__name__}; pass "
                        "options as keywords instead, e.g. ip.estimate(store, batch_size=500)")
    for key in ("layers", "checkpoints"):
        if isinstance(options.get(key), str):
            options[key] = [t.strip() for t in options[key].split(",") if t.strip()]
    cfg = dataclasses.replace(config if config is not None else EstimateConfig(), **options)
    path = getattr(store, "path", store)
    if not isinstance(path, (str, Path)):
        raise TypeError(f"store must be the path of an activation store (str or Path) or an ActivationStore, "
                        f"not {type(store).__name__}")
    return estimate_store(path, cfg)


def _target(spec: str) -> Any:
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _callable_module(module: types.ModuleType, spec: str) -> None:
    """Give ``module`` a class whose ``__call__`` runs ``spec`` (looked up at each call, so that
    patching the module's function patches the call too)."""
    if type(module) is not types.ModuleType:
        return

    def __call__(self: types.ModuleType, *args: Any, **kwargs: Any) -> Any:
        return _target(spec)(*args, **kwargs)

    def _signature(self: types.ModuleType) -> Any:
        import inspect

        return inspect.signature(_target(spec))

    fn = _target(spec) if not spec.startswith("infoplane:") else globals()[spec.partition(":")[2]]
    __call__.__doc__ = fn.__doc__
    cls = type("CallableModule", (types.ModuleType,),
               {"__call__": __call__, "__signature__": property(_signature), "__module__": __name__,
                "__doc__": f"The module {module.__name__}; calling it calls {spec.replace(':', '.')}."})
    module.__class__ = cls


class _Package(types.ModuleType):
    """The ``infoplane`` package: binding a stage submodule to it makes the submodule callable."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in _STAGES and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            _callable_module(value, _STAGES[name])
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        mod_name, attr = _EXPORTS[name]
        module = importlib.import_module(mod_name)
        value = getattr(module, attr) if attr else module
        if attr:
            globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(__all__) | set(_SUBMODULES))


sys.modules[__name__].__class__ = _Package
for _name in _STAGES:  # a stage submodule imported before this line (never, in practice) is made callable too
    if f"{__name__}.{_name}" in sys.modules:
        _callable_module(sys.modules[f"{__name__}.{_name}"], _STAGES[_name])
del _name
