"""ContSup inference: the backbone plus its context paths (eqs. 11, 13, 15, 16 of Yu et al. 2023,
Go beyond End-to-End Training: Boosting Greedy Local Learning with Context Supply).

The network is split into K gradient-isolated modules; module k (0-based) gets
``h^c_{k-1}`` instead of ``h_{k-1}``:

    h^c_{k-1} = h_{k-1} + [M_E^k(x)] + sum_{i=1..n} M_{R_i}^k(h^c_{k-1-i})          (eq. 16)

with ``h^c_{-1} = x`` (module 0 gets x unchanged) and only the terms with ``k-1-i >= -1`` present
(``h^c_j`` is the input of module j+1; in code: ``inputs[j]`` = input of module j, ``inputs[0] = x``).
Context names (``context``): ``E`` (eq. 11, the input only), ``R<n>`` (the last n module inputs, e.g.
``R1`` = eq. 13, ``R2`` ... ``R16`` of the paper's Table 4), ``R<n>E`` (both; ``R1E`` = eq. 15),
``Rn`` / ``RnE`` (every earlier module input: the full topological connection of eq. 16).

Encoders: ``M_E`` = two 3x3 conv + BN + ReLU and adaptive average pooling to the target size (the
paper's Table 7); ``M_R`` = a 1x1 conv and pooling (Table 8); flat shapes use one linear map. Names
in the checkpoint's ``aux_state["heads"]``: ``ctxE_k``, ``ctxR_k`` (i = 1) and ``ctxR<i>_k`` (i >= 2).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from infoplane.models.base import LayeredNet
from infoplane.models.split import feature_shapes

#: ``n`` of ``Rn`` / ``RnE``: every earlier module input
ALL = -1
CONTEXT_HELP = "E, R<n>, R<n>E (n >= 1: R1, R1E, R2 ... R16, R2E ...), Rn or RnE (every earlier module)"
_CONTEXT_RE = re.compile(r"^(?:R(\d+|n))?(E)?$", re.IGNORECASE)


def parse_context(context: Any) -> Tuple[bool, int]:
    """``"R2E"`` -> (use_E=True, n=2); ``"E"`` -> (True, 0); ``"RnE"`` -> (True, ALL).

    Raises ValueError naming the option ``context`` and its allowed values."""
    text = str(context).strip()
    m = _CONTEXT_RE.match(text)
    if not text or m is None or (m.group(1) is None and m.group(2) is None):
        raise ValueError(f"context={context!r} is not a ContSup context; allowed: {CONTEXT_HELP}")
    use_e = m.group(2) is not None
    if m.group(1) is None:
        return use_e, 0
    if m.group(1).lower() == "n":
        return use_e, ALL
    n = int(m.group(1))
    if n < 1:
        raise ValueError(f"context={context!r}: R<n> needs n >= 1 (R0 is DGL, use --regime dgl); "
                         f"allowed: {CONTEXT_HELP}")
    return use_e, n


def canonical_context(context: Any) -> str:
    """The canonical spelling: ``"r1e"`` -> ``"R1E"``, ``"rne"`` -> ``"RnE"``."""
    use_e, n = parse_context(context)
    r = "" if n == 0 else ("Rn" if n == ALL else f"R{n}")
    return r + ("E" if use_e else "")


def history_depth(context: Any, modules: int) -> int:
    """How many earlier module inputs the context reads (``Rn``: all, at most K - 1)."""
    _, n = parse_context(context)
    return max(int(modules) - 1, 0) if n == ALL else n


class ShapeEncoder(nn.Module):
    """Maps (N, *in_shape) to (N, *out_shape).

    ``kind="E"`` (Table 7): 3x3 conv (C_out) + BN + ReLU, 3x3 conv + BN + ReLU, adaptive average
    pool to the target size. ``kind="R"`` (Table 8): 1x1 conv + adaptive average pool. Either side
    flat: flatten + one linear layer (reshaped to ``out_shape``)."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], kind: str) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.spatial = len(self.in_shape) == 3 and len(self.out_shape) == 3
        if kind not in ("E", "R"):
            raise ValueError(f"encoder kind must be 'E' or 'R', got {kind!r}")
        if self.spatial:
            cin, cout = self.in_shape[0], self.out_shape[0]
            if kind == "E":
                self.net = nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(self.out_shape[1:]))
            else:
                self.net = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.AdaptiveAvgPool2d(self.out_shape[1:]))
        else:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.Size(self.in_shape).numel()),
                                                             int(torch.Size(self.out_shape).numel())))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        out = self.net(c)
        return out if self.spatial else out.view((c.shape[0],) + self.out_shape)


def encoder_name(kind: str, k: int, i: int = 1) -> str:
    """``ctxE_k`` / ``ctxR_k`` (i = 1) / ``ctxR<i>_k``: the encoder of module k (suffix = module)."""
    if kind == "E":
        return f"ctxE_{k}"
    return f"ctxR_{k}" if i == 1 else f"ctxR{i}_{k}"


def build_context_encoders(input_shape: Sequence[int], feature_shapes: Sequence[Sequence[int]],
                           context: Any) -> nn.ModuleDict:
    """Encoders of modules 1..K-1 (eq. 16): ``ctxE_k`` (x -> shape of h_{k-1}) and, for
    i = 1..n with k-i >= 0, ``M_{R_i}^k`` (input of module k-i -> shape of h_{k-1})."""
    use_e, n = parse_context(context)
    K = len(feature_shapes)
    in_shape = tuple(int(s) for s in input_shape)
    shapes_in = [in_shape] + [tuple(int(s) for s in f) for f in feature_shapes[:-1]]  # input of module j
    enc = nn.ModuleDict()
    for k in range(1, K):
        target = tuple(int(s) for s in feature_shapes[k - 1])
        if use_e:
            enc[encoder_name("E", k)] = ShapeEncoder(in_shape, target, "E")
        depth = k if n == ALL else min(n, k)
        for i in range(1, depth + 1):
            enc[encoder_name("R", k, i)] = ShapeEncoder(shapes_in[k - i], target, "R")
    return enc


def context_input(encoders: Mapping[str, nn.Module], k: int, x: torch.Tensor, h_prev: torch.Tensor,
                  inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """Eq. 16: h^c_{k-1} = h_{k-1} + M_E^k(x) + sum_i M_{R_i}^k(inputs[-i]) (present encoders only).

    ``inputs``: the inputs of the modules before k, most recent last (``inputs[-1]`` = input of
    module k-1, ``h^c_{k-2}``); a single tensor means ``[input of module k-1]``."""
    hist = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    out = h_prev
    name = encoder_name("E", k)
    if name in encoders:
        out = out + encoders[name](x)
    i = 1
    while encoder_name("R", k, i) in encoders:
        if i > len(hist):
            raise ValueError(f"context encoder {encoder_name('R', k, i)} needs the input of module {k - i}, "
                             f"but only {len(hist)} earlier module inputs were given")
        out = out + encoders[encoder_name("R", k, i)](hist[-i])
        i += 1
    return out


class ContSupNet(LayeredNet):
    """The backbone's layers plus the context encoders: the trained ContSup function.

    Top-level layers keep the backbone's names (``layer_names`` excludes ``contexts``), so layer
    selection and hooks see the same layers as on the backbone, each recorded once per forward pass
    as used at inference (after the context was added to its module's input).
    ``modules_names`` is the K-split. Shapes: (N, *input_shape) -> (N, num_classes)."""

    def __init__(self, backbone: LayeredNet, modules: Sequence[Sequence[str]], encoders: nn.ModuleDict,
                 context: str = "") -> None:
        names = [n for n, _ in backbone.named_children()]
        flat = [n for m in modules for n in m]
        if flat != names:
            raise ValueError(f"ContSup modules {modules} do not list the backbone's layers {names} in order; "
                             f"the checkpoint's regime['modules'] does not match this architecture")
        if "contexts" in names:
            raise ValueError("the backbone has a layer named 'contexts', which ContSupNet reserves")
        super().__init__(OrderedDict(backbone.named_children()), backbone.input_shape, backbone.num_classes,
                         getattr(backbone, "basic_layers", None))
        self.modules_names = [list(m) for m in modules]
        self._layer_list = names
        self.context = context
        self.contexts = encoders

    @property
    def layer_names(self) -> List[str]:
        return list(self._layer_list)

    def forward_layers(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        h: torch.Tensor = x
        inputs: List[torch.Tensor] = []
        for k, names in enumerate(self.modules_names):
            inp = x if k == 0 else context_input(self.contexts, k, x, h, inputs)
            inputs.append(inp)
            h = inp
            for n in names:
                h = getattr(self, n)(h)
                outs[n] = h
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return next(reversed(self.forward_layers(x).values()))


def contsup_spec(modules: Sequence[Sequence[str]], context: Any) -> Dict[str, Any]:
    """The checkpoint's ``aux_state["inference"]`` record of a ContSup run (plain types)."""
    return {"kind": "contsup", "modules": [list(m) for m in modules], "context": canonical_context(context),
            "encoders": "aux_state['heads'] ctxE_k / ctxR_k / ctxR<i>_k", "prediction_layer": "out"}


def build_contsup(backbone: LayeredNet, spec: Mapping[str, Any], heads: Mapping[str, torch.Tensor],
                  source: str = "checkpoint") -> ContSupNet:
    """Rebuild the :class:`ContSupNet` from a backbone, the inference record and ``aux_state["heads"]``."""
    for key in ("modules", "context"):
        if key not in spec:
            raise ValueError(f"{source}: the ContSup inference record has no {key!r}; re-save the checkpoint "
                             f"with the current trainers")
    modules = [list(m) for m in spec["modules"]]
    enc = build_context_encoders(backbone.input_shape, feature_shapes(backbone, modules), spec["context"])
    state = {k: v for k, v in heads.items() if k.split(".", 1)[0] in enc}
    try:
        enc.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: aux_state['heads'] does not hold the context encoders of context "
                         f"{spec['context']!r} ({str(err).splitlines()[0]})") from None
    p = next(backbone.parameters(), None)
    return ContSupNet(backbone, modules, enc.to(p.device if p is not None else "cpu"),
                      canonical_context(spec["context"])).eval()


__all__ = ["ALL", "CONTEXT_HELP", "parse_context", "canonical_context", "history_depth", "ShapeEncoder",
           "encoder_name", "build_context_encoders", "context_input", "ContSupNet", "feature_shapes",
           "contsup_spec", "build_contsup"]
