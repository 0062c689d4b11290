"""Training configuration: one flat dataclass whose defaults are the main paper's settings.

Defaults follow Sakamoto & Sato 2024, "End-to-End Training Induces Information Bottleneck through
Layer-Role Differentiation", appendix F.1.1: Adam, learning rate 5e-4 (chosen from {5e-4, 1e-3}),
learning rate multiplied by 0.2 at epochs [200, 300, 350, 375] of 400 (here: the same fractions
[1/2, 3/4, 7/8, 15/16] of ``epochs`` unless ``milestones`` is given), weight decay 0.0 (chosen from
{0, 5e-4}). The paper does not give a batch size; 128 is used. nHSIC settings follow F.1.2 (RBF
kernel, sigma = 5 sqrt(d), eps = 1e-5). Other papers' settings are presets (``trainers.presets``).

The learning rate of (1-based) epoch e of a run (or stage) of E epochs is ``lr * f(e)``:

* ``lr_schedule="step"``:   f(e) = gamma ** #{milestones m : m < e}  (decay after epoch m);
* ``lr_schedule="cosine"``: f(e) = (1 + cos(pi (e - 1) / E)) / 2     (cosine annealing to 0);

times ``min(1, e / (warmup + 1))`` during a linear warm-up of ``warmup`` epochs.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

#: Fractions of the run at which the learning rate decays (400-epoch schedule of F.1.1).
PAPER_MILESTONE_FRACTIONS: Tuple[float, ...] = (200 / 400, 300 / 400, 350 / 400, 375 / 400)

E2E_LOSSES = ("ce", "supcon", "simclr")
LOCAL_LOSSES = ("ce", "supcon", "sim", "sp-hard", "sp-soft")
AUX_KINDS = ("auto", "none", "linear", "mlp", "mlp2", "conv")
SCHEDULES = ("every", "log")
NHSIC_TARGETS = ("input", "block-input")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("step", "cosine")
TRAIN_AUGMENTS = ("none", "crop", "crop-flip")
VIEW_RECIPES = ("auto", "noise-shift", "crop-color")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``trainers.train(TrainConfig(...))`` runs it.

    Model and data
        model, model_kwargs: a name of ``infoplane.models`` and its keyword arguments
        (``input_shape``/``num_classes`` are filled in from the dataset).
        dataset, data_root, download: see ``infoplane.data.load_dataset``.
        subset / test_subset: use a seeded random subset of N training / test samples
        (``test_subset=None`` uses ``subset`` for the test set too).
        train_augment: augmentation of the training batches (none | crop: random translation by up
        to ``train_crop_pad`` pixels, reflect padding | crop-flip: and a horizontal flip, p = 0.5;
        the "4x4 random translation followed by random horizontal flip" of Wang et al. 2021 app. F).
    Regime (see docs/regimes.md; each regime declares which of these it reads, ``Regime.options``)
        regime: a name of ``trainers.regimes`` (e2e, layerwise, layerwise-sequential, ...).
        loss: the E2E loss (ce|supcon|simclr). local_loss: the layer-wise loss
        (ce|supcon|sim|sp-hard|sp-soft). aux: auxiliary network (none|linear|mlp|mlp2|conv, or
        auto = the loss's choice in B.2: linear for ce/supcon, conv for sim, none for sp).
        epochs_per_layer: sequential layer-wise training (then epochs = this x number of layers).
        nhsic_lambda, nhsic_target, nhsic_sigma, nhsic_eps: the augmenting term of eq. 11.
        temperature, proj_dim, aug_views, aug_noise, aug_crop_pad: contrastive losses (eq. 14);
        aug_views picks the view recipe (auto: crop-color on RGB images, noise-shift otherwise);
        probe_lr: the learning rate of the linear evaluation head of contrastive E2E runs.
        regime_kwargs: options of the other regimes (modules, context, lambda1, ...; each has a
        flag of its own on the CLI, see ``python -m trainers --help``).
    Optimisation
        optimizer (adam|sgd), lr, weight_decay (torch convention: gradient + weight_decay * w, i.e.
        the penalty (weight_decay / 2) ||w||^2), weight_decay_params (backbone parameter-name
        prefixes that get weight decay; None = every parameter), momentum and nesterov (sgd),
        lr_schedule (step|cosine), warmup (epochs of linear warm-up), milestones (epochs; None =
        paper fractions of the run) and gamma (step), batch_size, epochs.
    Run
        seed; deterministic: also ask torch for deterministic kernels (bit-identical CUDA runs,
        slower; CPU runs are reproducible without it). out: output directory; schedule: save a
        checkpoint every epoch or on a log-spaced grid of ``num_checkpoints`` epochs; save_init
        writes epoch_0000.pt (initialisation). preset: the name of the preset the configuration was
        resolved from (:meth:`from_preset`, CLI ``--preset``; a label, nothing is applied here).
        precision: fp32 | bf16 | fp16, the autocast dtype of the training forward passes (fp16 with
        gradient scaling, CUDA only; ``trainers.precision``); evaluation always runs in float32.
    Several processes (``torchrun``, see ``trainers.distributed``): ``batch_size`` is the global batch,
    split evenly across the processes.
    """

    # model and data
    model: str = "lenet5"
    dataset: str = "digits"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data_root: str = "data"
    download: bool = False
    subset: Optional[int] = None
    test_subset: Optional[int] = None
    train_augment: str = "none"
    train_crop_pad: int = 4
    # regime
    regime: str = "e2e"
    loss: str = "ce"
    local_loss: str = "ce"
    aux: str = "auto"
    aux_hidden: int = 512
    aux_max_features: int = 2048
    proj_dim: int = 128
    temperature: float = 0.1
    probe_lr: float = 1e-2
    aug_views: str = "auto"
    aug_noise: float = 0.1
    aug_crop_pad: Optional[int] = None
    sp_topk: int = 6
    epochs_per_layer: Optional[int] = None
    nhsic_lambda: float = 0.0
    nhsic_target: str = "input"
    nhsic_sigma: Any = "paper"
    nhsic_eps: float = 1e-5
    regime_kwargs: Dict[str, Any] = field(default_factory=dict)
    # optimisation
    optimizer: str = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    weight_decay_params: Optional[Tuple[str, ...]] = None
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "step"
    warmup: int = 0
    milestones: Optional[Tuple[int, ...]] = None
    gamma: float = 0.2
    batch_size: int = 128
    eval_batch_size: int = 1000
    epochs: int = 100
    # run
    seed: int = 0
    deterministic: bool = False
    allow_nonfinite: bool = False
    device: str = "auto"
    precision: str = "fp32"
    out: Optional[str] = None
    overwrite: bool = False
    schedule: str = "every"
    num_checkpoints: int = 30
    save_init: bool = True
    eval_train: bool = True
    num_workers: int = 0
    progress: bool = True
    preset: Optional[str] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the allowed values."""
        def choice(name: str, allowed: Tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")

        choice("loss", E2E_LOSSES)
        choice("local_loss", LOCAL_LOSSES)
        choice("aux", AUX_KINDS)
        choice("schedule", SCHEDULES)
        choice("nhsic_target", NHSIC_TARGETS)
        choice("optimizer", OPTIMIZERS)
        choice("lr_schedule", LR_SCHEDULES)
        choice("train_augment", TRAIN_AUGMENTS)
        choice("aug_views", VIEW_RECIPES)
        choice("precision", PRECISIONS)
        for name in ("epochs", "batch_size", "eval_batch_size", "num_checkpoints", "aux_hidden",
                     "aux_max_features", "proj_dim", "sp_topk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("subset", "test_subset", "epochs_per_layer"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        for name in ("lr", "temperature", "probe_lr"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "nhsic_lambda", "aug_noise", "nhsic_eps", "momentum", "warmup",
                     "train_crop_pad"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if int(self.warmup) != self.warmup:
            raise ValueError(f"warmup is a number of epochs, got {self.warmup!r}")
        self.warmup = int(self.warmup)
        if self.nesterov and not float(self.momentum) > 0:
            raise ValueError("nesterov needs momentum > 0 (torch.optim.SGD)")
        if not 0 < float(self.gamma) <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.milestones is not None:
            ms = tuple(int(m) for m in self.milestones)
            if any(m < 1 for m in ms) or list(ms) != sorted(set(ms)):
                raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones!r}")
            self.milestones = ms
        if self.weight_decay_params is not None:
            if isinstance(self.weight_decay_params, str):
                self.weight_decay_params = (self.weight_decay_params,)
            self.weight_decay_params = tuple(str(p) for p in self.weight_decay_params)
            if not self.weight_decay_params:
                raise ValueError("weight_decay_params must name at least one parameter prefix (or be None)")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: use cpu, cuda, cuda:N or auto")
        if self.precision == "fp16" and self.device == "cpu":
            from .precision import check_precision  # lazy: imports torch

            check_precision(self.precision, "cpu")
        if not isinstance(self.model_kwargs, dict) or not isinstance(self.regime_kwargs, dict):
            raise ValueError("model_kwargs and regime_kwargs must be dicts")
        fields = {f.name for f in dataclasses.fields(self)}
        clash = sorted(k for k in self.regime_kwargs if k in fields)
        if clash:
            raise ValueError(f"regime_kwargs {clash} are TrainConfig fields: set them directly "
                             f"({', '.join('--' + k.replace('_', '-') for k in clash)}), not via --regime-kwargs")
        if self.preset is not None:
            from .presets import get_preset  # lazy: presets build TrainConfigs

            get_preset(self.preset)

    def resolved_milestones(self, epochs: Optional[int] = None) -> List[int]:
        """Milestones in epochs: the given ones, or the paper's fractions of ``epochs``."""
        n = int(self.epochs if epochs is None else epochs)
        if self.milestones is not None:
            return list(self.milestones)
        ms = sorted({max(1, int(round(f * n))) for f in PAPER_MILESTONE_FRACTIONS})
        return [m for m in ms if m < n] if n > 1 else []

    def lr_factor(self, epoch: int, total: int) -> float:
        """f(e): the learning rate of (1-based) ``epoch`` of a run of ``total`` epochs is lr * f(e).

        step: gamma ** #{m < e}; cosine: (1 + cos(pi (e - 1) / total)) / 2; both times the warm-up
        ramp min(1, e / (warmup + 1)) (see the module docstring)."""
        e, n = int(epoch), max(1, int(total))
        if self.lr_schedule == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(e - 1, n) / n))
        else:
            f = float(self.gamma) ** sum(1 for m in self.resolved_milestones(n) if m < e)
        if self.warmup > 0:
            f *= min(1.0, e / (self.warmup + 1))
        return f

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        d = dataclasses.asdict(self)
        for key in ("milestones", "weight_decay_params"):
            if d[key] is not None:
                d[key] = list(d[key])
        return json.loads(json.dumps(d, default=str))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (missing keys take their defaults); unknown keys raise a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid fields: {sorted(names)}")
        d = dict(d)
        for key in ("milestones", "weight_decay_params"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The settings of preset ``name`` (``trainers.presets``) with ``overrides`` on top.

        Overrides count as set explicitly: one the regime does not use raises a ValueError; preset
        settings the final regime does not use are dropped."""
        from .presets import resolve

        return resolve(overrides, name)
