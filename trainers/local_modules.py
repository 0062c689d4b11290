"""K gradient-isolated local modules of a layered network, and the cache of asynchronous training.

Wang et al. 2021 (Revisiting Locally Supervised Learning: an Alternative to End-to-end Training),
sec. 2 / appendix F: the network is split into K successive local modules of (about) the
same number of basic layers (:func:`infoplane.models.split.split_into_modules`); module k is
trained by its own local loss on ``StopGrad(h_{k-1})``. Sec. 4 "Two training modes": simultaneous
(every module's backward pass per mini-batch) and asynchronous ("local modules are isolatedly
learned given cached outputs from completely trained earlier modules"), served by
:class:`ActivationCache`.

Shapes: ``x`` (N, *input_shape); module outputs (N, *feature_shape_k).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from infoplane.models.split import feature_shapes, split_into_modules


class LocalModules:
    """A view of ``model`` as K consecutive ``nn.Sequential`` blocks sharing its layers.

    ``modules[k]`` lists the child names of block k (recorded in checkpoints as
    ``regime["modules"]`` so extraction can map layer names to modules); ``feature_shapes[k]`` is the
    per-sample shape of block k's output. The blocks hold references (no copies): training a block
    trains the backbone.
    """

    def __init__(self, model: nn.Module, K: int, device: Optional[torch.device] = None) -> None:
        K = int(K)
        children = [n for n, _ in model.named_children()]
        if K < 1:
            raise ValueError(f"the number of modules K must be >= 1, got {K}")
        self.modules_names: List[List[str]] = split_into_modules(model, K)
        self.K = K
        blocks = []
        for names in self.modules_names:
            blocks.append(nn.Sequential(OrderedDict((n, model.get_submodule(n)) for n in names)))
        #: the backbone owns these layers; the blocks only group them (no copies)
        self.blocks: List[nn.Sequential] = blocks
        self.children_names = children
        self.input_shape: Tuple[int, ...] = tuple(int(s) for s in getattr(model, "input_shape"))
        self.feature_shapes: List[Tuple[int, ...]] = feature_shapes(model, self.modules_names, device)

    def module_of(self) -> Dict[str, int]:
        """Child name -> index of its module."""
        return {n: k for k, names in enumerate(self.modules_names) for n in names}

    def parameters_of(self, k: int) -> List[nn.Parameter]:
        return [p for p in self.blocks[k].parameters() if p.requires_grad]

    def outputs(self, x: torch.Tensor, detach: bool = True) -> List[torch.Tensor]:
        """Outputs of every module; with ``detach`` each module sees ``StopGrad`` of its input."""
        outs = []
        h = x
        for block in self.blocks:
            h = block(h.detach() if detach else h)
            outs.append(h)
        return outs


def row_keys(x: torch.Tensor) -> List[bytes]:
    """A content key per sample (BLAKE2b of the row's bytes): equal inputs, equal keys."""
    rows = x.detach().to("cpu").contiguous().reshape(x.shape[0], -1).numpy()
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]


class ActivationCache:
    """Cached outputs of the already-trained (frozen) earlier modules, keyed by input content.

    Asynchronous training (Wang et al. 2021 sec. 4): module k learns from the cached outputs of modules
    < k. Rows are keyed by :func:`row_keys`, so shuffled mini-batches find their rows without
    dataset indices; an input never seen (e.g. a random augmentation) is computed by ``fn`` and
    stored while fewer than ``max_rows`` rows are held. Values are kept on CPU in float32.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Sequence[torch.Tensor]], max_rows: int = 200_000) -> None:
        if int(max_rows) < 0:
            raise ValueError(f"max_rows must be >= 0, got {max_rows}")
        self.fn = fn
        self.max_rows = int(max_rows)
        self.store: Dict[bytes, Tuple[torch.Tensor, ...]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.store)

    def clear(self) -> None:
        self.store.clear()
        self.hits = self.misses = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The frozen prefix's outputs for the batch ``x`` (list of (N, ...) tensors on x's device)."""
        keys = row_keys(x)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        fresh: Dict[int, Tuple[torch.Tensor, ...]] = {}
        if missing:
            outs = [o.detach() for o in self.fn(x[missing])]
            for j, i in enumerate(missing):
                row = tuple(o[j].to("cpu", torch.float32) for o in outs)
                fresh[i] = row
                if len(self.store) < self.max_rows:
                    self.store[keys[i]] = row
        rows = [fresh[i] if i in fresh else self.store[k] for i, k in enumerate(keys)]
        n_out = len(rows[0])
        return [torch.stack([r[t] for r in rows]).to(x.device, x.dtype) for t in range(n_out)]


__all__ = ["LocalModules", "ActivationCache", "row_keys"]
