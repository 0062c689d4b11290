"""Layer-wise training, simultaneous (Sakamoto & Sato 2024 eq. 2) and sequential (B.1, F.4.3).

Each top-level layer f_l of the LayeredNet is trained by its own local loss on
``z_l = f_l(StopGrad(z_{l-1}))`` (``detach()``), so no gradient crosses a layer boundary. The
hidden layers use the local loss ``config.local_loss`` (B.2):

* ``ce``      eq. 13, CE of an auxiliary classifier g_l (linear / mlp / mlp2) on z_l;
* ``supcon``  eq. 14 on g_l(z_l) (g_l may be ``none``) of two augmented views per sample;
* ``sim``     eq. 15-16, similarity matching; g_l = a conv layer + per-channel std (``conv``);
* ``sp-hard`` / ``sp-soft``  eq. 17-18, signal propagation without auxiliary networks: a fixed
  random embedding of each class in input space (the class "signal" S_0, drawn from the run's
  seed) is forwarded through the same layers in the same batch as x (Kohan et al. 2023); the
  target of layer l is sim_s(S_{l-1}) (top-``sp_topk`` ones for hard, row softmax for soft).

The output layer is trained by CE on its logits directly. With ``nhsic_lambda > 0`` each local
loss becomes eq. 11: L_l - lambda * nHSIC(T, z_l), T = the input X (``nhsic_target=input``) or
the layer's own input z_{l-1} (``block-input``), on the mini-batch. Representations are
average-pooled to <= ``aux_max_features`` (2048) features before heads and similarities (F.1.1).

Options (``options_for``): ``local_loss``, ``aux``, ``aux_max_features``, ``nhsic_lambda`` always;
``aux_hidden`` with mlp/mlp2 heads; ``proj_dim`` for supcon/sim heads; ``temperature`` and the view
options for supcon; ``sp_topk`` for sp-hard; ``nhsic_target/sigma/eps`` when ``nhsic_lambda > 0``;
``epochs_per_layer`` for the sequential regime.

On several processes (``torchrun``) the CE local loss trains data-parallel; the losses that compare
the samples of a mini-batch with each other (supcon, sim, sp-hard / sp-soft) and the nHSIC term are
refused there (:meth:`_LayerwiseBase.data_parallel_issue`).
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import torch
from torch import nn

from .. import losses
from ..augment import ContrastiveViews, view_options
from ..heads import make_head
from . import register_regime
from .base import Regime, make_optimizer

_DEFAULT_AUX = {"ce": "linear", "supcon": "linear", "sim": "conv", "sp-hard": "none", "sp-soft": "none"}


def resolve_aux(local_loss: str, aux: str) -> str:
    """The auxiliary network for ``local_loss``: ``auto`` picks the paper's choice (B.2)."""
    if aux == "auto":
        return _DEFAULT_AUX[local_loss]
    if local_loss == "ce" and aux == "none":
        raise ValueError("local loss 'ce' needs an auxiliary classifier to c classes: use --aux linear, mlp or mlp2")
    if local_loss.startswith("sp") and aux != "none":
        raise ValueError(f"local loss {local_loss!r} uses no auxiliary network (B.2): use --aux none or auto")
    return aux


class LabelSignal(nn.Module):
    """The fixed class signal S_0 of signal propagation: one N(0, 1) tensor per class, input-shaped."""

    def __init__(self, num_classes: int, input_shape: Tuple[int, ...], seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed) + 7919)
        self.register_buffer("embedding", torch.randn((num_classes,) + tuple(input_shape), generator=g))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding[y]


class _LayerwiseBase(Regime):
    """Shared machinery: auxiliary heads, batch preparation, the local loss of one layer."""

    options = ("local_loss", "aux", "aux_hidden", "aux_max_features", "proj_dim", "temperature", "aug_views",
               "aug_noise", "aug_crop_pad", "sp_topk", "nhsic_lambda", "nhsic_target", "nhsic_sigma", "nhsic_eps")

    @classmethod
    def options_for(cls, config) -> FrozenSet[str]:
        opts = {"local_loss", "aux", "aux_max_features", "nhsic_lambda"}
        try:
            aux = resolve_aux(config.local_loss, config.aux)
        except ValueError:
            aux = config.aux
        if aux in ("mlp", "mlp2"):
            opts.add("aux_hidden")
        if config.local_loss != "ce" and aux != "none":
            opts.add("proj_dim")
        if config.local_loss == "supcon":
            opts |= {"temperature"} | view_options(config)
        if config.local_loss == "sp-hard":
            opts.add("sp_topk")
        if float(config.nhsic_lambda) > 0:
            opts |= {"nhsic_target", "nhsic_sigma", "nhsic_eps"}
        return frozenset(opts & set(cls.options))

    @classmethod
    def data_parallel_issue(cls, config) -> Optional[str]:
        if config.local_loss != "ce":
            return (f"--local-loss {config.local_loss} compares the samples of a mini-batch with each other (and "
                    f"draws its views or signals per batch), so each process, holding a part of the batch, would "
                    f"optimise a different loss; use --local-loss ce, or train on one process")
        if float(config.nhsic_lambda) > 0:
            return ("--nhsic-lambda > 0 adds nHSIC, a kernel statistic of the whole mini-batch, which a process "
                    "holding a part of the batch cannot compute; use --nhsic-lambda 0, or train on one process")
        return None

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        self.layer_names: List[str] = [n for n, _ in model.named_children()]
        if len(self.layer_names) < 2:
            raise ValueError(f"layer-wise training needs >= 2 top-level layers, the model has {self.layer_names}")
        self.output_name = self.layer_names[-1]
        self.local_loss = config.local_loss
        self.aux_kind = resolve_aux(config.local_loss, config.aux)
        self.num_classes = int(model.num_classes)
        shapes = self._feature_shapes()
        out_dim = self.num_classes if self.local_loss == "ce" else config.proj_dim
        for name in self.layer_names[:-1]:
            self.heads[name] = make_head(self.aux_kind, shapes[name], out_dim, hidden=config.aux_hidden,
                                         max_features=config.aux_max_features)
        if self.local_loss.startswith("sp"):
            self.heads["label_signal"] = LabelSignal(self.num_classes, tuple(model.input_shape), config.seed)
        self.heads.to(self.device)
        self.views = ContrastiveViews.from_config(config, model.input_shape) if self.local_loss == "supcon" else None

    def _feature_shapes(self) -> Dict[str, Tuple[int, ...]]:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            z = torch.zeros((2,) + tuple(self.model.input_shape), device=self.device)
            shapes = {}
            for name, layer in self.model.named_children():
                z = layer(z)
                shapes[name] = tuple(z.shape[1:])
        self.model.train(was_training)
        return shapes

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """The batch fed to the network, its labels, and how many of its rows are data.

        supcon: 2N augmented views (labels repeated); sp: [x; S_0(y)] (the signal rows last).
        """
        if self.local_loss == "supcon":
            return self.views(x), torch.cat([y, y]), 2 * x.shape[0]
        if self.local_loss.startswith("sp"):
            return torch.cat([x, self.heads["label_signal"](y).to(x.dtype)]), y, x.shape[0]
        return x, y, x.shape[0]

    def layer_loss(self, name: str, z: torch.Tensor, z_in: torch.Tensor, inp: torch.Tensor,
                   y: torch.Tensor, n_data: int) -> torch.Tensor:
        """Local loss of layer ``name`` given its output ``z`` and detached input ``z_in``."""
        cfg = self.config
        zd = z[:n_data]
        if name == self.output_name:
            loss = losses.cross_entropy(zd, y)
        elif self.local_loss == "ce":
            loss = losses.cross_entropy(self.heads[name](zd), y)
        elif self.local_loss == "supcon":
            loss = losses.supcon_loss(self.heads[name](zd), y, cfg.temperature)
        elif self.local_loss == "sim":
            loss = losses.sim_matching_loss(self.heads[name](zd), y, self.num_classes)
        else:
            pool = self.heads[name]
            target = losses.sp_target(pool(z_in[n_data:]), hard=self.local_loss == "sp-hard", topk=cfg.sp_topk)
            loss = losses.sp_loss(pool(zd), target)
        if cfg.nhsic_lambda > 0:
            ref = inp[:n_data] if cfg.nhsic_target == "input" else z_in[:n_data]
            loss = loss - cfg.nhsic_lambda * losses.nhsic_term(zd, ref, cfg.nhsic_sigma, cfg.nhsic_eps).to(loss.dtype)
        return loss

    def describe(self) -> Dict[str, Any]:
        cfg = self.config
        d: Dict[str, Any] = {"name": self.name, "layers": list(self.layer_names),
                             "local_loss": self.local_loss, "aux": self.aux_kind,
                             "aux_max_features": cfg.aux_max_features, "output_loss": "ce",
                             "nhsic_lambda": cfg.nhsic_lambda}
        if self.aux_kind in ("mlp", "mlp2"):
            d["aux_hidden"] = cfg.aux_hidden
        if self.local_loss in ("supcon",):
            d.update(temperature=cfg.temperature, proj_dim=cfg.proj_dim, **self.views.describe())
        if self.local_loss == "sp-hard":
            d["sp_topk"] = cfg.sp_topk
        if cfg.nhsic_lambda > 0:
            d.update(nhsic_target=cfg.nhsic_target, nhsic_sigma=cfg.nhsic_sigma, nhsic_eps=cfg.nhsic_eps)
        return d


@register_regime("layerwise")
class LayerwiseSimultaneous(_LayerwiseBase):
    """Eq. 2: every layer trained at once by its local loss in a single forward pass."""

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        self.configure_optimizers()

    def local_losses(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every layer's local loss (name -> scalar) for the batch; gradients stay in their layer."""
        inp, yy, n_data = self._prepare(x, y)
        out: Dict[str, torch.Tensor] = {}
        z = inp
        for name, layer in self.model.named_children():
            z_in = z.detach()
            z = layer(z_in)
            out[name] = self.layer_loss(name, z, z_in, inp, yy, n_data)
        return out

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        return self.step_local_losses(self.local_losses(x, y))


@register_regime("layerwise-sequential")
class LayerwiseSequential(_LayerwiseBase):
    """B.1 / F.4.3: layer k is trained alone for ``epochs_per_layer`` epochs on top of the
    frozen (``requires_grad=False``, eval mode) layers 1..k-1; then layer k+1, and so on.
    ``epochs_per_layer=None`` splits ``epochs`` evenly. Each stage gets a fresh optimiser
    with the configured schedule over the stage's epochs. Epochs are numbered globally."""

    options = _LayerwiseBase.options + ("epochs_per_layer",)

    @classmethod
    def options_for(cls, config) -> FrozenSet[str]:
        return super().options_for(config) | {"epochs_per_layer"}

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        n = len(self.layer_names)
        self.epochs_per_layer = int(config.epochs_per_layer or max(1, config.epochs // n))
        self.stage: Optional[int] = None

    def total_epochs(self) -> int:
        return self.epochs_per_layer * len(self.layer_names)

    def schedule_epochs(self) -> int:
        return self.epochs_per_layer

    def stage_of(self, epoch: int) -> int:
        return min((int(epoch) - 1) // self.epochs_per_layer, len(self.layer_names) - 1)

    def enter_stage(self, stage: int) -> None:
        """Freeze layers < ``stage`` and build the optimiser of layer ``stage`` (+ its head)."""
        self.stage = stage
        for i, (name, layer) in enumerate(self.model.named_children()):
            layer.requires_grad_(i >= stage)
        name = self.layer_names[stage]
        params = list(self.model.get_submodule(name).parameters())
        if name in self.heads:
            params += list(self.heads[name].parameters())
        params = [p for p in params if p.requires_grad]
        if params:
            opt, sched = make_optimizer(self.config, params, self.epochs_per_layer, model=self.model)
            self.optimizers, self.schedulers = [opt], [sched]
        else:
            self.optimizers, self.schedulers = [], []

    def is_staged(self) -> bool:
        return True

    def train(self) -> None:
        super().train()
        k = self.stage or 0
        for i, (_, layer) in enumerate(self.model.named_children()):
            if i < k:
                layer.eval()

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        if self.stage is None:
            self.enter_stage(0)
        k = self.stage
        inp, yy, n_data = self._prepare(x, y)
        children = list(self.model.named_children())
        z = inp
        with torch.no_grad():
            for _, layer in children[:k]:
                z = layer(z)
        name, layer = children[k]
        z_in = z.detach()
        z = layer(z_in)
        loss = self.layer_loss(name, z, z_in, inp, yy, n_data)
        if self.optimizers and loss.requires_grad:
            self.step(loss)
        return {"loss": float(loss.detach()), "stage": float(k)}

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update(epochs_per_layer=self.epochs_per_layer,
                 stage=self.stage, stage_layer=None if self.stage is None else self.layer_names[self.stage])
        return d
