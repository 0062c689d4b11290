"""E2E training with forward gradients, no backpropagation (Sakamoto & Sato, End-to-End Training
Induces Information Bottleneck through Layer-Role Differentiation, app. F.4.2; Baydin et al. 2022,
Gradients without Backpropagation).

For the E2E loss f(theta) (softmax CE of the logits) and a random tangent v ~ N(0, I) over all
parameters, forward-mode AD gives the directional derivative d = grad f(theta) . v in one forward
pass (``torch.func.jvp`` of ``torch.func.functional_call``); the forward gradient

    g(theta) = (grad f(theta) . v) v

is an unbiased estimate of grad f (E[v v^T] = I). The optimiser (``config.optimizer``, ``lr``)
steps with g in place of the backpropagated gradient. Option (``regime_kwargs``): ``directions``
(average g over this many tangents per step, default 1, as in Baydin et al.).
BatchNorm running statistics are updated from the primal (non-dual) batch statistics.
On several processes (``torchrun``) every process draws the same tangents (the generator is seeded
alike), so averaging the processes' g, weighted by their rows, gives g of the global batch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from . import register_regime
from .base import Regime
from .greedy import check_options


def forward_gradient(model: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     generator: Optional[torch.Generator] = None, directions: int = 1
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Forward gradient of ``loss_fn(model(x))`` w.r.t. the trainable parameters (Sakamoto & Sato app. F.4.2).

    Returns (loss, {parameter name: g}) with g = mean over ``directions`` tangents v of
    (grad f . v) v. Buffers (e.g. BatchNorm statistics) are not differentiated; BatchNorm running
    statistics are updated once from a plain forward pass when the model is in training mode.
    """
    if int(directions) < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("forward_gradient: the model has no trainable parameters")
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b for n, b in model.named_buffers()}
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    was_training = model.training
    if has_bn and was_training:
        with torch.no_grad():  # update running statistics from the primal batch once
            model(x)

    def f(p: Dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, ({**p, **frozen}, buffers), (x,)))

    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    loss = torch.zeros((), device=x.device)
    # BatchNorm in train mode would write dual batch statistics into its buffers: run the jvp with
    # the statistics of the batch but without touching the running estimates (momentum 0 copies).
    saved = []
    if has_bn and was_training:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                saved.append((m, m.track_running_stats))
                m.track_running_stats = False
    try:
        for _ in range(int(directions)):
            # tangents drawn on the CPU (reproducible across devices), then moved
            tangents = {n: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
                        for n, p in params.items()}
            loss, d = jvp(f, (params,), (tangents,))
            for n in grads:
                grads[n].add_(tangents[n], alpha=float(d) / int(directions))
    finally:
        for m, flag in saved:
            m.track_running_stats = flag
    return loss.detach(), grads


@register_regime("forward-gradient")
class ForwardGradient(Regime):
    """E2E CE loss, weights updated with forward gradients (no ``backward()``; Sakamoto & Sato app. F.4.2)."""

    #: the only option it reads (``--loss`` is not: the loss is always CE)
    options = ("directions",)

    def __init__(self, model: nn.Module, config, device) -> None:
        super().__init__(model, config, device)
        check_options(self.name, config.regime_kwargs, ("directions",))
        self.directions = int(config.regime_kwargs.get("directions", 1))
        if self.directions < 1:
            raise ValueError(f"directions must be >= 1, got {self.directions}")
        if config.precision == "fp16":
            raise ValueError("regime 'forward-gradient' takes its gradient from forward-mode AD, not from a backward "
                             "pass, so fp16 gradient scaling cannot apply; use --precision bf16 or fp32")
        self.generator = torch.Generator(device="cpu").manual_seed(int(config.seed) + 104729)
        self.configure_optimizers()

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        loss, grads = forward_gradient(self.model, lambda out: F.cross_entropy(out, y), x,
                                       self.generator, self.directions)
        named = dict(self.model.named_parameters())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        for n, g in grads.items():
            named[n].grad = g
        self.optimizer_step()  # on several processes: every process drew the same tangents; g averaged
        return {"loss": float(loss)}

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "loss": "ce", "gradient": "forward (jvp, v ~ N(0, I))",
                "directions": self.directions}

    def aux_state(self) -> Optional[Dict[str, Any]]:
        return {"generator_state": self.generator.get_state()}


__all__ = ["forward_gradient", "ForwardGradient"]
