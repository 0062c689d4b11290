"""The :class:`Regime` base class every training regime derives from (see ``trainers.regimes``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, FrozenSet, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..config import TrainConfig
from ..precision import Precision

if TYPE_CHECKING:
    from ..distributed import DataParallel, Shard


def make_optimizer(config: TrainConfig, params: Iterable, epochs: int, model: Optional[nn.Module] = None
                   ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Optimiser + learning-rate schedule for a run (or stage) of ``epochs`` epochs.

    Adam, or SGD with ``momentum`` (Nesterov if ``config.nesterov``), with ``config.lr`` and
    ``config.weight_decay``; the schedule multiplies each group's learning rate by
    ``config.lr_factor(e, epochs)`` in epoch e (step: x gamma after each milestone; cosine; linear
    warm-up), stepped once per epoch by :meth:`Regime.on_epoch_end`. With
    ``config.weight_decay_params`` only the parameters of ``model`` whose names start with one of
    those prefixes are decayed (e.g. ``("w",)``: the penalty on W of Sakamoto & Sato 2024 eq. 9).
    """
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [{"params": [p for p in params if p.requires_grad]}]
    groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("make_optimizer got no trainable parameters")
    wd = float(config.weight_decay)
    if config.weight_decay_params is not None and wd > 0:
        if model is None:
            raise ValueError("weight_decay_params needs the model to find the parameters by name")
        prefixes = tuple(config.weight_decay_params)
        names = [n for n, _ in model.named_parameters()]
        unmatched = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
        if unmatched:
            raise ValueError(f"weight_decay_params {unmatched} match no parameter of the model; "
                             f"its parameters are {names}")
        decayed = {id(p) for n, p in model.named_parameters()
                   if any(n == q or n.startswith(q + ".") for q in prefixes)}
        split = []
        for g in groups:
            on = [p for p in g["params"] if id(p) in decayed]
            off = [p for p in g["params"] if id(p) not in decayed]
            split += [dict(g, params=on, weight_decay=wd)] if on else []
            split += [dict(g, params=off, weight_decay=0.0)] if off else []
        groups = split
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=wd)
    else:
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=bool(config.nesterov),
                              weight_decay=wd)
    n = int(epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda done: config.lr_factor(done + 1, n))
    return opt, sched


class Regime:
    """A way of training a :class:`~infoplane.models.base.LayeredNet` (E2E, layer-wise, ...).

    The epoch loop (``trainers.loop``) only talks to a regime through this interface:

    ``__init__(model, config, device)``
        build auxiliary modules into ``self.heads`` (an ``nn.ModuleDict``; saved in the
        checkpoint's ``aux_state``, never in the backbone's state_dict) and call
        ``self.configure_optimizers()`` (or do so later, e.g. per stage).
    ``total_epochs() -> int``
        how many epochs the run has (default ``config.epochs``).
    ``on_epoch_start(epoch)``
        called before each epoch (1-based); default: ``self.train()`` (train mode).
    ``training_step(x, y) -> dict[str, float]``
        one mini-batch: compute the loss(es), ``backward()``, step the optimiser(s). Return
        plain floats; the key ``"loss"`` is required (the loop averages every key over the
        epoch and writes it to metrics.csv as ``train_<key>``).
    ``on_epoch_end(epoch)``
        default: step the learning-rate schedulers.
    ``predict(x) -> logits``
        class scores used for train/test accuracy (default ``model(x)``); called in eval mode
        under ``torch.no_grad()``.
    ``aux_state() -> dict | None`` and ``describe() -> dict``
        what goes into the checkpoint's ``aux_state`` and ``regime`` fields.
    ``options`` / ``options_for(config)``
        the regime options it reads (TrainConfig fields and ``regime_kwargs`` keys), narrowed
        to the sub-mode of ``config``; a set option outside them is refused by ``train()`` and
        the CLI (``trainers.options.check_options``) and left out of config.json.

    Helpers: ``parameters_groups()`` (default: backbone + heads), ``configure_optimizers(epochs)``
    (fills ``self.optimizers``/``self.schedulers`` with :func:`make_optimizer`), ``step(loss)``
    (zero_grad, backward, step on every optimiser), ``train()`` / ``eval()``.

    Precision and several processes (``torchrun``): a regime that steps its optimisers itself calls
    ``self.backward(loss)`` and ``self.optimizer_step()`` (``step`` does both): the backward pass then
    honours ``--precision`` (``self.precision``) and, on several processes, the gradients are averaged
    over them before the step (``sync_gradients``). ``data_parallel_issue(config)`` says why a
    configuration cannot train data-parallel (refused under ``torchrun``); ``distribute(dp)`` is
    called with the run's :class:`~trainers.distributed.DataParallel` before the first step;
    ``self.shard`` is this process's part of the current global batch (random draws per sample are
    made for the whole batch and cut with ``shard.rows``), ``self.global_batch(...)`` gathers the
    whole batch for a loss that compares samples with each other.
    """

    name: ClassVar[str] = ""
    #: The regime options it reads: TrainConfig fields (``temperature``, ...) and ``regime_kwargs``
    #: keys (``modules``, ...). Anything else that is set is an error (``trainers.options``).
    #: None: the regime declares none and validates its own ``regime_kwargs``.
    options: ClassVar[Optional[Tuple[str, ...]]] = None
    #: Why an option of :attr:`options` may not be read in some sub-mode (option -> "only with ..."),
    #: for the error message; ``trainers.options.MODE_NOTES`` has the common ones.
    option_notes: ClassVar[Dict[str, str]] = {}

    @classmethod
    def options_for(cls, config: TrainConfig) -> Optional[FrozenSet[str]]:
        """The options read in ``config``'s sub-mode (default: all of :attr:`options`)."""
        return None if cls.options is None else frozenset(cls.options)

    @classmethod
    def data_parallel_issue(cls, config: TrainConfig) -> Optional[str]:
        """None when ``config`` trains data-parallel exactly as on one process; otherwise why not and
        what to do instead (the run is refused under ``torchrun``). Default: None -- the losses are
        means over the samples and the optimiser steps go through :meth:`optimizer_step`."""
        return None

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = torch.device(device)
        self.heads = nn.ModuleDict()
        self.optimizers: List[torch.optim.Optimizer] = []
        self.schedulers: List[Any] = []
        self.precision = Precision(config.precision, self.device)
        self.data_parallel: Optional["DataParallel"] = None

    # -- several processes --------------------------------------------------------------------
    def distribute(self, dp: "DataParallel") -> None:
        """Train on the processes of ``dp`` (called before the first step, with the model and heads
        already identical on every process). Default: the gradients of every optimised parameter are
        averaged in :meth:`optimizer_step`."""
        self.data_parallel = dp

    @property
    def shard(self) -> Optional["Shard"]:
        """This process's rows of the current global batch (None on one process)."""
        return None if self.data_parallel is None else self.data_parallel.shard

    def global_batch(self, *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The whole global batch of ``tensors`` (see :meth:`DataParallel.global_batch`); on one
        process ``tensors`` themselves."""
        if self.data_parallel is None:
            return tuple(tensors)
        return self.data_parallel.global_batch(*tensors)

    def sync_gradients(self) -> None:
        """Average the gradients over the processes (nothing on one process)."""
        if self.data_parallel is not None:
            self.data_parallel.all_reduce_gradients(self.optimizers)

    # -- optimisation -------------------------------------------------------------------
    def parameters_groups(self) -> List[Dict[str, Any]]:
        """Parameter groups for the optimiser: backbone and auxiliary heads."""
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        head_params = [p for p in self.heads.parameters() if p.requires_grad]
        if head_params:
            groups.append({"params": head_params})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self, epochs: Optional[int] = None) -> None:
        """One optimiser over :meth:`parameters_groups` with the configured schedule."""
        opt, sched = make_optimizer(self.config, self.parameters_groups(),
                                    self.total_epochs() if epochs is None else epochs, model=self.model)
        self.optimizers, self.schedulers = [opt], [sched]

    def step(self, loss: torch.Tensor) -> None:
        """zero_grad, ``loss.backward()``, step every optimiser."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` as ``--precision`` asks (outside autocast; scaled with fp16)."""
        self.precision.backward(loss)

    def optimizer_step(self) -> None:
        """Average the gradients over the processes, then step every optimiser."""
        self.sync_gradients()
        self.precision.step(self.optimizers)

    def step_local_losses(self, per_layer: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """One optimiser step on the sum of per-layer local losses; returns ``loss`` and ``loss_<layer>``."""
        total = torch.stack(list(per_layer.values())).sum()
        self.step(total)
        stats = {"loss": float(total.detach())}
        stats.update({f"loss_{k}": float(v.detach()) for k, v in per_layer.items()})
        return stats

    def lr(self) -> float:
        """Current learning rate of the first optimiser (for the metrics)."""
        return float(self.optimizers[0].param_groups[0]["lr"]) if self.optimizers else float("nan")

    # -- the loop's interface --------------------------------------------------------------
    def total_epochs(self) -> int:
        return int(self.config.epochs)

    def schedule_epochs(self) -> int:
        """Epochs one learning-rate schedule spans (staged regimes restart it every stage)."""
        return self.total_epochs()

    def is_staged(self) -> bool:
        """True for regimes that train one stage (layer or module) at a time; they define
        ``stage_of(epoch)``, ``enter_stage(k)`` and the attribute ``stage``."""
        return False

    def on_epoch_start(self, epoch: int) -> None:
        if self.is_staged():
            k = self.stage_of(epoch)  # type: ignore[attr-defined]
            if k != self.stage:  # type: ignore[attr-defined]
                self.enter_stage(k)  # type: ignore[attr-defined]
        self.train()

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def on_epoch_end(self, epoch: int) -> None:
        for sched in self.schedulers:
            sched.step()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def aux_state(self) -> Optional[Dict[str, Any]]:
        """Auxiliary modules' state for the checkpoint (``{"heads": state_dict}``), or None."""
        if len(self.heads) == 0:
            return None
        return {"heads": {k: v.detach().cpu() for k, v in self.heads.state_dict().items()}}

    def describe(self) -> Dict[str, Any]:
        """The checkpoint's ``regime`` field: the name and the options that define the regime."""
        return {"name": self.name}

    def train(self) -> None:
        self.model.train()
        self.heads.train()

    def eval(self) -> None:
        self.model.eval()
        self.heads.eval()
