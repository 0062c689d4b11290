"""Split a layered network into K gradient-isolated local modules (Wang et al. 2021 appendix F).

"We view each residual block as a minimal indivisible unit, or say, a basic layer ... the first
convolutional layer of the network is individually viewed as a basic layer. ... In the cases where
the number of basic layers is not divisible by K, we assign one less basic layer to earlier modules.
For example, if ResNet-110 is split into K = 4 modules, the corresponding numbers of basic layers will
be {13, 14, 14, 14}." (Wang et al. 2021, appendix F, "Local module splitting").
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn


def module_sizes(num_basic_layers: int, K: int) -> List[int]:
    """Basic layers per module: ``L // K`` each, the last ``L % K`` modules one more (Wang et al. 2021 app. F)."""
    L, K = int(num_basic_layers), int(K)
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if K > L:
        raise ValueError(f"cannot split {L} basic layers into K={K} modules; choose K <= {L}")
    base, extra = divmod(L, K)
    return [base] * (K - extra) + [base + 1] * extra


def _basic_layers(model: nn.Module) -> Dict[str, int]:
    names = [n for n, _ in model.named_children()]
    counts = dict(getattr(model, "basic_layers", None) or {n: 1 for n in names})
    for n in names:
        counts.setdefault(n, 1)
        if int(counts[n]) < 0:
            raise ValueError(f"basic layer count of {n!r} must be >= 0, got {counts[n]}")
    return {n: int(counts[n]) for n in names}


def split_into_modules(model: nn.Module, K: int) -> List[List[str]]:
    """Group the top-level children of ``model`` into ``K`` consecutive modules.

    Module sizes follow :func:`module_sizes` on the total of ``model.basic_layers`` (1 per child when
    absent). Children counting 0 basic layers (e.g. a ResNet's pooling + classifier ``out``) join the
    module of the preceding child (the first module if they lead). Returns ``K`` lists of child
    names, which concatenated give the children in order.
    """
    counts = _basic_layers(model)
    names = list(counts)
    if not names:
        raise ValueError("the model has no children to split")
    sizes = module_sizes(sum(counts.values()), K)
    modules: List[List[str]] = [[] for _ in sizes]
    m, filled = 0, 0
    for name in names:
        c = counts[name]
        if c > 0 and filled >= sizes[m]:
            m, filled = m + 1, 0
        if c > 0 and filled + c > sizes[m]:
            raise ValueError(f"layer {name!r} holds {c} basic layers and would straddle the boundary of "
                             f"module {m} (sizes {sizes}); choose another K")
        modules[m].append(name)
        filled += c
    return modules


def feature_shapes(backbone: nn.Module, modules: Sequence[Sequence[str]],
                   device: Optional[torch.device] = None) -> List[Tuple[int, ...]]:
    """Per-sample output shape of every module (a zero batch through the backbone in eval mode)."""
    if device is None:
        p = next(backbone.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    was = backbone.training
    backbone.eval()
    shapes = []
    with torch.no_grad():
        z = torch.zeros((2,) + tuple(int(s) for s in getattr(backbone, "input_shape")), device=device)
        for names in modules:
            for n in names:
                z = backbone.get_submodule(n)(z)
            shapes.append(tuple(int(s) for s in z.shape[1:]))
    backbone.train(was)
    return shapes


__all__ = ["module_sizes", "split_into_modules", "feature_shapes"]
