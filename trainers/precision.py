"""Mixed precision of the training forward passes: ``--precision fp32|bf16|fp16``.

``fp32`` (default) changes nothing. ``bf16`` and ``fp16`` run every training step's forward pass and
loss under ``torch.autocast`` with that dtype (matrix products and convolutions in 16 bits, reductions
and losses in float32, as autocast chooses); parameters, gradients and optimiser states stay float32.
``fp16`` also scales the loss before each backward pass (``torch.amp.GradScaler``; steps whose
gradients overflow are skipped and the scale adapts), and needs a CUDA device: on CPU use ``bf16``.
Evaluation (the accuracies and losses of metrics.csv and the checkpoints) always runs in float32,
so the recorded numbers are those ``infoplane extract`` reproduces from the checkpoint.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Dict, Iterable, Optional

import torch

from .config import PRECISIONS
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a ValueError for a precision that is unknown or that ``device`` cannot train in."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16 needs a CUDA device (float16 kernels and gradient scaling); the run is "
                         f"on {device.type}: use --precision bf16 or fp32 there")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16 is not supported by this GPU; use --precision fp16 or fp32")


def _grad_scaler(device_type: str) -> Any:
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler()  # torch < 2.3


class Precision:
    """Autocast and loss scaling of one run (``Regime.precision``).

    ``autocast()`` wraps a training step (the loop does it); ``backward(loss)`` runs the backward
    pass outside autocast, on the scaled loss with ``fp16``; ``step(optimizers)`` steps them (through
    the scaler with ``fp16``, which skips a step whose gradients overflowed and updates the scale).
    """

    def __init__(self, precision: str = "fp32", device: torch.device = torch.device("cpu")) -> None:
        self.device = torch.device(device)
        check_precision(precision, self.device)
        self.name = precision
        self.dtype: Optional[torch.dtype] = _DTYPES.get(precision)
        self.scaler = _grad_scaler(self.device.type) if precision == "fp16" else None

    def autocast(self) -> ContextManager:
        """The context of a training step's forward passes (nothing with ``fp32``)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` outside autocast (scaled with ``fp16``)."""
        if self.dtype is None:
            loss.backward()
            return
        with torch.autocast(self.device.type, enabled=False):
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Step every optimiser (through the gradient scaler with ``fp16``)."""
        if self.scaler is None:
            for opt in optimizers:
                opt.step()
            return
        for opt in optimizers:
            if any(p.grad is not None for g in opt.param_groups for p in g["params"]):
                self.scaler.step(opt)
        self.scaler.update()

    def describe(self) -> Dict[str, Any]:
        return {"precision": self.name, "autocast_dtype": None if self.dtype is None else str(self.dtype),
                "grad_scaler": self.scaler is not None}


__all__ = ["PRECISIONS", "check_precision", "Precision"]
