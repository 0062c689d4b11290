"""The forward-forward algorithm (Hinton 2022) and the prototype variant of seed 000 appendix C.

Every top-level layer f_l is trained by its own loss on a detached, length-normalised input
(``normalize``: each sample divided by its root-mean-square, so the previous layer's goodness
cannot be reused, app. C). Goodness G_l = sum of squares of f_l's output (per sample). With
positive pairs (x, y) and negative pairs (x, y'), y' a uniformly drawn wrong label, the layer loss is

    softplus(theta d_l - G_l(pos)) + softplus(G_l(neg) - theta d_l)

(d_l = number of units of f_l, ``threshold`` theta = 2.0 per unit: Hinton's "mean goodness
versus 2"). All layers are trained simultaneously on every mini-batch.

``ff_label=onehot`` (original, app. C Fig. 8 top): the label is written as a one-hot code (value =
the batch maximum) into the first c pixels of the first channel (the top-left corner; the first c
features of a flat input). ``ff_label=prototype`` (app. C "Ours"): class prototypes (the running
mean image of each class over the training batches seen) are forwarded separately from x, and
mixed just before the trained layer: input of f_l = normalize(a_l(x)) + normalize(a_l(p_y)), where
a_l is the (normalised) path through layers < l.

Prediction: argmax over labels c of sum_l G_l(x, c). Extraction with the plain backbone feeds
unlabelled inputs without the inter-layer normalisation: layer outputs then differ from the ones
the goodness was trained on (documented limitation of this regime).

Options (``regime_kwargs``): ``ff_label`` (onehot|prototype), ``threshold`` (2.0).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import register_regime
from .base import Regime
from .greedy import check_options

FF_LABELS = ("onehot", "prototype")


def normalize(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample length normalisation to unit root-mean-square: (N, ...) -> (N, ...)."""
    flat = z.flatten(1)
    rms = flat.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (flat / (rms + eps)).view_as(z)


def goodness(h: torch.Tensor) -> torch.Tensor:
    """G = sum of squared activities per sample: (N, ...) -> (N,)."""
    return h.flatten(1).pow(2).sum(dim=1)


def ff_layer_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean of softplus(threshold - G_pos) + softplus(G_neg - threshold) (Hinton 2022)."""
    return (F.softplus(threshold - g_pos) + F.softplus(g_neg - threshold)).mean()


def embed_onehot(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Write one_hot(y) * max(x) into the first ``num_classes`` entries of the first channel."""
    flat = x.clone().flatten(1) if x.dim() == 2 else x.clone().flatten(2)
    first = flat if x.dim() == 2 else flat[:, 0]
    if first.shape[1] < num_classes:
        raise ValueError(f"one-hot label embedding needs >= {num_classes} input entries per channel, "
                         f"got {first.shape[1]}; use ff_label=prototype")
    code = F.one_hot(y, num_classes).to(x.dtype) * x.detach().max()
    first[:, :num_classes] = code
    return flat.view_as(x)


def wrong_labels(y: torch.Tensor, num_classes: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A uniformly drawn label != y for every sample."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


class Prototypes(nn.Module):
    """Running class-mean inputs (buffers ``sums`` (c, *input_shape), ``counts`` (c,))."""

    def __init__(self, num_classes: int, input_shape: Tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("sums", torch.zeros((num_classes,) + tuple(input_shape)))
        self.register_buffer("counts", torch.zeros(num_classes))

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.sums.index_add_(0, y, x.to(self.sums.dtype))
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=self.counts.dtype))

    def forward(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.sums.dim() - 1)
        return self.sums / self.counts.clamp_min(1).view(shape)


@register_regime("forward-forward")
class ForwardForward(Regime):
    """Layer-local goodness training; see the module docstring (seed 000 appendix C)."""

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        kw = config.regime_kwargs
        check_options(self.name, kw, ("ff_label", "threshold"))
        self.ff_label = str(kw.get("ff_label", "onehot"))
        if self.ff_label not in FF_LABELS:
            raise ValueError(f"ff_label={self.ff_label!r} is not one of {', '.join(FF_LABELS)}")
        self.threshold = float(kw.get("threshold", 2.0))
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        self.num_classes = int(model.num_classes)
        self.layers: List[Tuple[str, nn.Module]] = list(model.named_children())
        if self.ff_label == "prototype":
            self.heads["prototypes"] = Prototypes(self.num_classes, tuple(model.input_shape))
        else:
            embed_onehot(torch.zeros((1,) + tuple(model.input_shape)), torch.zeros(1, dtype=torch.long),
                         self.num_classes)  # validates the input size early
        self.heads.to(self.device)
        self.generator = torch.Generator().manual_seed(int(config.seed) + 15485863)
        self.configure_optimizers()

    def _units(self, h: torch.Tensor) -> int:
        return int(h[0].numel())

    def local_losses(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        y_neg = wrong_labels(y, self.num_classes, self.generator)
        out: Dict[str, torch.Tensor] = {}
        if self.ff_label == "onehot":
            n = x.shape[0]
            h = torch.cat([embed_onehot(x, y, self.num_classes), embed_onehot(x, y_neg, self.num_classes)])
            for name, layer in self.layers:
                h = layer(normalize(h.detach()))
                g = goodness(h)
                out[name] = ff_layer_loss(g[:n], g[n:], self.threshold * self._units(h))
            return out
        protos = self.heads["prototypes"]
        protos.update(x, y)
        a_x, a_p = x, protos()
        for name, layer in self.layers:
            nx, np_ = normalize(a_x.detach()), normalize(a_p.detach())
            h = layer(torch.cat([nx + np_[y], nx + np_[y_neg]]))
            g = goodness(h)
            n = x.shape[0]
            out[name] = ff_layer_loss(g[:n], g[n:], self.threshold * self._units(h))
            a_x, a_p = layer(nx), layer(np_)
        return out

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        return self.step_local_losses(self.local_losses(x, y))

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """sum_l G_l(x, c) for every label c: (N, c)."""
        n, c = x.shape[0], self.num_classes
        out = torch.zeros(n, c, device=x.device)
        if self.ff_label == "onehot":
            for label in range(c):
                h = embed_onehot(x, torch.full((n,), label, dtype=torch.long, device=x.device), c)
                for _, layer in self.layers:
                    h = layer(normalize(h))
                    out[:, label] += goodness(h) / self._units(h)
            return out
        a_x, a_p = x, self.heads["prototypes"]()
        for _, layer in self.layers:
            nx, np_ = normalize(a_x), normalize(a_p)
            for label in range(c):
                h = layer(nx + np_[label:label + 1])
                out[:, label] += goodness(h) / self._units(h)
            a_x, a_p = layer(nx), layer(np_)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x)

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "ff_label": self.ff_label, "threshold_per_unit": self.threshold,
                "goodness": "sum of squares", "input_normalisation": "per-sample RMS",
                "prediction": "argmax_c sum_l G_l(x, c) / d_l"}


__all__ = ["normalize", "goodness", "ff_layer_loss", "embed_onehot", "wrong_labels", "Prototypes",
           "ForwardForward"]
