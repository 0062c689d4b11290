"""Which options a run uses, checked in one place: an option a run does not use is an error.

Every regime declares the regime options it reads (``Regime.options``: TrainConfig fields such as
``temperature`` and ``regime_kwargs`` keys such as ``modules``), narrowed to the chosen sub-mode by
``Regime.options_for(config)`` (e.g. ``temperature`` only with a contrastive loss, ``epochs_per_layer``
only for asynchronous module training). Options of the optimiser and of the data pipeline are
conditional in the same way (``momentum`` only with SGD, ``milestones`` only with the step
schedule, ...). :func:`check_options` raises a ValueError naming the option and the regime for
every option that is *set* but not used; set = given on the command line (``explicit``), or, for
library calls, different from its default. :func:`used_config` is what config.json records.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from .config import TrainConfig

#: TrainConfig fields that belong to some regime (the rest is model, data, optimisation, run).
REGIME_FIELDS: Tuple[str, ...] = (
    "loss", "local_loss", "aux", "aux_hidden", "aux_max_features", "proj_dim", "temperature", "probe_lr",
    "aug_views", "aug_noise", "aug_crop_pad", "sp_topk", "epochs_per_layer", "nhsic_lambda", "nhsic_target",
    "nhsic_sigma", "nhsic_eps")

#: ``regime_kwargs`` keys with a flag of their own (key -> flag). Others go through --regime-kwargs.
KWARG_FLAGS: Dict[str, str] = {
    "modules": "--modules", "async": "--async", "epochs_per_module": "--epochs-per-module",
    "cache_rows": "--cache-rows", "infopro_loss": "--infopro-loss", "lambda1": "--lambda1",
    "lambda2": "--lambda2", "tau": "--tau", "context": "--context", "contsup_loss": "--contsup-loss",
    "ff_label": "--ff-label", "ff_mode": "--ff-mode", "ff_loss": "--ff-loss", "ff_norm": "--ff-norm",
    "threshold": "--ff-threshold", "directions": "--directions"}

#: Options that only matter under a condition on other options: name -> (condition, what it needs).
CONDITIONAL: Dict[str, Tuple[Callable[[TrainConfig], bool], str]] = {
    "momentum": (lambda c: c.optimizer == "sgd", "--optimizer sgd"),
    "nesterov": (lambda c: c.optimizer == "sgd", "--optimizer sgd"),
    "milestones": (lambda c: c.lr_schedule == "step", "--lr-schedule step"),
    "gamma": (lambda c: c.lr_schedule == "step", "--lr-schedule step"),
    "weight_decay_params": (lambda c: float(c.weight_decay) > 0, "--weight-decay > 0"),
    "train_crop_pad": (lambda c: c.train_augment != "none", "--train-augment crop or crop-flip"),
    "num_checkpoints": (lambda c: c.schedule == "log", "--schedule log"),
}

#: Why a declared regime option is not read in the chosen sub-mode (see ``Regime.options_for``);
#: a regime's own ``option_notes`` take precedence.
MODE_NOTES: Dict[str, str] = {
    "temperature": "only with a contrastive loss (--loss supcon|simclr, --local-loss supcon)",
    "aug_views": "only with a contrastive loss (--loss supcon|simclr, --local-loss supcon)",
    "aug_noise": "only with noise-shift contrastive views (--aug-views noise-shift, or auto on non-RGB data)",
    "aug_crop_pad": "only with noise-shift contrastive views (--aug-views noise-shift, or auto on non-RGB data)",
    "probe_lr": "only with --loss supcon|simclr",
    "aux_hidden": "only with --aux mlp|mlp2",
    "proj_dim": "only with --local-loss supcon|sim and an auxiliary network",
    "sp_topk": "only with --local-loss sp-hard",
    "nhsic_target": "only with --nhsic-lambda > 0",
    "nhsic_sigma": "only with --nhsic-lambda > 0",
    "nhsic_eps": "only with --nhsic-lambda > 0",
    "tau": "only with the contrastive local loss",
}

_DEFAULTS = TrainConfig()


def flag(name: str) -> str:
    """The command-line spelling of option ``name`` (a TrainConfig field or a regime kwarg)."""
    if name in KWARG_FLAGS:
        return KWARG_FLAGS[name]
    if name in {f.name for f in dataclasses.fields(TrainConfig)}:
        return "--" + name.replace("_", "-")
    return f"--regime-kwargs {name}=..."


def regime_options(config: TrainConfig) -> Optional[FrozenSet[str]]:
    """The regime options ``config``'s regime reads in its sub-mode (None: the regime declares none
    and checks its own ``regime_kwargs``)."""
    from .regimes import get_regime

    cls = get_regime(config.regime)
    opts = cls.options_for(config)
    return None if opts is None else frozenset(opts)


def set_options(config: TrainConfig, explicit: Optional[Iterable[str]] = None) -> List[str]:
    """Options of ``config`` that count as set: ``explicit`` names (fields or regime-kwargs keys),
    or, when None, every field that differs from its default; regime kwargs always count."""
    if explicit is not None:
        names = set(explicit)
    else:
        names = {f.name for f in dataclasses.fields(TrainConfig)
                 if f.name != "regime_kwargs" and getattr(config, f.name) != getattr(_DEFAULTS, f.name)}
    names |= set(config.regime_kwargs)
    return sorted(names)


def unused_options(config: TrainConfig, names: Iterable[str]) -> Dict[str, str]:
    """For each of ``names`` that ``config`` does not use: why (a sentence fragment)."""
    from .regimes import get_regime

    allowed = regime_options(config)
    cls = get_regime(config.regime)
    declared = set(cls.options or ())
    notes = {**MODE_NOTES, **getattr(cls, "option_notes", {})}
    out: Dict[str, str] = {}
    for name in names:
        if name in REGIME_FIELDS or name in config.regime_kwargs:
            if allowed is None:
                if name in REGIME_FIELDS:
                    out[name] = f"is not used by regime {config.regime!r}"
            elif name not in allowed:
                note = notes.get(name) if name in declared else None
                out[name] = (f"is not used by regime {config.regime!r}{_mode(config)}"
                             + (f": it is read {note}" if note else ""))
        elif name in CONDITIONAL:
            cond, needs = CONDITIONAL[name]
            if not cond(config):
                out[name] = f"is only used with {needs}"
    return out


def _mode(config: TrainConfig) -> str:
    """The sub-mode that narrowed the regime's options, for error messages."""
    if config.regime == "e2e":
        return f" with --loss {config.loss}"
    if config.regime.startswith("layerwise"):
        return f" with --local-loss {config.local_loss}"
    return ""


def check_options(config: TrainConfig, explicit: Optional[Iterable[str]] = None) -> None:
    """Raise a ValueError naming every set option that ``config`` does not use (and its regime)."""
    bad = unused_options(config, set_options(config, explicit))
    if bad:
        raise_unused(config, bad)


def raise_unused(config: TrainConfig, bad: Dict[str, str]) -> None:
    """The ValueError of :func:`check_options` for the options ``bad`` (name -> why)."""
    allowed = regime_options(config)
    lines = [f"{flag(n)} {why}" for n, why in sorted(bad.items())]
    hint = ""
    if allowed is not None and any("regime" in why for why in bad.values()):
        hint = (f"; regime {config.regime!r} uses: "
                + (", ".join(sorted(flag(n) for n in allowed)) if allowed else "no regime options"))
    raise ValueError("; ".join(lines) + hint)


def used_config(config: TrainConfig) -> Dict[str, Any]:
    """``config.to_dict()`` without the options the run does not use (what config.json records)."""
    d = config.to_dict()
    allowed = regime_options(config)
    for name in REGIME_FIELDS:
        if allowed is None or name not in allowed:
            d.pop(name, None)
    for name, (cond, _) in CONDITIONAL.items():
        if not cond(config):
            d.pop(name, None)
    if d.get("preset") is None:
        d.pop("preset", None)
    return d


__all__ = ["REGIME_FIELDS", "KWARG_FLAGS", "CONDITIONAL", "flag", "regime_options", "set_options",
           "unused_options", "check_options", "raise_unused", "used_config"]
