"""Training configuration: one flat dataclass with the main paper's defaults.

Defaults follow seed 000 appendix F.1.1: Adam, learning rate 5e-4 (chosen from {5e-4, 1e-3}),
learning rate multiplied by 0.2 at epochs [200, 300, 350, 375] of 400 (here: the same
fractions [1/2, 3/4, 7/8, 15/16] of ``epochs`` unless ``milestones`` is given), weight decay
0.0 (chosen from {0, 5e-4}). The paper does not give a batch size; 128 is used.
nHSIC settings follow F.1.2 (RBF kernel, sigma = 5 sqrt(d), eps = 1e-5).
"""
from __future__ import annotations

import dataclasses
import json
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


@dataclass
class TrainConfig:
    """Everything a training run needs; ``trainers.train(TrainConfig(...))`` runs it.

    Model and data
        model, model_kwargs: a name of ``infoplane.models`` and its keyword arguments
        (``input_shape``/``num_classes`` are filled in from the dataset).
        dataset, data_root, download: see ``infoplane.data.load_dataset``.
        subset / test_subset: use a seeded random subset of N training / test samples
        (``test_subset=None`` uses ``subset`` for the test set too).
    Regime (see docs/regimes.md)
        regime: a name of ``trainers.regimes`` (e2e, layerwise, layerwise-sequential, ...).
        loss: the E2E loss (ce|supcon|simclr). local_loss: the layer-wise loss
        (ce|supcon|sim|sp-hard|sp-soft). aux: auxiliary network (none|linear|mlp|mlp2|conv, or
        auto = the loss's choice in B.2: linear for ce/supcon, conv for sim, none for sp).
        epochs_per_layer: sequential layer-wise training (then epochs = this x number of layers).
        nhsic_lambda, nhsic_target, nhsic_sigma, nhsic_eps: the augmenting term of eq. 11.
        temperature, proj_dim, aug_noise, aug_crop_pad: contrastive losses (eq. 14); probe_lr: the
        learning rate of the linear evaluation head of contrastive E2E runs.
        regime_kwargs: extra options for regimes added later (read by those regimes).
    Optimisation
        optimizer (adam|sgd), lr, weight_decay, momentum (sgd), milestones (epochs; None =
        paper fractions of the run), gamma, batch_size, epochs.
    Run
        seed; deterministic: also ask torch for deterministic kernels (bit-identical CUDA runs,
        slower; CPU runs are reproducible without it). out: output directory; schedule: save a checkpoint every epoch or on a log-spaced
        grid of ``num_checkpoints`` epochs; save_init writes epoch_0000.pt (initialisation).
    """

    # model and data
    model: str = "lenet5"
    dataset: str = "digits"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data_root: str = "data"
    download: bool = False
    subset: Optional[int] = None
    test_subset: Optional[int] = None
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
    momentum: float = 0.9
    milestones: Optional[Tuple[int, ...]] = None
    gamma: float = 0.2
    batch_size: int = 128
    eval_batch_size: int = 1000
    epochs: int = 100
    # run
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    out: Optional[str] = None
    overwrite: bool = False
    schedule: str = "every"
    num_checkpoints: int = 30
    save_init: bool = True
    eval_train: bool = True
    num_workers: int = 0
    progress: bool = True

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
        for name in ("weight_decay", "nhsic_lambda", "aug_noise", "nhsic_eps"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < float(self.gamma) <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.milestones is not None:
            ms = tuple(int(m) for m in self.milestones)
            if any(m < 1 for m in ms) or list(ms) != sorted(set(ms)):
                raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones!r}")
            self.milestones = ms
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: use cpu, cuda, cuda:N or auto")
        if not isinstance(self.model_kwargs, dict) or not isinstance(self.regime_kwargs, dict):
            raise ValueError("model_kwargs and regime_kwargs must be dicts")

    def resolved_milestones(self, epochs: Optional[int] = None) -> List[int]:
        """Milestones in epochs: the given ones, or the paper's fractions of ``epochs``."""
        n = int(self.epochs if epochs is None else epochs)
        if self.milestones is not None:
            return list(self.milestones)
        ms = sorted({max(1, int(round(f * n))) for f in PAPER_MILESTONE_FRACTIONS})
        return [m for m in ms if m < n] if n > 1 else []

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        d = dataclasses.asdict(self)
        if d["milestones"] is not None:
            d["milestones"] = list(d["milestones"])
        return json.loads(json.dumps(d, default=str))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid fields: {sorted(names)}")
        d = dict(d)
        if d.get("milestones") is not None:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)
