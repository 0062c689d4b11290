"""Presets: the settings a paper's experiments used, by name (CLI ``--preset NAME``).

A preset is a set of :class:`~trainers.config.TrainConfig` values (regime options under
``regime_kwargs``). Explicit settings override it; a preset value the final regime does not use
(e.g. an InfoPro option after ``--regime greedy``) is dropped, while an explicit option the regime
does not use is an error. With ``lr_batch`` the preset's learning rate belongs to that batch size
and scales linearly with ``--batch-size`` unless ``--lr`` is given (Goyal et al. 2017's rule, as
Wang et al. 2021 app. F use it: 0.8 for 1024, 0.1 for 128). config.json records the preset's name
and source under ``resolved.preset`` and the resolved values under ``config``.

| name | source |
| --- | --- |
| ``sakamoto2024`` | Sakamoto & Sato 2024, app. F.1.1 (the defaults of TrainConfig) |
| ``sakamoto2024-toy`` | Sakamoto & Sato 2024, sec. 4.2, Figure 4 (toy rank collapse) |
| ``wang2021-cifar`` | Wang et al. 2021, app. F; lambdas of the authors' ResNet-32 K = 4 command |
| ``yu2023-cifar`` | Yu et al. 2023 (ContSup), app. C.1-C.2 |
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import TrainConfig

SAKAMOTO = ("Sakamoto & Sato 2024, \"End-to-End Training Induces Information Bottleneck through "
            "Layer-Role Differentiation\"")
WANG = "Wang et al. 2021, \"Revisiting Locally Supervised Learning: an Alternative to End-to-end Training\""
YU = ("Yu et al. 2023, \"Go beyond End-to-End Training: Boosting Greedy Local Learning with Context "
      "Supply\" (ContSup)")

#: The locally-supervised CIFAR-10 setup shared by Wang et al. 2021 (app. F) and Yu et al. 2023
#: (app. C.1-C.2): SGD, Nesterov momentum 0.9, weight decay 1e-4, 160 epochs, lr 0.8 at batch 1024,
#: cosine annealing (with the 10-epoch warm-up of both reference implementations), 4-pixel
#: translation + horizontal flip, ResNet-32.
_GLL_CIFAR: Dict[str, Any] = dict(
    model="resnet32", dataset="cifar10", optimizer="sgd", momentum=0.9, nesterov=True, lr=0.8,
    batch_size=1024, weight_decay=1e-4, lr_schedule="cosine", warmup=10, epochs=160,
    train_augment="crop-flip", train_crop_pad=4)


@dataclass(frozen=True)
class Preset:
    """A named set of settings and where they come from.

    short: a one-line citation; source: authors, year, title and section;
    settings: TrainConfig values (``regime_kwargs`` for regime options); lr_batch: the batch size
    ``settings["lr"]`` belongs to (scaled linearly to the run's batch size), None = not scaled;
    notes: what the source does not state and was chosen here."""

    name: str
    short: str
    source: str
    settings: Mapping[str, Any]
    lr_batch: Optional[int] = None
    notes: Tuple[str, ...] = ()

    def describe(self) -> Dict[str, Any]:
        """The record written to config.json (``resolved.preset``)."""
        d: Dict[str, Any] = {"name": self.name, "source": self.source,
                             "settings": copy.deepcopy(dict(self.settings))}
        if self.lr_batch is not None:
            d["lr_rule"] = f"lr = {self.settings['lr']} x batch_size / {self.lr_batch} unless --lr is given"
        if self.notes:
            d["notes"] = list(self.notes)
        return d


PRESETS: Dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` to the registry (names are unique); its settings must be TrainConfig fields."""
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is registered twice")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(preset.settings) - fields)
    if unknown:
        raise ValueError(f"preset {preset.name!r} sets unknown TrainConfig fields {unknown}")
    PRESETS[preset.name] = preset
    return preset


register_preset(Preset(
    "sakamoto2024", "Sakamoto & Sato 2024, app. F.1.1", SAKAMOTO + ", app. F.1.1",
    dict(dataset="cifar10", optimizer="adam", lr=5e-4, weight_decay=0.0, lr_schedule="step", milestones=None,
         gamma=0.2, epochs=400, batch_size=128),
    notes=("learning rate x 0.2 at [200, 300, 350, 375] of 400 epochs (the same fractions of --epochs)",
           "lr chosen from {5e-4, 1e-3} and weight decay from {0, 5e-4} in the paper: 5e-4 and 0 here",
           "batch size not stated in the paper: 128",
           "model and regime are the run's (Table 1 spans VGG / ResNet, E2E and every layer-wise loss)")))

register_preset(Preset(
    "sakamoto2024-toy", "Sakamoto & Sato 2024, sec. 4.2", SAKAMOTO + ", sec. 4.2 and Figure 4",
    dict(model="toy-linear", dataset="toy-rings", regime="layerwise", local_loss="ce", aux="linear",
         optimizer="sgd", momentum=0.9, nesterov=False, lr=0.1, weight_decay=1e-2, weight_decay_params=("w",),
         lr_schedule="step", milestones=None, gamma=0.2, epochs=30, batch_size=128),
    notes=("z_1 = W x with W the bias-free 2x2 first layer 'w', a linear auxiliary classifier on z_1 "
           "(two logits: softmax CE = the logistic loss of eq. 9 on their difference) and the penalty "
           "lambda ||W||_F^2 on W only: weight_decay = 2 lambda = 1e-2 on 'w.weight'",
           "the paper gives no optimiser, learning rate, lambda or epoch count for the toy example; "
           "gradient descent is what eq. 10 analyses: SGD (momentum 0.9), lr 0.1, batch 128, 30 epochs "
           "were chosen so that W's second singular value collapses within the run",
           "measured (seeds 0, 1, 2; singular values of W at epoch 30): layer-wise 0.014 / 0.81, "
           "0.0013 / 0.80, 0.0073 / 0.82 (test accuracy ~0.95); --regime e2e keeps rank 2: 0.28 / 0.30, "
           "0.23 / 0.28, 0.54 / 0.57 (accuracy 1.0)",
           "the layers after W are the Toy-MLP's (512 units x 5 ReLU layers, then 'out')")))

register_preset(Preset(
    "wang2021-cifar", "Wang et al. 2021, app. F", WANG + ", app. F (CIFAR-10, ResNet-32) and the authors' "
    "K = 4 command",
    dict(_GLL_CIFAR, regime="infopro", regime_kwargs={"modules": 4, "infopro_loss": "contrast"}),
    lr_batch=1024,
    notes=("lambdas: the authors' ResNet-32 CIFAR-10 command for the run's K (K = 4: lambda1 6 -> 1, "
           "lambda2 0 -> 2; tau 0.07), see trainers.regimes.infopro.REFERENCE_LAMBDAS",
           "the 10-epoch linear warm-up is the reference code's (cos_lr), not stated in the paper; "
           "here lr x e / 11 in epochs e <= 10",
           "training translation pads by reflection as the reference code does on CIFAR",
           "the same optimisation serves greedy / dgl (--regime greedy|dgl; Table 1 uses it for all)")))

register_preset(Preset(
    "yu2023-cifar", "Yu et al. 2023 (ContSup), app. C.2", YU + ", app. C.1-C.2 (CIFAR-10, ResNet-32)",
    dict(_GLL_CIFAR, regime="contsup", regime_kwargs={"modules": 4, "context": "R1E"}),
    lr_batch=1024,
    notes=("C.2 states SGD (Nesterov 0.9), weight decay 1e-4, 160 epochs, lr 0.8 at batch 1024; the "
           "cosine schedule with a 10-epoch warm-up is the authors' reference code (cos_lr on by default)",
           "Table 2 reports K = 2, 4, 8, 16 and contexts E / R1E with softmax or contrastive local "
           "losses: K = 4, R1E and the regime's default loss here (--modules, --context, --contsup-loss)")))


def list_presets() -> List[str]:
    """Sorted names of every preset."""
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets are: {', '.join(list_presets())}") from None


def resolve(explicit: Mapping[str, Any], preset: Optional[str] = None) -> TrainConfig:
    """The TrainConfig of ``preset`` (None: the defaults) with the ``explicit`` settings on top.

    ``explicit``: TrainConfig fields the user set (``regime_kwargs`` / ``model_kwargs`` dicts merge
    key by key). Raises a ValueError naming any explicit option the resulting regime does not use;
    preset settings the regime does not use are dropped."""
    from .options import check_options, raise_unused, unused_options

    p = get_preset(preset) if preset is not None else None
    ex = dict(explicit)
    ex_kw = dict(ex.pop("regime_kwargs", None) or {})
    ex_mk = dict(ex.pop("model_kwargs", None) or {})
    if "preset" in ex:
        raise ValueError("pass the preset as the `preset` argument, not as a setting")
    values: Dict[str, Any] = copy.deepcopy(dict(p.settings)) if p is not None else {}
    kw = dict(values.pop("regime_kwargs", {}) or {})
    mk = dict(values.pop("model_kwargs", {}) or {})
    if p is not None and "model" in ex and ex["model"] != p.settings.get("model"):
        mk = {}  # the preset's model kwargs belong to its model
    values.update(ex)
    kw.update(ex_kw)
    mk.update(ex_mk)
    if p is not None and p.lr_batch is not None and "lr" not in ex:
        bs = int(values.get("batch_size", TrainConfig.batch_size))
        values["lr"] = float(p.settings["lr"]) * bs / int(p.lr_batch)
    values.update(regime_kwargs=kw, model_kwargs=mk, preset=p.name if p is not None else None)
    cfg = TrainConfig(**values)

    explicit_names = set(ex) | set(ex_kw)
    preset_names = set()
    if p is not None:
        preset_names = (set(p.settings) - {"regime_kwargs", "model_kwargs"}) | set(p.settings.get("regime_kwargs") or {})
    unused = unused_options(cfg, explicit_names | preset_names | set(kw))
    bad = {n: why for n, why in unused.items() if n in explicit_names}
    if bad:
        raise_unused(cfg, bad)
    drop = [n for n in unused if n not in explicit_names]
    if drop:
        defaults = TrainConfig()
        for name in drop:
            if name in kw:
                kw.pop(name)
            else:
                values[name] = copy.deepcopy(getattr(defaults, name))
        values["regime_kwargs"] = kw
        cfg = TrainConfig(**values)
    check_options(cfg, explicit_names | (preset_names - set(drop)))
    return cfg


__all__ = ["Preset", "PRESETS", "register_preset", "list_presets", "get_preset", "resolve"]
