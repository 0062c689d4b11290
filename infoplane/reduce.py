"""What ``extract --reduce`` keeps of each layer's output (docs/formats_store.md, "Reduced layers").

A reduction is named by one string, the same in the library (``extract(..., reduce=...)``) and
on the command line (``--reduce``):

``none``
    every layer as its module returns it.
``avgpool``
    a convolutional feature map, a row of shape ``(C, H, W)`` (or ``(C, D, H, W)``), is averaged
    over its spatial dimensions: ``C`` values per sample. Rows of one or two dimensions (fully
    connected layers, token sequences) are kept as they are.
``flatten-max:D``
    a layer with at most ``D`` values per sample is kept as it is. A larger feature map
    ``(C, *S)`` (two or three spatial dimensions) is average-pooled with
    ``torch.nn.functional.adaptive_avg_pool2d`` (``3d``) to the grid ``ceil(S_i / f)`` for the
    smallest integer ``f >= 2`` with ``C * prod(grid) <= D``. A map with more than ``D`` channels,
    or a larger row without spatial dimensions, is an error (use ``random-projection:D``).
``random-projection:D``
    a layer with at most ``D`` values per sample is kept as it is; a larger one is flattened to
    ``d`` values and multiplied by ``G[:d] / sqrt(d)``, the first ``d`` rows of one matrix ``G``
    of independent standard normal entries with ``D`` columns (a Gaussian Johnson-Lindenstrauss
    projection). ``G`` depends only on the seed and ``D``, so every layer and every checkpoint of
    a store is projected with the same numbers. It is drawn in blocks of ``2**22 // D`` rows with
    ``torch.randn`` on the CPU, block ``k`` from a generator seeded with the first 8 bytes (little
    endian, top bit cleared) of ``sha256("{seed}/{D}/{k}")``; a fingerprint of its first block is
    recorded in the store and checked when a later checkpoint is appended. The ``1/d`` variance
    makes squared distances shrink by ``D/d`` on average, which is what the bandwidth rule
    ``sigma = 5 sqrt(dim)`` of ``estimate --sigma paper`` grows by, so the Gaussian kernel of the
    projected layer approximates the kernel of the unreduced one under that rule (and under
    ``--sigma median``, which follows the distances).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

METHODS = ("none", "avgpool", "flatten-max", "random-projection")
_WITH_DIM = ("flatten-max", "random-projection")

#: rows of the projection matrix kept in memory across batches (one matrix serves every layer);
#: rows beyond are drawn again for every batch that needs them
PROJECTION_CACHE_BYTES = 1 << 30
#: entries per projection block (16 MiB of float32)
_BLOCK_ENTRIES = 1 << 22

_HELP = ("--reduce (reduce=) takes none, avgpool, flatten-max:D or random-projection:D with D a positive "
         "integer, e.g. --reduce flatten-max:4096")


class ReductionError(ValueError):
    """A reduction that cannot apply to a layer (named, with the options that work)."""


@dataclass(frozen=True)
class Reduction:
    """A parsed reduction: ``method`` (one of :data:`METHODS`), ``dim`` (``D``), ``seed`` (projection)."""

    method: str = "none"
    dim: Optional[int] = None
    seed: Optional[int] = None

    @property
    def spec(self) -> str:
        """The string that names it (``random-projection:512``)."""
        return self.method if self.dim is None else f"{self.method}:{self.dim}"

    def record(self) -> Dict[str, Any]:
        """The store's root ``reduction`` record."""
        rec: Dict[str, Any] = {"method": self.method, "spec": self.spec, "dim": self.dim, "seed": self.seed}
        if self.method == "random-projection":
            rec["generator"] = ("G: torch.randn on the CPU in blocks of 2**22 // D rows, block k seeded by "
                                f"sha256('{{seed}}/{{D}}/{{k}}'); a layer of d values: z @ G[:d] / sqrt(d); "
                                f"torch {torch.__version__}")
        return rec


def parse_reduction(spec: Union[None, str, Reduction], seed: int = 0) -> Reduction:
    """``"none"``, ``"avgpool"``, ``"flatten-max:D"``, ``"random-projection:D"`` -> :class:`Reduction`.

    ``seed`` is kept for ``random-projection`` only. A malformed name is a ValueError saying what
    is accepted."""
    if isinstance(spec, Reduction):
        return spec
    if spec is None:
        return Reduction()
    if not isinstance(spec, str):
        raise ValueError(f"{_HELP}; got {spec!r}")
    text = spec.strip().lower()
    method, sep, arg = text.partition(":")
    if method not in METHODS:
        raise ValueError(f"--reduce {spec!r}: unknown reduction; {_HELP}")
    if method not in _WITH_DIM:
        if sep:
            raise ValueError(f"--reduce {spec!r}: {method} takes no ':D'; {_HELP}")
        return Reduction(method)
    try:
        dim = int(arg)
    except ValueError:
        raise ValueError(f"--reduce {spec!r}: {method} needs a dimension, {method}:D with D a positive integer "
                         f"(e.g. {method}:1024; library: reduce='{method}:1024')") from None
    if dim < 1:
        raise ValueError(f"--reduce {spec!r}: D must be a positive integer (e.g. {method}:1024)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--reduce-seed (reduce_seed=) must be an integer >= 0, got {seed!r}")
    return Reduction(method, dim, int(seed) if method == "random-projection" else None)


def _block_seed(seed: int, dim: int, block: int) -> int:
    digest = hashlib.sha256(f"{seed}/{dim}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class GaussianMatrix:
    """``G``: standard normal entries with ``dim`` columns and as many rows as the largest layer
    needs, drawn block by block from ``seed`` (the same numbers whatever the layer). Blocks are kept
    in memory up to ``cache_bytes`` (the first rows first) and drawn again when needed beyond it."""

    def __init__(self, seed: int, dim: int, cache_bytes: int = PROJECTION_CACHE_BYTES) -> None:
        self.seed, self.dim = int(seed), int(dim)
        self.rows = max(1, _BLOCK_ENTRIES // self.dim)
        self.cache_bytes = int(cache_bytes)
        self._blocks: Dict[Tuple[int, str], torch.Tensor] = {}
        self._cached = 0

    def block(self, k: int, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """Rows ``[k * rows, (k + 1) * rows)`` of ``G`` (float32) on ``device``."""
        dev = torch.device(device)
        hit = self._blocks.get((k, str(dev)))
        if hit is not None:
            return hit
        g = torch.Generator().manual_seed(_block_seed(self.seed, self.dim, k))
        b = torch.randn(self.rows, self.dim, generator=g, dtype=torch.float32).to(dev)
        if self._cached + b.numel() * 4 <= self.cache_bytes:
            self._blocks[(k, str(dev))] = b
            self._cached += b.numel() * 4
        return b

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the first block's float32 bytes."""
        return hashlib.sha256(self.block(0).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class GaussianProjection:
    """``z (b, ...) -> z.reshape(b, d) @ G[:d] / sqrt(d)`` for one layer of ``d`` values."""

    def __init__(self, matrix: GaussianMatrix, d: int) -> None:
        self.G, self.d, self.dim, self.seed = matrix, int(d), matrix.dim, matrix.seed

    def matrix(self) -> torch.Tensor:
        """The whole ``(d, D)`` matrix applied (for tests)."""
        n_blocks = -(-self.d // self.G.rows)
        full = torch.cat([self.G.block(k) for k in range(n_blocks)])[: self.d]
        return full / math.sqrt(self.d)

    def fingerprint(self) -> str:
        return self.G.fingerprint()

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], self.d).float()
        out = torch.zeros(z.shape[0], self.dim, dtype=torch.float32, device=z.device)
        rows = self.G.rows
        for k in range(-(-self.d // rows)):
            lo, hi = k * rows, min(self.d, (k + 1) * rows)
            out.addmm_(flat[:, lo:hi], self.G.block(k, z.device)[: hi - lo])
        return out.mul_(1.0 / math.sqrt(self.d))


@dataclass
class LayerReduction:
    """How one layer (module path, call index) is reduced: ``in_shape`` -> ``out_shape`` per sample."""

    key: str
    method: str
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    grid: Optional[Tuple[int, ...]] = None
    projection: Optional[GaussianProjection] = None
    note: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if tuple(z.shape[1:]) != self.in_shape:
            raise ReductionError(f"layer {self.key!r} gave rows of shape {tuple(z.shape[1:])} in one batch and "
                             f"{self.in_shape} in another; a reduced layer needs one shape (use --reduce none)")
        if self.method == "none":
            return z
        if self.method == "avgpool":
            return z.float().mean(dim=tuple(range(2, z.ndim)))
        if self.method == "flatten-max":
            pool = F.adaptive_avg_pool2d if len(self.grid or ()) == 2 else F.adaptive_avg_pool3d
            return pool(z.float(), self.grid)
        assert self.projection is not None
        return self.projection(z)

    def record(self) -> Dict[str, Any]:
        """The layer's ``reduction`` attribute."""
        rec: Dict[str, Any] = {"method": self.method, "from": list(self.in_shape), "to": list(self.out_shape)}
        if self.grid is not None:
            rec["grid"] = list(self.grid)
            rec["pool"] = "adaptive_avg_pool2d" if len(self.grid) == 2 else "adaptive_avg_pool3d"
        if self.projection is not None:
            rec.update(dim=self.projection.dim, seed=self.projection.seed, fingerprint=self.projection.fingerprint(),
                       matrix="G[:d] / sqrt(d)")
        if self.note:
            rec["kept"] = self.note
        rec.update(self.extra)
        return rec


def plan_layer(reduction: Reduction, key: str, row_shape: Sequence[int],
               matrix: Optional[GaussianMatrix] = None) -> LayerReduction:
    """The :class:`LayerReduction` of a layer whose rows have ``row_shape`` (``key``: ``path:call``).

    ``flatten-max:D`` on a layer it cannot bring to ``D`` values is a ValueError naming the layer
    and the options that work. ``matrix``: the ``random-projection`` matrix to share (a new one
    from the reduction's seed when None)."""
    shape = tuple(int(s) for s in row_shape)
    numel = int(math.prod(shape)) if shape else 1
    m, dim = reduction.method, reduction.dim
    if m == "none":
        return LayerReduction(key, "none", shape, shape)
    if m == "avgpool":
        if len(shape) >= 3:
            return LayerReduction(key, "avgpool", shape, shape[:1])
        return LayerReduction(key, "none", shape, shape, note="not a spatial map (fewer than 3 dimensions)")
    assert dim is not None
    if numel <= dim:
        return LayerReduction(key, "none", shape, shape, note=f"at most {dim} values")
    if m == "random-projection":
        if matrix is None:
            matrix = GaussianMatrix(int(reduction.seed or 0), dim)
        return LayerReduction(key, "random-projection", shape, (dim,), projection=GaussianProjection(matrix, numel))
    # flatten-max
    where = f"--reduce {reduction.spec}: layer {key.rsplit(':', 1)[0]!r} (rows of shape {shape}, {numel} values)"
    if len(shape) not in (3, 4):
        raise ReductionError(f"{where} has no spatial dimensions to pool; pass --reduce random-projection:{dim} "
                         f"(reduce='random-projection:{dim}'), a D of at least {numel}, or leave the layer out "
                         "with --layers")
    c, spatial = shape[0], shape[1:]
    if c > dim:
        raise ReductionError(f"{where} has {c} channels, more than {dim} even when pooled to one value per channel; "
                         f"pass a D of at least {c}, --reduce avgpool or --reduce random-projection:{dim}")
    for f in range(2, max(spatial) + 1):
        grid = tuple(-(-s // f) for s in spatial)
        if c * math.prod(grid) <= dim:
            return LayerReduction(key, "flatten-max", shape, (c, *grid), grid=grid, extra={"dim": dim})
    grid = tuple(1 for _ in spatial)
    return LayerReduction(key, "flatten-max", shape, (c, *grid), grid=grid, extra={"dim": dim})


class Reducer:
    """The hook transform of a reduction: plans each (module path, call index) on first sight."""

    def __init__(self, reduction: Reduction, cache_bytes: int = PROJECTION_CACHE_BYTES) -> None:
        self.reduction = reduction
        self.plans: Dict[str, LayerReduction] = {}
        self.matrix = (GaussianMatrix(int(reduction.seed or 0), int(reduction.dim), cache_bytes)
                       if reduction.method == "random-projection" else None)

    @property
    def active(self) -> bool:
        return self.reduction.method != "none"

    def plan(self, path: str, call: int, row_shape: Sequence[int]) -> LayerReduction:
        key = f"{path}:{call}"
        p = self.plans.get(key)
        if p is None:
            p = self.plans[key] = plan_layer(self.reduction, key, row_shape, self.matrix)
        return p

    def __call__(self, path: str, call: int, z: torch.Tensor) -> torch.Tensor:
        return self.plan(path, call, tuple(z.shape[1:]))(z)

    def for_layer(self, name: str) -> LayerReduction:
        """The plan of a stored layer name (``fc1`` or ``fc1:2``)."""
        from infoplane.hooks import split_call_name

        path, call = split_call_name(name)
        return self.plans[f"{path}:{call}"]


__all__ = ["METHODS", "ReductionError", "Reduction", "parse_reduction", "plan_layer", "LayerReduction",
           "GaussianMatrix", "GaussianProjection", "Reducer", "PROJECTION_CACHE_BYTES"]
