"""Linear evaluation of a contrastively trained network (SupCon, Khosla et al. 2020; SimCLR, Chen et al. 2020).

E2E contrastive training shapes the network output ``out`` (the embedding the loss sees after L2
normalisation); the class prediction is a linear head on that normalised output,
``logits = W out / ||out|| + b``, trained on the detached output. ``LinearEvalNet`` stores ``out`` as
trained (not normalised) and exposes the head's logits as the extra layer ``linear_eval`` (selected by
name, not part of ``"all"``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from infoplane.models.base import LayeredNet


class LinearEvalNet(LayeredNet):
    """The backbone's layers (same names) + ``linear_eval`` (nn.Linear) on the L2-normalised ``out``.

    ``forward``: (N, *input_shape) -> logits (N, C) of the evaluation head (the prediction)."""

    def __init__(self, backbone: LayeredNet, head: nn.Linear) -> None:
        names = [n for n, _ in backbone.named_children()]
        if "linear_eval" in names:
            raise ValueError("the backbone has a layer named 'linear_eval', which LinearEvalNet reserves")
        super().__init__(OrderedDict(backbone.named_children()), backbone.input_shape, backbone.num_classes,
                         getattr(backbone, "basic_layers", None))
        self._layer_list = names
        self.linear_eval = head

    @property
    def layer_names(self) -> List[str]:
        return list(self._layer_list)

    def forward_layers(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for n in self._layer_list:
            x = getattr(self, n)(x)
            outs[n] = x
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = next(reversed(self.forward_layers(x).values()))
        return self.linear_eval(F.normalize(out.flatten(1), dim=1))


def linear_eval_spec() -> Dict[str, Any]:
    """The checkpoint's ``aux_state["inference"]`` record of a contrastive E2E run."""
    return {"kind": "linear-eval", "head": "linear_eval", "input": "L2-normalised out",
            "prediction_layer": "linear_eval"}


def build_linear_eval(backbone: LayeredNet, spec: Mapping[str, Any], heads: Mapping[str, torch.Tensor],
                      source: str = "checkpoint") -> LinearEvalNet:
    """Rebuild the :class:`LinearEvalNet` from a backbone and ``aux_state["heads"]["linear_eval.*"]``."""
    name = str(spec.get("head", "linear_eval"))
    state = {k.split(".", 1)[1]: v for k, v in (heads or {}).items() if k.startswith(name + ".")}
    if set(state) != {"weight", "bias"}:
        raise ValueError(f"{source}: the linear evaluation head needs aux_state['heads'] {name}.weight and "
                         f"{name}.bias; the checkpoint has {sorted(heads or {})}")
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    p = next(backbone.parameters(), None)
    return LinearEvalNet(backbone, head.to(p.device if p is not None else "cpu")).eval()


__all__ = ["LinearEvalNet", "linear_eval_spec", "build_linear_eval"]
