"""Greedy supervised learning with K local modules and DGL (Wang et al. 2021, "Revisiting Locally
Supervised Learning: an Alternative to End-to-end Training", sec. 2, Table 1).

The network is split into K gradient-isolated modules (:class:`trainers.local_modules.LocalModules`,
Wang et al. 2021 app. F). Modules 1..K-1 are trained by the softmax cross-entropy of an auxiliary
classifier on their output h_k; the last module (which holds the output layer) by plain CE on the
logits ("K = 1" is E2E training).

* ``greedy``: auxiliary net = global average pool + one linear layer (Table 1 caption).
* ``dgl``: decoupled greedy learning (Belilovsky et al. 2020) with the 1-conv + 2-FC auxiliary
  classifier of Table 8 (:class:`trainers.heads.ConvFCHead`, width by input channels).

Options (``config.regime_kwargs``; CLI ``--modules K --async --epochs-per-module N``):
``modules`` K (default 4), ``async`` (sec. 4: module k trained alone for ``epochs_per_module``
epochs on cached outputs of the frozen, completely trained modules < k; default: simultaneous
training, every module's backward pass on every mini-batch), ``epochs_per_module`` (async;
default ``epochs_per_layer`` if set, else ``epochs // K``), ``cache_rows`` (async cache size). The
async-only options are refused without ``async``.

:class:`ModularRegime` is the shared base of greedy, dgl, infopro and contsup: subclasses add
their auxiliary networks in :meth:`build_aux` and their loss in :meth:`local_loss`; ContSup also
overrides :meth:`module_input` (the context supply). On several processes (``torchrun``) every
module's gradients are averaged over the processes once, after the backward passes of all modules
and before the optimiser step (``Regime.optimizer_step``).
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import ConvFCHead
from ..local_modules import ActivationCache, LocalModules
from . import register_regime
from .base import Regime, make_optimizer


def check_options(regime: str, kwargs: Dict[str, Any], allowed: Sequence[str]) -> None:
    """Raise ValueError naming any ``regime_kwargs`` key the regime does not read (typos)."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"regime {regime!r} got unknown --regime-kwargs {unknown}; "
                         f"it accepts: {', '.join(sorted(allowed))}")


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean (1/0/true/false), got {v!r}")
    return bool(v)


class PoolLinearHead(nn.Module):
    """Global average pool + linear (Wang et al. 2021 Table 1): (N,C,H,W) or (N,d) -> (N,out_dim)."""

    def __init__(self, feature_shape: Sequence[int], out_dim: int) -> None:
        super().__init__()
        shape = tuple(int(s) for s in feature_shape)
        self.spatial = len(shape) == 3
        d = shape[0] if self.spatial else int(torch.Size(shape).numel())
        self.fc = nn.Linear(d, int(out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.mean(dim=(2, 3)) if self.spatial else h.flatten(1)
        return self.fc(h)


class ModularRegime(Regime):
    """K gradient-isolated modules, simultaneous or asynchronous (Wang et al. 2021 sec. 4)."""

    default_modules = 4
    options: Tuple[str, ...] = ("modules", "async", "epochs_per_module", "cache_rows", "epochs_per_layer")
    #: Options only read in asynchronous mode.
    async_options = ("epochs_per_module", "cache_rows", "epochs_per_layer")
    option_notes = {name: "only with --async" for name in async_options}

    @classmethod
    def options_for(cls, config) -> FrozenSet[str]:
        opts = set(cls.options)
        if not _flag(config.regime_kwargs.get("async", False)):
            opts -= set(cls.async_options)
        return frozenset(opts)

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        kw = config.regime_kwargs
        check_options(self.name, kw, self.options)
        self.K = int(kw.get("modules", self.default_modules))
        self.split = LocalModules(model, self.K, device=self.device)
        self.async_mode = _flag(kw.get("async", False))
        self.num_classes = int(getattr(model, "num_classes"))
        self.build_aux()
        self.heads.to(self.device)
        self.stage: Optional[int] = None
        self.cache: Optional[ActivationCache] = None
        if self.async_mode:
            epm = kw.get("epochs_per_module", config.epochs_per_layer)
            self.epochs_per_module = int(epm) if epm is not None else max(1, int(config.epochs) // self.K)
            if self.epochs_per_module < 1:
                raise ValueError(f"epochs_per_module must be >= 1, got {self.epochs_per_module}")
            self.cache_rows = int(kw.get("cache_rows", 200_000))
        else:
            self.configure_optimizers()

    # -- to override ------------------------------------------------------------------------
    def build_aux(self) -> None:
        """Fill ``self.heads`` with the auxiliary networks of modules 0..K-2."""

    def aux_of(self, k: int) -> List[nn.Module]:
        """Auxiliary modules trained with module ``k`` (optimised in its stage)."""
        return [m for name, m in self.heads.items() if name.rsplit("_", 1)[-1] == str(k)]

    def local_loss(self, k: int, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of module ``k < K-1`` on its output ``h``."""
        raise NotImplementedError

    def module_input(self, k: int, x: torch.Tensor, h_prev: torch.Tensor, in_prev: torch.Tensor) -> torch.Tensor:
        """Input of module ``k >= 1`` from the (detached) output and input of module k-1."""
        return h_prev

    # -- forward ------------------------------------------------------------------------------
    def module_loss(self, k: int, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if k == self.K - 1:
            return F.cross_entropy(h, y)  # the last module: plain E2E loss (Wang et al. 2021 sec. 4)
        return self.local_loss(k, h, x, y)

    def run(self, x: torch.Tensor, y: Optional[torch.Tensor], start: int = 0, stop: Optional[int] = None,
            h: Optional[torch.Tensor] = None, inp: Optional[torch.Tensor] = None, backward: bool = False
            ) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Modules ``start..stop-1`` with StopGrad between them; losses only when ``y`` is given.

        ``backward=True`` back-propagates each module's loss as soon as it is computed ("the
        back-propagation process of all local modules is sequentially triggered", Wang et al. sec. 4),
        so only one module's graph is alive at a time; the returned losses are then detached.
        Returns (losses by module, last output, last module input)."""
        stop = self.K if stop is None else stop
        losses: Dict[int, torch.Tensor] = {}
        for k in range(start, stop):
            inp = x if k == 0 else self.module_input(k, x, h.detach(), inp.detach())  # type: ignore[union-attr]
            h = self.split.blocks[k](inp)
            if y is not None:
                losses[k] = self.backward_module_loss(k, h, x, y, backward)
        return losses, h, inp  # type: ignore[return-value]

    def backward_module_loss(self, k: int, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                             backward: bool) -> torch.Tensor:
        """Module k's loss on its output h; with ``backward`` back-propagated at once and returned detached."""
        loss = self.module_loss(k, h, x, y)
        if backward:
            self.backward(loss)
            loss = loss.detach()
        return loss

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, None)[1]

    # -- simultaneous / asynchronous training --------------------------------------------------
    def total_epochs(self) -> int:
        return self.epochs_per_module * self.K if self.async_mode else int(self.config.epochs)

    def schedule_epochs(self) -> int:
        return self.epochs_per_module if self.async_mode else self.total_epochs()

    def stage_of(self, epoch: int) -> int:
        return min((int(epoch) - 1) // self.epochs_per_module, self.K - 1)

    def _prefix(self, k: int):
        def fn(x: torch.Tensor) -> List[torch.Tensor]:
            _, h, inp = self.run(x, None, 0, k)
            return [h, inp]
        return fn

    def enter_stage(self, k: int) -> None:
        """Async: freeze modules < k, optimise module k (+ its aux nets), fresh output cache."""
        self.stage = k
        for j, block in enumerate(self.split.blocks):
            block.requires_grad_(j == k)
        for name, m in self.heads.items():
            m.requires_grad_(any(m is a for a in self.aux_of(k)))
        params = self.split.parameters_of(k) + [p for a in self.aux_of(k) for p in a.parameters()]
        opt, sched = make_optimizer(self.config, params, self.epochs_per_module, model=self.model)
        self.optimizers, self.schedulers = [opt], [sched]
        self.cache = ActivationCache(self._prefix(k), self.cache_rows) if k > 0 else None

    def is_staged(self) -> bool:
        return self.async_mode

    def train(self) -> None:
        super().train()
        if self.async_mode and self.stage is not None:
            for j, block in enumerate(self.split.blocks):
                block.train(j == self.stage)
            current = self.aux_of(self.stage)
            for m in self.heads.values():  # frozen modules' aux nets (e.g. context encoders): eval
                m.train(any(m is a for a in current))

    def on_epoch_end(self, epoch: int) -> None:
        if self.async_mode and self.stage is None:
            return
        super().on_epoch_end(epoch)

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        if self.async_mode and self.stage is None:
            self.enter_stage(0)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.async_mode:
            k = self.stage
            if k == 0:
                losses, _, _ = self.run(x, y, 0, 1, backward=True)
            else:
                h, inp = self.cache(x)  # type: ignore[misc]
                losses, _, _ = self.run(x, y, k, k + 1, h=h, inp=inp, backward=True)
        else:
            losses, _, _ = self.run(x, y, backward=True)
        self.optimizer_step()  # on several processes: gradients averaged after every module's backward
        total = torch.stack([v.float() for v in losses.values()]).sum()
        stats = {"loss": float(total.detach())}
        stats.update({f"loss_m{k}": float(v.detach()) for k, v in losses.items()})
        return stats

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "K": self.K, "modules": [list(m) for m in self.split.modules_names],
                             "mode": "async" if self.async_mode else "simultaneous", "last_module_loss": "ce"}
        if self.async_mode:
            d["epochs_per_module"] = self.epochs_per_module
        return d


@register_regime("greedy")
class GreedySL(ModularRegime):
    """Greedy SL: CE of a global-pool + linear classifier after each module (Wang et al. 2021 Table 1)."""

    def build_aux(self) -> None:
        for k in range(self.K - 1):
            self.heads[f"aux_{k}"] = PoolLinearHead(self.split.feature_shapes[k], self.num_classes)

    def local_loss(self, k: int, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.heads[f"aux_{k}"](h), y)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "aux": "global-pool+linear", "local_loss": "ce"}


@register_regime("dgl")
class DGL(GreedySL):
    """Decoupled greedy learning: CE of a 1-conv + 2-FC classifier (Wang et al. 2021 Table 8) per module."""

    def build_aux(self) -> None:
        for k in range(self.K - 1):
            self.heads[f"aux_{k}"] = ConvFCHead(self.split.feature_shapes[k], self.num_classes)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "aux": "conv+2fc (Wang et al. 2021 Table 8, width by channels)"}


__all__ = ["check_options", "PoolLinearHead", "ConvFCHead", "ModularRegime", "GreedySL", "DGL"]
