"""The forward-forward algorithm (Hinton 2022, The Forward-Forward Algorithm) and the prototype
variant of Sakamoto & Sato (End-to-End Training Induces Information Bottleneck through Layer-Role
Differentiation), appendix C.

Every top-level layer f_l is trained by its own loss on its detached, length-normalised input
(``ff_norm``: ``l2`` unit L2 length, as in Hinton 2022 and app. C, default; ``rms`` unit root-mean-square,
our earlier variant), so the previous layer's goodness cannot be reused. With positive pairs (x, y)
and negative pairs (x, y'), y' a uniformly drawn wrong label, and per-unit goodness
g_l = mean of squares of f_l's output (d_l units), the layer loss is (``ff_loss``)

* ``reference`` (default; Hinton 2022's reference code): mean over the 2N pairs of
  softplus(theta - g_l(pos)) and softplus(g_l(neg) - theta);
* ``sum`` (our earlier variant): mean over N of softplus(theta d_l - G_l(pos)) + softplus(G_l(neg) - theta d_l)
  with G_l = d_l g_l, i.e. d_l times sharper,

``threshold`` theta = 2.0 per unit. ``ff_mode``: ``sequential`` (default; Hinton 2022; Sakamoto & Sato
sec. 7.1: "it trains layers in a sequential way"): layer k is trained alone for ``epochs_per_layer`` epochs
(``config.epochs_per_layer``, default ``epochs // layers``) on the frozen (eval-mode) layers < k, with a
fresh optimiser per stage; ``simultaneous``: every layer's loss on every mini-batch.

``ff_label=onehot`` (Hinton 2022; app. C Fig. 8 top): the label is written as a one-hot code (value =
the sample's maximum) into the first c pixels of the first channel (the first c features of a flat
input). ``ff_label=prototype`` (app. C "Ours"): class prototypes (the running mean input of each
class over the training batches seen) are forwarded separately from x and mixed just before the
trained layer: input of f_l = n(a_l(x)) + n(a_l(p_y)), a_l = the normalised path through layers < l.

Prediction: argmax over labels c of sum_l g_l(x, c) over the trained layers (all layers; in
sequential mode the layers trained so far). Inference pieces (normalisation, label channel,
prototypes, scores) live in :mod:`infoplane.inference.forward_forward`; ``aux_state["inference"]``
records them so ``infoplane extract`` stores the normalised label-free path (neutral label for
``onehot``) and, as layer ``goodness``, the class scores.

Options (``regime_kwargs``): ``ff_label`` (onehot|prototype), ``ff_mode`` (sequential|simultaneous),
``ff_loss`` (reference|sum), ``ff_norm`` (l2|rms), ``threshold`` (2.0).

On several processes (``torchrun``) the wrong labels are drawn for the whole global batch and the
prototypes are updated with the whole global batch, as on one process.
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from infoplane.inference.forward_forward import (FF_LABELS, FF_NORMS, Prototypes, embed_onehot, ff_normalize,
                                                 ff_scores, ff_spec, goodness, mean_goodness)
from ..distributed import Shard
from . import register_regime
from .base import Regime, make_optimizer
from .greedy import check_options

FF_MODES = ("sequential", "simultaneous")
FF_LOSSES = ("reference", "sum")
DEFAULTS = {"ff_label": "onehot", "ff_mode": "sequential", "ff_loss": "reference", "ff_norm": "l2"}


def normalize(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample unit root-mean-square (``ff_norm=rms``): (N, ...) -> (N, ...)."""
    return ff_normalize(z, "rms", eps)


def ff_layer_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ff_loss=sum``: mean of softplus(threshold - G_pos) + softplus(G_neg - threshold) (G, threshold
    summed over units)."""
    return (F.softplus(threshold - g_pos) + F.softplus(g_neg - threshold)).mean()


def ff_reference_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float) -> torch.Tensor:
    """``ff_loss=reference`` (Hinton 2022 code): mean over [pos; neg] of softplus([theta - g_pos; g_neg - theta]),
    g = per-unit (mean) goodness, theta per unit."""
    return F.softplus(torch.cat([threshold - g_pos, g_neg - threshold])).mean()


def wrong_labels(y: torch.Tensor, num_classes: int, generator: Optional[torch.Generator] = None,
                 shard: Optional[Shard] = None) -> torch.Tensor:
    """A uniformly drawn label != y for every sample. ``shard``: y is this process's part of a global
    batch; the draw is made for the whole batch and cut to its rows (as one process draws them)."""
    shift = torch.randint(1, num_classes, y.shape if shard is None else (shard.total,), generator=generator)
    if shard is not None:
        shift = shard.rows(shift)
    return (y + shift.to(y.device)) % num_classes


def _choice(kw: Dict[str, Any], option: str, allowed: Sequence[str]) -> str:
    value = str(kw.get(option, DEFAULTS[option]))
    if value not in allowed:
        raise ValueError(f"forward-forward option {option}={value!r} is not one of {', '.join(allowed)}")
    return value


@register_regime("forward-forward")
class ForwardForward(Regime):
    """Layer-local goodness training; see the module docstring (Hinton 2022; Sakamoto & Sato app. C)."""

    #: regime_kwargs keys it reads
    kwargs = ("ff_label", "ff_mode", "ff_loss", "ff_norm", "threshold")
    #: + the TrainConfig field ``epochs_per_layer`` (sequential mode only, see :meth:`options_for`)
    options = kwargs + ("epochs_per_layer",)

    @classmethod
    def options_for(cls, config) -> FrozenSet[str]:
        opts = set(cls.options)
        if str(config.regime_kwargs.get("ff_mode", DEFAULTS["ff_mode"])) != "sequential":
            opts.discard("epochs_per_layer")
        return frozenset(opts)

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        kw = config.regime_kwargs
        check_options(self.name, kw, self.kwargs)
        self.ff_label = _choice(kw, "ff_label", FF_LABELS)
        self.ff_mode = _choice(kw, "ff_mode", FF_MODES)
        self.ff_loss = _choice(kw, "ff_loss", FF_LOSSES)
        self.ff_norm = _choice(kw, "ff_norm", FF_NORMS)
        self.threshold = float(kw.get("threshold", 2.0))
        if not self.threshold > 0:
            raise ValueError(f"forward-forward option threshold must be > 0, got {self.threshold}")
        self.num_classes = int(model.num_classes)
        self.layers: List[Tuple[str, nn.Module]] = list(model.named_children())
        self.layer_names = [n for n, _ in self.layers]
        if self.ff_label == "prototype":
            self.heads["prototypes"] = Prototypes(self.num_classes, tuple(model.input_shape))
        else:
            embed_onehot(torch.zeros((1,) + tuple(model.input_shape)), torch.zeros(1, dtype=torch.long),
                         self.num_classes)  # validates the input size early
        self.heads.to(self.device)
        self.generator = torch.Generator().manual_seed(int(config.seed) + 15485863)
        self.stage: Optional[int] = None
        if self.ff_mode == "sequential":
            self.epochs_per_layer = int(config.epochs_per_layer or max(1, int(config.epochs) // len(self.layers)))
        else:
            if config.epochs_per_layer is not None:
                raise ValueError("epochs_per_layer is used only by forward-forward with ff_mode=sequential; "
                                 "drop --epochs-per-layer or pass --regime-kwargs ff_mode=sequential")
            self.configure_optimizers()

    # -- staging (sequential) ------------------------------------------------------------------
    def total_epochs(self) -> int:
        if self.ff_mode == "sequential":
            return self.epochs_per_layer * len(self.layers)
        return int(self.config.epochs)

    def stage_of(self, epoch: int) -> int:
        return min((int(epoch) - 1) // self.epochs_per_layer, len(self.layers) - 1)

    def enter_stage(self, k: int) -> None:
        """Freeze layers != k, fresh optimiser for layer k over its ``epochs_per_layer`` epochs."""
        self.stage = k
        for i, (_, layer) in enumerate(self.layers):
            layer.requires_grad_(i == k)
        params = [p for p in self.layers[k][1].parameters() if p.requires_grad]
        if params:
            opt, sched = make_optimizer(self.config, params, self.epochs_per_layer)
            self.optimizers, self.schedulers = [opt], [sched]
        else:
            self.optimizers, self.schedulers = [], []

    def is_staged(self) -> bool:
        return self.ff_mode == "sequential"

    def train(self) -> None:
        super().train()
        if self.ff_mode == "sequential":
            for i, (_, layer) in enumerate(self.layers):
                if i < (self.stage or 0):
                    layer.eval()

    def trained_range(self) -> Tuple[int, int]:
        """(first, last) layer index trained by this step."""
        if self.ff_mode == "sequential":
            k = self.stage or 0
            return k, k
        return 0, len(self.layers) - 1

    def score_layers(self) -> List[str]:
        """Layers whose goodness makes the prediction: all, or (sequential) those trained so far."""
        if self.ff_mode == "sequential":
            return self.layer_names[:(self.stage or 0) + 1]
        return list(self.layer_names)

    # -- training ------------------------------------------------------------------------------
    def layer_loss(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """The ``ff_loss`` of one layer's output h = [pos (n rows); neg]."""
        if self.ff_loss == "reference":
            g = mean_goodness(h)
            return ff_reference_loss(g[:n], g[n:], self.threshold)
        g = goodness(h)
        return ff_layer_loss(g[:n], g[n:], self.threshold * int(h[0].numel()))

    def local_losses(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Losses of the layers trained now (name -> scalar); earlier layers run without a graph."""
        first, last = self.trained_range()
        y_neg = wrong_labels(y, self.num_classes, self.generator, self.shard)
        n = x.shape[0]
        out: Dict[str, torch.Tensor] = {}
        if self.ff_label == "onehot":
            h = torch.cat([embed_onehot(x, y, self.num_classes), embed_onehot(x, y_neg, self.num_classes)])
            for i, (name, layer) in enumerate(self.layers[:last + 1]):
                inp = ff_normalize(h.detach(), self.ff_norm)
                if i < first:
                    with torch.no_grad():
                        h = layer(inp)
                    continue
                h = layer(inp)
                out[name] = self.layer_loss(h, n)
            return out
        protos = self.heads["prototypes"]
        self._update_prototypes(protos, x, y)
        a_x, a_p = x, protos()
        for i, (name, layer) in enumerate(self.layers[:last + 1]):
            nx, np_ = ff_normalize(a_x.detach(), self.ff_norm), ff_normalize(a_p.detach(), self.ff_norm)
            if i >= first:
                out[name] = self.layer_loss(layer(torch.cat([nx + np_[y], nx + np_[y_neg]])), n)
            if i < last:
                with torch.no_grad():
                    a_x, a_p = layer(nx), layer(np_)
        return out

    def _update_prototypes(self, protos: Prototypes, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the batch to the running class means; on several processes the whole global batch."""
        if self.data_parallel is None:
            protos.update(x, y)
            return
        batch = Prototypes(self.num_classes, tuple(x.shape[1:])).to(protos.sums.device)
        batch.update(x, y)
        self.data_parallel.all_reduce_sum_(batch.sums, batch.counts)
        protos.sums += batch.sums
        protos.counts += batch.counts

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        if self.ff_mode == "sequential" and self.stage is None:
            self.enter_stage(0)
        losses = self.local_losses(x, y)
        if not self.optimizers or not any(v.requires_grad for v in losses.values()):
            stats = {"loss": float(sum(float(v) for v in losses.values()))}  # a layer without parameters
        else:
            stats = self.step_local_losses(losses)
        if self.ff_mode == "sequential":
            stats["stage"] = float(self.stage or 0)
        return stats

    # -- prediction and records ------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """sum_l g_l(x, c) over :meth:`score_layers` for every label c: (N, c)."""
        protos = self.heads["prototypes"]() if self.ff_label == "prototype" else None
        return ff_scores(self.layers, x, label=self.ff_label, norm=self.ff_norm, num_classes=self.num_classes,
                         score_layers=self.score_layers(), prototypes=protos)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x)

    def aux_state(self) -> Optional[Dict[str, Any]]:
        state = dict(super().aux_state() or {})
        state["inference"] = ff_spec(label=self.ff_label, norm=self.ff_norm, num_classes=self.num_classes,
                                     score_layers=self.score_layers())
        return state

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "name": self.name, "ff_label": self.ff_label, "ff_mode": self.ff_mode, "ff_loss": self.ff_loss,
            "ff_norm": self.ff_norm, "threshold_per_unit": self.threshold, "layers": list(self.layer_names),
            "goodness": "mean of squares per unit" if self.ff_loss == "reference" else "sum of squares",
            "input_normalisation": "per-sample unit L2 length" if self.ff_norm == "l2" else "per-sample unit RMS",
            "label_value": "per-sample max of x", "prediction": "argmax_c sum_l G_l(x, c) / d_l",
            "score_layers": self.score_layers()}
        if self.ff_mode == "sequential":
            d.update(epochs_per_layer=self.epochs_per_layer, stage=self.stage,
                     stage_layer=None if self.stage is None else self.layer_names[self.stage])
        return d


__all__ = ["FF_MODES", "FF_LOSSES", "FF_LABELS", "FF_NORMS", "DEFAULTS", "normalize", "goodness",
           "mean_goodness", "ff_layer_loss", "ff_reference_loss", "embed_onehot", "wrong_labels", "Prototypes",
           "ForwardForward"]
