"""End-to-end training (Sakamoto & Sato 2024 eq. 1; F.4.1 for the contrastive losses).

``--loss ce``: cross-entropy on the network's logits, backpropagated through every layer.
``--loss supcon`` / ``--loss simclr``: the supervised contrastive loss (eq. 14, Khosla et al.
2020) or the SimCLR NT-Xent loss on the L2-normalised network output of two augmented views
(the output layer plays the projection head; views: ``--aug-views``, see ``trainers.augment``).
Accuracy then comes from a linear evaluation head trained with CE on the detached,
L2-normalised network output (its gradient never reaches the backbone).

Options: ``loss``; with a contrastive loss also ``temperature``, ``probe_lr``, ``aug_views`` and,
for noise-shift views, ``aug_noise`` / ``aug_crop_pad``.

On several processes (``torchrun``) the CE regime trains through ``DistributedDataParallel``; the
contrastive losses are refused there (:meth:`EndToEnd.data_parallel_issue`).
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..augment import ContrastiveViews, view_options
from . import register_regime
from .base import Regime


@register_regime("e2e")
class EndToEnd(Regime):
    """Eq. 1: L_E2E = (1/m) sum_i l(f(x_i), y_i), one backward pass through the whole network."""

    options = ("loss", "temperature", "probe_lr", "aug_views", "aug_noise", "aug_crop_pad")

    @classmethod
    def options_for(cls, config) -> FrozenSet[str]:
        if config.loss == "ce":
            return frozenset({"loss"})
        return frozenset({"loss", "temperature", "probe_lr"} | view_options(config))

    @classmethod
    def data_parallel_issue(cls, config) -> Optional[str]:
        if config.loss == "ce":
            return None
        return (f"--loss {config.loss} compares every sample of a mini-batch with the others, and its random views "
                f"and their noise scale are drawn per batch, so each process, holding a part of the batch, would "
                f"optimise a different loss; use --loss ce, or train on one process")

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        #: the module the training forward pass runs through (DistributedDataParallel on several processes)
        self.net: nn.Module = model
        self.loss_name = config.loss
        if self.loss_name != "ce":
            c = int(model.num_classes)
            self.heads["linear_eval"] = nn.Linear(c, c).to(self.device)
            self.views = ContrastiveViews.from_config(config, model.input_shape)
        self.configure_optimizers()

    def parameters_groups(self):
        """Backbone at ``config.lr``; the evaluation head at ``config.probe_lr`` (a linear probe on a
        bounded input needs a larger step than the backbone to keep up within the run)."""
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if len(self.heads):
            groups.append({"params": list(self.heads.parameters()), "lr": self.config.probe_lr})
        return groups

    def distribute(self, dp) -> None:
        """DistributedDataParallel around the backbone: its gradient all-reduce overlaps the backward pass."""
        super().distribute(dp)
        self.net = dp.wrap(self.model)

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        cfg = self.config
        if self.loss_name == "ce":
            loss = losses.cross_entropy(self.net(x), y)
            self.step(loss)
            return {"loss": float(loss.detach())}
        n = x.shape[0]
        out = self.model(self.views(x))
        if self.loss_name == "supcon":
            main = losses.supcon_loss(out, torch.cat([y, y]), cfg.temperature)
        else:
            main = losses.simclr_loss(out[:n], out[n:], cfg.temperature)
        probe = losses.cross_entropy(self._probe(out.detach()), torch.cat([y, y]))
        self.step(main + probe)
        return {"loss": float(main.detach()), "probe_ce": float(probe.detach())}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out if self.loss_name == "ce" else self._probe(out)

    def _probe(self, out: torch.Tensor) -> torch.Tensor:
        """The linear evaluation head on the L2-normalised output (what the contrastive loss sees)."""
        return self.heads["linear_eval"](F.normalize(out, dim=1))

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "loss": self.loss_name}
        if self.loss_name != "ce":
            d.update(temperature=self.config.temperature, probe_lr=self.config.probe_lr,
                     eval_head="linear on the detached, L2-normalised output", **self.views.describe())
        return d

