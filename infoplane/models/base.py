"""The layered-network convention every architecture of infoplane follows.

A :class:`LayeredNet` is an ``nn.Sequential`` whose top-level children are the network's
*layers* in the sense of the papers (Sakamoto & Sato 2024 sec. 2.1: the units a layer-wise regime trains
with their own local loss; Wang et al. 2021: the "basic layers" grouped into K modules). Their names
(``conv1``, ``fc1``, ``block3``, ..., ``out``) are the names extraction uses for ``--layers all``;
any deeper module can still be chosen by its ``named_modules()`` path. The last child is the
output layer (logits).

Shapes: input ``(N, *input_shape)``; output ``(N, num_classes)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn


class LayeredNet(nn.Sequential):
    """An ``nn.Sequential`` of named layers with the metadata the toolkit needs.

    Attributes
    ----------
    input_shape : tuple of int, the shape of one input sample (C, H, W) or (D,).
    num_classes : int, the width of the output layer.
    basic_layers : dict name -> int, how many "basic layers" (Wang et al. 2021 appendix F) each child
        holds; used to split the network into K gradient-isolated modules.
    """

    def __init__(self, layers: "OrderedDict[str, nn.Module]", input_shape: Sequence[int],
                 num_classes: int, basic_layers: Dict[str, int] | None = None) -> None:
        super().__init__(layers)
        self.input_shape: Tuple[int, ...] = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        names = list(layers.keys())
        self.basic_layers: Dict[str, int] = {n: 1 for n in names}
        if basic_layers:
            self.basic_layers.update(basic_layers)

    @property
    def layer_names(self) -> List[str]:
        """Names of the top-level layers, input to output (the last one is the output layer)."""
        return [name for name, _ in self.named_children()]

    def forward_layers(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Run the network and return every top-level layer's output, in order."""
        outs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name, layer in self.named_children():
            x = layer(x)
            outs[name] = x
        return outs


_REGISTRY: Dict[str, Callable[..., LayeredNet]] = {}


def register_model(name: str) -> Callable[[Callable[..., LayeredNet]], Callable[..., LayeredNet]]:
    """Decorator: register a model factory under ``name`` (torchvision-style registry)."""

    def deco(fn: Callable[..., LayeredNet]) -> Callable[..., LayeredNet]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> List[str]:
    """Sorted names of every registered architecture."""
    return sorted(_REGISTRY)


def get_model_factory(name: str) -> Callable[..., LayeredNet]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models are: {', '.join(list_models())}") from None


def build_model(name: str, **kwargs) -> LayeredNet:
    """Build a registered architecture: ``build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)``."""
    return get_model_factory(name)(**kwargs)
