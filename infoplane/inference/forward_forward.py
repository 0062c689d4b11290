"""Forward-forward inference (Hinton 2022, The Forward-Forward Algorithm; Sakamoto & Sato app. C).

Every top-level layer f_l sees its *normalised* input: ``ff_normalize`` divides each sample by its
L2 length (``norm="l2"``, Hinton 2022 and the main paper's app. C: "normalizes the output's L2 norm
before passing it to the subsequent layer") or by its root-mean-square (``norm="rms"``, our earlier
variant: unit RMS = L2 length sqrt(d)). Goodness of a layer output h (N, d_l): G = sum of squares
(``goodness``); the per-unit goodness G / d_l is ``mean_goodness``.

Label channel (``label="onehot"``, Hinton 2022): the code ``c`` (N, C) times the sample's maximum
is written into the first C entries of the first channel (top-left pixels). ``label="prototype"``
(app. C "Ours"): class prototypes p_c (running class-mean inputs) are forwarded separately from x
and mixed just before layer l: input of f_l = n(a_{l-1}(x)) + n(a_{l-1}(p_c)), with the label-free
path a_l(x) = f_l(n(a_{l-1}(x))), a_0 = x, n = ``ff_normalize``.

Prediction (both): argmax_c sum_{l in score layers} G_l(x, c) / d_l (``ff_scores``, (N, C)).

Stored activations (``FFNet``): each layer's output on the label-free path that the trained layers
see at inference: ``onehot`` feeds the *neutral* label (every label entry max(x) / C, Hinton 2022
sec. 3.3) and normalises between layers; ``prototype`` stores a_l(x). ``out`` is the output layer's
activation on that path (its argmax is *not* the prediction); the goodness-based class scores are the
extra layer ``goodness`` (selected by name, not part of ``"all"``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from infoplane.hooks import not_captured
from infoplane.models.base import LayeredNet

FF_LABELS = ("onehot", "prototype")
FF_NORMS = ("l2", "rms")
#: eps added to the L2 length (Hinton 2022 reference code: 1e-4) or to the RMS
NORM_EPS = {"l2": 1e-4, "rms": 1e-8}


def ff_normalize(z: torch.Tensor, norm: str = "l2", eps: Optional[float] = None) -> torch.Tensor:
    """Per-sample length normalisation of (N, ...): ``l2`` z / (||z||_2 + eps); ``rms`` z / (rms(z) + eps)."""
    if norm not in FF_NORMS:
        raise ValueError(f"ff_norm={norm!r} is not one of {', '.join(FF_NORMS)}")
    eps = NORM_EPS[norm] if eps is None else float(eps)
    flat = z.flatten(1)
    scale = flat.norm(dim=1, keepdim=True) if norm == "l2" else flat.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (flat / (scale + eps)).view_as(z)


def goodness(h: torch.Tensor) -> torch.Tensor:
    """G = sum of squared activities per sample: (N, ...) -> (N,)."""
    return h.flatten(1).pow(2).sum(dim=1)


def mean_goodness(h: torch.Tensor) -> torch.Tensor:
    """G / d = mean of squared activities per sample: (N, ...) -> (N,)."""
    return h.flatten(1).pow(2).mean(dim=1)


def embed_label(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Write ``code`` (N, C) times each sample's maximum into the first C entries of the first channel.

    Per-sample maximum (not the batch's), so a sample's embedding never depends on its batch."""
    n, c = code.shape
    flat = x.clone().flatten(1) if x.dim() == 2 else x.clone().flatten(2)
    first = flat if x.dim() == 2 else flat[:, 0]
    if first.shape[1] < c:
        raise ValueError(f"one-hot label embedding needs >= {c} input entries per channel, got "
                         f"{first.shape[1]}; use ff_label=prototype")
    peak = x.detach().flatten(1).max(dim=1).values.view(n, 1)
    first[:, :c] = code.to(x.dtype) * peak
    return flat.view_as(x)


def embed_onehot(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The one-hot label channel of Hinton 2022: ``embed_label(x, one_hot(y))``."""
    return embed_label(x, torch.nn.functional.one_hot(y, num_classes).to(x.dtype))


def embed_neutral(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The neutral label (every entry 1 / C of the sample's maximum; Hinton 2022 sec. 3.3)."""
    return embed_label(x, torch.full((x.shape[0], int(num_classes)), 1.0 / int(num_classes),
                                     dtype=x.dtype, device=x.device))


class Prototypes(nn.Module):
    """Running class-mean inputs (buffers ``sums`` (C, *input_shape), ``counts`` (C,))."""

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


Layers = Sequence[Tuple[str, nn.Module]]


def ff_scores(layers: Layers, x: torch.Tensor, *, label: str, norm: str, num_classes: int,
              score_layers: Optional[Sequence[str]] = None,
              prototypes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_{l in score_layers} G_l(x, c) / d_l for every label c: (N, C) (all layers when None).

    ``prototypes`` (C, *input_shape) for ``label="prototype"``. Layers after the last score layer
    are not run."""
    n, c = x.shape[0], int(num_classes)
    names = [nm for nm, _ in layers]
    chosen = set(names if score_layers is None else score_layers)
    unknown = chosen - set(names)
    if unknown:
        raise ValueError(f"score layers {sorted(unknown)} are not layers of the network ({names})")
    last = max(i for i, nm in enumerate(names) if nm in chosen) if chosen else -1
    out = torch.zeros(n, c, device=x.device, dtype=x.dtype)
    if label == "onehot":
        for lab in range(c):
            h = embed_onehot(x, torch.full((n,), lab, dtype=torch.long, device=x.device), c)
            for i, (nm, layer) in enumerate(layers[:last + 1]):
                h = layer(ff_normalize(h, norm))
                if nm in chosen:
                    out[:, lab] += mean_goodness(h)
        return out
    if label != "prototype":
        raise ValueError(f"ff_label={label!r} is not one of {', '.join(FF_LABELS)}")
    if prototypes is None:
        raise ValueError("ff_label=prototype needs the class prototypes (aux_state['heads']['prototypes.*'])")
    a_x, a_p = x, prototypes.to(x.device, x.dtype)
    for i, (nm, layer) in enumerate(layers[:last + 1]):
        nx, np_ = ff_normalize(a_x, norm), ff_normalize(a_p, norm)
        if nm in chosen:
            for lab in range(c):
                out[:, lab] += mean_goodness(layer(nx + np_[lab:lab + 1]))
        if i < last:
            a_x, a_p = layer(nx), layer(np_)
    return out


class GoodnessScores(nn.Identity):
    """The goodness-based class scores (N, C) as a hookable module (extraction layer ``goodness``)."""


class FFNet(LayeredNet):
    """The trained forward-forward function: normalised label-free path + goodness scores.

    Children: the backbone's layers (same names; ``layer_names`` lists only these), ``goodness``
    (:class:`GoodnessScores`) and, for prototypes, ``prototypes``. ``forward`` returns the scores
    (N, C) whose argmax is the prediction; the per-label passes run inside
    :func:`infoplane.hooks.not_captured`, so hooks record each layer once, on the label-free path."""

    def __init__(self, backbone: LayeredNet, *, label: str, norm: str, score_layers: Optional[Sequence[str]] = None,
                 prototypes: Optional[Prototypes] = None) -> None:
        names = [n for n, _ in backbone.named_children()]
        for reserved in ("goodness", "prototypes"):
            if reserved in names:
                raise ValueError(f"the backbone has a layer named {reserved!r}, which FFNet reserves")
        if label not in FF_LABELS:
            raise ValueError(f"ff_label={label!r} is not one of {', '.join(FF_LABELS)}")
        if norm not in FF_NORMS:
            raise ValueError(f"ff_norm={norm!r} is not one of {', '.join(FF_NORMS)}")
        if label == "prototype" and prototypes is None:
            raise ValueError("ff_label=prototype needs the class prototypes")
        super().__init__(OrderedDict(backbone.named_children()), backbone.input_shape, backbone.num_classes,
                         getattr(backbone, "basic_layers", None))
        self._layer_list = names
        self.label, self.norm = label, norm
        self.score_layers = list(names if score_layers is None else score_layers)
        self.goodness = GoodnessScores()
        if prototypes is not None:
            self.prototypes = prototypes

    @property
    def layer_names(self) -> List[str]:
        return list(self._layer_list)

    def _layers(self) -> List[Tuple[str, nn.Module]]:
        return [(n, getattr(self, n)) for n in self._layer_list]

    def forward_layers(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Every layer's output on the label-free path (neutral label / x path), normalised between layers."""
        outs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        h = embed_neutral(x, self.num_classes) if self.label == "onehot" else x
        for n, layer in self._layers():
            h = layer(ff_normalize(h, self.norm))
            outs[n] = h
        return outs

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Goodness-based class scores (N, C) (:func:`ff_scores`)."""
        protos = self.prototypes() if self.label == "prototype" else None
        return ff_scores(self._layers(), x, label=self.label, norm=self.norm, num_classes=self.num_classes,
                         score_layers=self.score_layers, prototypes=protos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with not_captured():
            s = self.scores(x)
        self.forward_layers(x)
        return self.goodness(s)


def ff_spec(*, label: str, norm: str, num_classes: int, score_layers: Sequence[str]) -> Dict[str, Any]:
    """The checkpoint's ``aux_state["inference"]`` record of a forward-forward run (plain types)."""
    return {"kind": "forward-forward", "label": label, "norm": norm, "norm_eps": NORM_EPS[norm],
            "label_value": "sample max", "num_classes": int(num_classes), "score_layers": list(score_layers),
            "representation": "neutral label" if label == "onehot" else "label-free x path",
            "prediction_layer": "goodness"}


def build_ff(backbone: LayeredNet, spec: Mapping[str, Any], heads: Optional[Mapping[str, torch.Tensor]],
             source: str = "checkpoint") -> FFNet:
    """Rebuild the :class:`FFNet` from a backbone, the inference record and ``aux_state["heads"]``."""
    label = str(spec.get("label", "onehot"))
    norm = str(spec.get("norm", "l2"))
    protos: Optional[Prototypes] = None
    if label == "prototype":
        heads = heads or {}
        state = {k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith("prototypes.")}
        if set(state) != {"sums", "counts"}:
            raise ValueError(f"{source}: forward-forward with ff_label=prototype needs aux_state['heads'] "
                             f"prototypes.sums and prototypes.counts; the checkpoint has {sorted(heads)}")
        protos = Prototypes(int(backbone.num_classes), tuple(backbone.input_shape))
        protos.load_state_dict(state)
        p = next(backbone.parameters(), None)
        protos = protos.to(p.device if p is not None else "cpu")
    return FFNet(backbone, label=label, norm=norm, score_layers=spec.get("score_layers"), prototypes=protos).eval()


__all__ = ["FF_LABELS", "FF_NORMS", "NORM_EPS", "ff_normalize", "goodness", "mean_goodness", "embed_label",
           "embed_onehot", "embed_neutral", "Prototypes", "ff_scores", "GoodnessScores", "FFNet", "ff_spec",
           "build_ff"]
