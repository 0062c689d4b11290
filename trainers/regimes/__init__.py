"""Training regimes: a name -> :class:`Regime` subclass registry.

Every regime is a subclass of :class:`trainers.regimes.base.Regime` registered with
``@register_regime("name")`` in a module of this package; modules of this package are imported
on first use of the registry, so adding a regime is: create ``trainers/regimes/<mine>.py``::

    from .base import Regime
    from . import register_regime

    @register_regime("my-regime")
    class MyRegime(Regime):
        options = ("temperature", "my_option")  # every option it reads (fields + regime_kwargs keys)
        def __init__(self, model, config, device):
            super().__init__(model, config, device)
            self.heads["fc1"] = ...           # auxiliary modules (saved under aux_state)
            self.configure_optimizers()         # the configured optimiser and lr schedule
        def training_step(self, x, y):
            loss = ...                          # no .backward() inside any forward()
            self.step(loss)                     # zero_grad, backward, optimiser step
            return {"loss": float(loss)}
        def describe(self):
            return {"name": self.name, "my_option": self.config.regime_kwargs.get("my_option")}

Options a regime needs beyond :class:`trainers.config.TrainConfig` come from
``config.regime_kwargs`` (CLI: ``--regime-kwargs key=value``, or a flag of its own in
``trainers.__main__``). ``options`` declares what the regime reads; ``options_for(config)`` may narrow
it to the sub-mode (e.g. ``temperature`` only with a contrastive loss): ``train()`` and the CLI refuse
any other regime option that is set (``trainers.options``). Override ``predict`` when the
backbone's logits are not the prediction (e.g. a linear evaluation head), ``total_epochs`` /
``is_staged`` + ``stage_of`` / ``enter_stage`` for staged training (see ``layerwise.py``'s sequential regime), ``aux_state``
for extra state. The loop (``trainers.loop``) does data, seeding, evaluation and checkpoints.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, List, Type

from .base import Regime, make_optimizer

_REGISTRY: Dict[str, Type[Regime]] = {}
_DISCOVERED = False


def register_regime(name: str) -> Callable[[Type[Regime]], Type[Regime]]:
    """Class decorator: register a :class:`Regime` subclass under ``name`` (sets ``cls.name``)."""

    def deco(cls: Type[Regime]) -> Type[Regime]:
        if not (isinstance(cls, type) and issubclass(cls, Regime)):
            raise ValueError(f"register_regime({name!r}) needs a Regime subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"regime name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def list_regimes() -> List[str]:
    """Sorted names of every registered regime."""
    _discover()
    return sorted(_REGISTRY)


def get_regime(name: str) -> Type[Regime]:
    """The :class:`Regime` class registered under ``name``."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown regime {name!r}; registered regimes are: {', '.join(sorted(_REGISTRY))}") from None


__all__ = ["Regime", "make_optimizer", "register_regime", "list_regimes", "get_regime"]
