"""ContSup: greedy local learning with context supply between gradient-isolated modules (seed 004).

Module k (0-based, k >= 1) no longer sees only h_{k-1} but h^c_{k-1} = h_{k-1} + context:

* ``E``   eq. 11:  h^c_{k-1} = h_{k-1} + M_E^k(x)                 (the original input),
* ``R1``  eq. 13:  h^c_{k-1} = h_{k-1} + M_R1^k(h^c_{k-2})         (the previous module's input),
* ``R1E`` eq. 15:  h^c_{k-1} = h_{k-1} + M_E^k(x) + M_R1^k(h^c_{k-2}),

with h^c_{-1} = x (module 0 gets x unchanged). M_E is seed 004 Table 7 (two 3x3 conv + BN + ReLU,
adaptive average pooling to h_{k-1}'s size); M_R1 is "a single 1x1 convolution and pooling"
(seed 004 appendix, Table 8 text); flat shapes use one linear map. The context encoders of module
k are trained by module k's local loss only (Algorithm 2: update theta_k, w_k, phi_k): their
inputs are detached. Local loss: CE of the Table 6 classifier (``contsup_loss=softmax``, default)
or the contrastive loss (``contrast``, tau 0.07); the last module is trained by plain CE.

Inference uses the context paths, so the backbone alone does not compute the trained function.
The encoders are saved in the checkpoint's ``aux_state["heads"]`` (keys ``ctxE_k.*``,
``ctxR_k.*``) and ``regime`` records ``context`` and ``modules``. :func:`load_contsup_model` rebuilds
a :class:`ContSupNet`: the same top-level layers (same names, so extraction sees the backbone
layers ``conv1``, ``block3``, ...; the encoders sit under ``contexts`` and are not listed in
``layer_names``) whose forward adds the context before the first layer of each module.
Extracting from the plain backbone instead gives each layer's output on context-free inputs.

Options (``config.regime_kwargs``): ``modules``, ``context`` (E|R1|R1E, default R1E),
``contsup_loss`` (softmax|contrast), ``tau``, ``async``/``epochs_per_module``.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from infoplane.models.base import LayeredNet
from . import register_regime
from .greedy import ConvFCHead, ModularRegime
from .infopro import infopro_contrast_loss

CONTEXTS = ("E", "R1", "R1E")


class ShapeEncoder(nn.Module):
    """Maps (N, *in_shape) to (N, *out_shape).

    ``kind="E"`` (seed 004 Table 7): images -> 3x3 conv (C_out) + BN + ReLU, 3x3 conv + BN + ReLU,
    adaptive average pool to the target size. ``kind="R"``: 1x1 conv + adaptive average pool.
    Either side flat: flatten + one linear layer (reshaped to ``out_shape``)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], kind: str) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.spatial = len(self.in_shape) == 3 and len(self.out_shape) == 3
        if self.spatial:
            cin, cout = self.in_shape[0], self.out_shape[0]
            if kind == "E":
                self.net = nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(self.out_shape[1:]))
            elif kind == "R":
                self.net = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.AdaptiveAvgPool2d(self.out_shape[1:]))
            else:
                raise ValueError(f"encoder kind must be 'E' or 'R', got {kind!r}")
        else:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.Size(self.in_shape).numel()),
                                                             int(torch.Size(self.out_shape).numel())))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        out = self.net(c)
        return out if self.spatial else out.view((c.shape[0],) + self.out_shape)


def build_context_encoders(input_shape: Sequence[int], feature_shapes: Sequence[Sequence[int]],
                           context: str) -> nn.ModuleDict:
    """Encoders of modules 1..K-1: ``ctxE_k`` (x -> shape of h_{k-1}) and ``ctxR_k``
    (h^c_{k-2} -> shape of h_{k-1}; h^c_{-1} = x)."""
    if context not in CONTEXTS:
        raise ValueError(f"context={context!r} is not one of {', '.join(CONTEXTS)}")
    enc = nn.ModuleDict()
    in_shape = tuple(int(s) for s in input_shape)
    for k in range(1, len(feature_shapes)):
        target = tuple(feature_shapes[k - 1])
        if "E" in context:
            enc[f"ctxE_{k}"] = ShapeEncoder(in_shape, target, "E")
        if "R1" in context:
            prev_in = in_shape if k == 1 else tuple(feature_shapes[k - 2])
            enc[f"ctxR_{k}"] = ShapeEncoder(prev_in, target, "R")
    return enc


def context_input(encoders: nn.ModuleDict, k: int, x: torch.Tensor, h_prev: torch.Tensor,
                  in_prev: torch.Tensor) -> torch.Tensor:
    """Eq. 11 / 13 / 15: h^c_{k-1} = h_{k-1} + M_E^k(x) + M_R1^k(h^c_{k-2}) (present terms only)."""
    out = h_prev
    if f"ctxE_{k}" in encoders:
        out = out + encoders[f"ctxE_{k}"](x)
    if f"ctxR_{k}" in encoders:
        out = out + encoders[f"ctxR_{k}"](in_prev)
    return out


@register_regime("contsup")
class ContSup(ModularRegime):
    """Seed 004 Algorithm 2 with the E / R1 / R1E context; see the module docstring."""

    options = ModularRegime.options + ("context", "contsup_loss", "tau")

    def __init__(self, model: nn.Module, config, device) -> None:
        kw = config.regime_kwargs
        self.context = str(kw.get("context", "R1E")).upper()
        if self.context not in CONTEXTS:
            raise ValueError(f"context={self.context!r} is not one of {', '.join(CONTEXTS)}")
        self.contsup_loss = str(kw.get("contsup_loss", "softmax"))
        if self.contsup_loss not in ("softmax", "contrast"):
            raise ValueError(f"contsup_loss={self.contsup_loss!r} is not one of softmax, contrast")
        self.tau = float(kw.get("tau", 0.07))
        super().__init__(model, config, device)

    def build_aux(self) -> None:
        out_dim = self.num_classes if self.contsup_loss == "softmax" else 128
        for k in range(self.K - 1):
            self.heads[f"aux_{k}"] = ConvFCHead(self.split.feature_shapes[k], out_dim)
        for name, enc in build_context_encoders(self.model.input_shape, self.split.feature_shapes,
                                                self.context).items():
            self.heads[name] = enc

    def module_input(self, k: int, x: torch.Tensor, h_prev: torch.Tensor, in_prev: torch.Tensor) -> torch.Tensor:
        return context_input(self.heads, k, x, h_prev, in_prev)

    def local_loss(self, k: int, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.heads[f"aux_{k}"](h)
        if self.contsup_loss == "softmax":
            return F.cross_entropy(out, y)
        return infopro_contrast_loss(out, y, self.tau)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "context": self.context, "contsup_loss": self.contsup_loss,
                "tau": self.tau, "aux": "conv+2fc (seed 004 Table 6)",
                "inference": "context paths used; rebuild with trainers.regimes.contsup:load_contsup_model"}


class ContSupNet(LayeredNet):
    """The backbone's layers plus the context encoders, computing the trained ContSup function.

    Top-level layers keep the backbone's names (``layer_names`` excludes ``contexts``), so layer
    selection and hooks see the same layers as on the backbone; ``modules`` is the K-split."""

    def __init__(self, backbone: LayeredNet, modules: Sequence[Sequence[str]], encoders: nn.ModuleDict) -> None:
        names = [n for n, _ in backbone.named_children()]
        flat = [n for m in modules for n in m]
        if flat != names:
            raise ValueError(f"modules {modules} do not list the backbone's layers {names} in order")
        super().__init__(OrderedDict(backbone.named_children()), backbone.input_shape, backbone.num_classes,
                         getattr(backbone, "basic_layers", None))
        self.modules_names = [list(m) for m in modules]
        self._layer_list = names
        self.contexts = encoders

    @property
    def layer_names(self) -> List[str]:
        return list(self._layer_list)

    def forward_layers(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        h, inp = x, x
        for k, names in enumerate(self.modules_names):
            if k > 0:
                inp = context_input(self.contexts, k, x, h, inp)
                h = inp
            for n in names:
                h = getattr(self, n)(h)
                outs[n] = h
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return next(reversed(self.forward_layers(x).values()))


def contsup_model(backbone: LayeredNet, regime: Dict[str, Any], aux_state: Optional[Dict[str, Any]]) -> ContSupNet:
    """Rebuild the :class:`ContSupNet` from a backbone, a checkpoint's ``regime`` and ``aux_state``."""
    if regime.get("name") != "contsup":
        raise ValueError(f"not a contsup checkpoint (regime name {regime.get('name')!r})")
    if not aux_state or "heads" not in aux_state:
        raise ValueError("the checkpoint has no aux_state['heads']: the context encoders are missing")
    modules = regime["modules"]
    from ..local_modules import LocalModules
    split = LocalModules(backbone, len(modules))
    if split.modules_names != [list(m) for m in modules]:
        raise ValueError(f"the backbone splits into {split.modules_names}, the checkpoint says {modules}")
    enc = build_context_encoders(backbone.input_shape, split.feature_shapes, regime["context"])
    heads = aux_state["heads"]
    state = {k: v for k, v in heads.items() if k.split(".", 1)[0] in enc}
    enc.load_state_dict(state, strict=True)
    p = next(backbone.parameters(), None)
    return ContSupNet(backbone, modules, enc.to(p.device if p is not None else "cpu")).eval()


def load_contsup_model(path: Union[str, Path], device: str = "cpu", factory: Optional[str] = None) -> ContSupNet:
    """Load a contsup checkpoint and return the network with its context paths (for extraction)."""
    from infoplane.checkpoint import load_checkpoint
    ck = load_checkpoint(path)
    backbone = ck.build_model(factory, device=device) if factory else ck.build_model(device=device)
    return contsup_model(backbone, ck.regime, ck.aux_state)


__all__ = ["CONTEXTS", "ShapeEncoder", "build_context_encoders", "context_input", "ContSup", "ContSupNet",
           "contsup_model", "load_contsup_model"]
