"""ContSup: greedy local learning with context supply between gradient-isolated modules.

Yu et al. 2023, Go beyond End-to-End Training: Boosting Greedy Local Learning with Context Supply,
Algorithm 2. Module k (0-based, k >= 1) no longer sees only h_{k-1} but

    h^c_{k-1} = h_{k-1} + [M_E^k(x)] + sum_{i=1..n} M_{R_i}^k(h^c_{k-1-i})            (eq. 16)

with h^c_{-1} = x (module 0 gets x unchanged): ``E`` eq. 11 (input only), ``R1`` eq. 13 (the previous
module's input), ``R1E`` eq. 15, ``R<n>`` / ``R<n>E`` the last n module inputs (Table 4: R2 ... R16),
``Rn`` / ``RnE`` every earlier module input (eq. 16's full connection). M_E is the paper's Table 7
(two 3x3 conv + BN + ReLU, adaptive average pooling to h_{k-1}'s size); M_R "a single 1x1 convolution
and pooling" (Table 8); flat shapes use one linear map (:mod:`infoplane.inference.contsup`). The
context encoders of module k are trained by module k's local loss only (Algorithm 2: update theta_k,
w_k, phi_k): their inputs are detached. Local loss: CE of the Table 6 classifier
(``contsup_loss=softmax``, default) or the contrastive loss (``contrast``, tau 0.07); the last module
is trained by plain CE.

Inference uses the context paths, so the backbone alone does not compute the trained function. The
encoders are saved in the checkpoint's ``aux_state["heads"]`` (``ctxE_k.*``, ``ctxR_k.*``,
``ctxR<i>_k.*``) and ``aux_state["inference"]`` records the split and the context;
``infoplane extract`` (``Checkpoint.build_inference_model``) rebuilds the
:class:`~infoplane.inference.contsup.ContSupNet` (same top-level layer names; encoders under
``contexts``), whose forward adds the context before the first layer of each module.

Options (``config.regime_kwargs``): ``modules``, ``context`` (E|R<n>|R<n>E|Rn|RnE, default R1E),
``contsup_loss`` (softmax|contrast), ``tau``, ``async``/``epochs_per_module``/``cache_rows``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from infoplane.inference.contsup import (CONTEXT_HELP, ContSupNet, ShapeEncoder, build_context_encoders,
                                         build_contsup, canonical_context, context_input, contsup_spec,
                                         history_depth, parse_context)
from infoplane.models.base import LayeredNet
from ..local_modules import ActivationCache
from . import register_regime
from .greedy import ConvFCHead, ModularRegime
from .infopro import infopro_contrast_loss

#: the paper's named contexts (any R<n> / R<n>E is accepted too)
CONTEXTS = ("E", "R1", "R1E", "R2", "R4", "R8", "R16", "Rn", "RnE")
CONTSUP_LOSSES = ("softmax", "contrast")


class HistoryCache(ActivationCache):
    """Async ContSup: the cached prefix returns [h_{k-1}, input_{k-n}, ..., input_{k-1}];
    calls give ``[h_{k-1}, [inputs...]]`` (module k's context reads n earlier module inputs)."""

    def __call__(self, x: torch.Tensor) -> List[Any]:  # type: ignore[override]
        outs = super().__call__(x)
        return [outs[0], list(outs[1:])]


@register_regime("contsup")
class ContSup(ModularRegime):
    """ContSup Algorithm 2 with the E / R<n> / R<n>E context; see the module docstring."""

    options = ModularRegime.options + ("context", "contsup_loss", "tau")

    @classmethod
    def options_for(cls, config) -> FrozenSet[str]:
        opts = set(super().options_for(config))
        if str(config.regime_kwargs.get("contsup_loss", "softmax")) != "contrast":
            opts.discard("tau")  # tau is the contrastive loss's temperature
        return frozenset(opts)

    def __init__(self, model: nn.Module, config, device) -> None:
        kw = config.regime_kwargs
        self.context = canonical_context(kw.get("context", "R1E"))  # ValueError names context + allowed
        self.contsup_loss = str(kw.get("contsup_loss", "softmax"))
        if self.contsup_loss not in CONTSUP_LOSSES:
            raise ValueError(f"contsup_loss={self.contsup_loss!r} is not one of {', '.join(CONTSUP_LOSSES)}")
        self.tau = float(kw.get("tau", 0.07))
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        super().__init__(model, config, device)
        self.depth = history_depth(self.context, self.K)

    def build_aux(self) -> None:
        out_dim = self.num_classes if self.contsup_loss == "softmax" else 128
        for k in range(self.K - 1):
            self.heads[f"aux_{k}"] = ConvFCHead(self.split.feature_shapes[k], out_dim)
        for name, enc in build_context_encoders(self.model.input_shape, self.split.feature_shapes,
                                                self.context).items():
            self.heads[name] = enc

    def module_input(self, k: int, x: torch.Tensor, h_prev: torch.Tensor,
                     in_prev: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Eq. 16 for module k >= 1; ``in_prev``: earlier module inputs, most recent last."""
        return context_input(self.heads, k, x, h_prev, in_prev)

    def run(self, x: torch.Tensor, y: Optional[torch.Tensor], start: int = 0, stop: Optional[int] = None,
            h: Optional[torch.Tensor] = None, inp: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None,
            backward: bool = False) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, List[torch.Tensor]]:
        """Modules ``start..stop-1`` as in :meth:`ModularRegime.run`, keeping the inputs of the last
        ``depth`` modules for the R<n> contexts. ``inp``: those inputs (a list, most recent last, or
        one tensor = the input of module start-1). Returns (losses, last output, module inputs)."""
        stop = self.K if stop is None else stop
        hist: List[torch.Tensor] = [] if inp is None else ([inp] if isinstance(inp, torch.Tensor) else list(inp))
        keep = max(self.depth, 1)
        losses: Dict[int, torch.Tensor] = {}
        for k in range(start, stop):
            if k == 0:
                cur = x
            else:
                cur = self.module_input(k, x, h.detach(), [t.detach() for t in hist])  # type: ignore[union-attr]
            hist = (hist + [cur])[-keep:]
            h = self.split.blocks[k](cur)
            if y is not None:
                losses[k] = self.backward_module_loss(k, h, x, y, backward)
        return losses, h, hist  # type: ignore[return-value]

    def _prefix(self, k: int):
        def fn(x: torch.Tensor) -> List[torch.Tensor]:
            _, h, hist = self.run(x, None, 0, k)
            return [h, *hist]
        return fn

    def enter_stage(self, k: int) -> None:
        super().enter_stage(k)
        if self.cache is not None:
            self.cache = HistoryCache(self._prefix(k), self.cache_rows)

    def local_loss(self, k: int, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.heads[f"aux_{k}"](h)
        if self.contsup_loss == "softmax":
            return F.cross_entropy(out, y)
        out, y = self.global_batch(out, y)  # the contrast spans the whole batch on several processes
        return infopro_contrast_loss(out, y, self.tau)

    def aux_state(self) -> Optional[Dict[str, Any]]:
        state = dict(super().aux_state() or {})
        state["inference"] = contsup_spec(self.split.modules_names, self.context)
        return state

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "context": self.context, "contsup_loss": self.contsup_loss,
                "tau": self.tau, "aux": "conv+2fc (ContSup Table 6)",
                "inference": "backbone + context paths (aux_state['inference'], infoplane.inference.ContSupNet)"}


def contsup_model(backbone: LayeredNet, regime: Dict[str, Any], aux_state: Optional[Dict[str, Any]]) -> ContSupNet:
    """Rebuild the :class:`ContSupNet` from a backbone, a checkpoint's ``regime`` and ``aux_state``."""
    if regime.get("name") != "contsup":
        raise ValueError(f"not a contsup checkpoint (regime name {regime.get('name')!r})")
    if not aux_state or "heads" not in aux_state:
        raise ValueError("the checkpoint has no aux_state['heads']: the context encoders are missing")
    spec = aux_state.get("inference") or contsup_spec(regime["modules"], regime["context"])
    return build_contsup(backbone, spec, aux_state["heads"])


def load_contsup_model(path: Union[str, Path], device: str = "cpu", factory: Optional[str] = None) -> ContSupNet:
    """Load a contsup checkpoint with its context paths (= ``load_checkpoint(path).build_inference_model()``)."""
    from infoplane.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if ck.regime.get("name") != "contsup":
        raise ValueError(f"{path}: not a contsup checkpoint (regime name {ck.regime.get('name')!r})")
    return ck.build_inference_model(factory, device=device)  # type: ignore[return-value]


__all__ = ["CONTEXTS", "CONTEXT_HELP", "CONTSUP_LOSSES", "ShapeEncoder", "build_context_encoders", "context_input",
           "parse_context", "HistoryCache", "ContSup", "ContSupNet", "contsup_model", "load_contsup_model"]
