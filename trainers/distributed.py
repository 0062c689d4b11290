"""Data-parallel training on several processes: ``torchrun --nproc_per_node N -m trainers ...``.

A run started by ``torchrun`` (the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``)
trains one model on N processes, each holding a full copy and a share of every mini-batch. Everything
here is arranged so that N processes do the arithmetic of one process on the same (global) batch:

* ``--batch-size`` is the *global* batch: process r gets the r-th of N contiguous pieces of every
  batch (``batch_size / N`` rows; a batch size that N does not divide is refused), and the batches are
  those a single-process run draws (:class:`ShardSampler`, a ``DistributedSampler`` that neither pads
  nor repeats samples);
* after the backward pass(es) of a step the gradients are averaged with the weights
  ``rows of the process / rows of the global batch`` (so an uneven last batch is exact too):
  ``DistributedDataParallel`` with a weighted all-reduce hook for E2E (:meth:`DataParallel.wrap`), one
  coalesced all-reduce of every trainable gradient for the local regimes
  (:meth:`DataParallel.all_reduce_gradients`), whose modules run several backward passes per step
  (or none: forward-gradient) and freeze and unfreeze modules stage by stage;
* random draws made per sample (training augmentation, forward-forward's wrong labels) are drawn for
  the whole global batch from the generator every process seeds identically, and each process keeps
  its rows (:class:`Shard`); a loss that compares samples with each other sees the whole global batch
  through :meth:`DataParallel.global_batch`;
* the per-step statistics, the evaluation sums (each process evaluates a contiguous part of the data,
  :func:`shard_dataset`) and BatchNorm running statistics (averaged at the end of every epoch) are
  reduced over the processes; files are written by rank 0 only (:meth:`DataParallel.on_main`; the
  other processes wait for it and receive its result or its error).

Only BatchNorm layers in training mode differ from one process: they normalise with the statistics
of the process's share of the batch, as ``DistributedDataParallel`` does. One process (no
``torchrun``, or ``WORLD_SIZE=1``) takes none of these paths: every helper is then the identity.

Pieces: :func:`world_from_env` and :func:`process_device` (where this process is and runs),
:func:`init` / :func:`teardown` (the process group: nccl on CUDA, gloo on CPU),
:func:`check_batch_size` / :func:`check_last_batch` (refusals before any process waits),
:class:`ShardSampler` and :func:`shard_dataset` (the data), :class:`DataParallel` (the collectives).
"""
from __future__ import annotations

import atexit
import inspect
import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

T = TypeVar("T")

#: the environment variables ``torchrun`` sets for every process
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


# --------------------------------------------------------------------------------------------
# where this process is
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` of ``size`` (global), ``local_rank``
    on its node. ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and prints."""
        return self.rank == 0


def world_from_env(environ: Optional[Mapping[str, str]] = None) -> World:
    """The :class:`World` that ``torchrun`` describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
    (``environ``: default ``os.environ``); ``World()`` when ``WORLD_SIZE`` is not set or is 1."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return World()
    try:
        size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them), got "
                         + ", ".join(f"{k}={env.get(k)!r}" for k in ENV_VARS)) from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local} do not describe a process of a run "
                         f"(need 0 <= RANK < WORLD_SIZE); start the run with torchrun")
    if size == 1:
        return World()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ValueError(f"WORLD_SIZE={size} is set but {', '.join(missing)} not: start the run with torchrun "
                         f"(torchrun --nproc_per_node N -m trainers ...), which sets them")
    return World(rank, size, local)


def process_device(device: torch.device, world: World, requested: str = "cuda") -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA run on several processes, else
    ``device``. ``requested`` is the ``--device`` value, for the error messages."""
    if not world.distributed or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"--device {requested} names one GPU for all {world.size} processes; use --device cuda "
                         f"(or auto): process LOCAL_RANK then uses cuda:LOCAL_RANK")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ValueError(f"LOCAL_RANK {world.local_rank} has no GPU: this node shows {count}; start at most {count} "
                         f"processes per node (torchrun --nproc_per_node {count})")
    return torch.device("cuda", world.local_rank)


def backend_for(device: torch.device) -> str:
    """The collective backend for ``device``: ``nccl`` on CUDA, ``gloo`` on CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------

def split_sizes(total: int, parts: int) -> List[int]:
    """``total`` rows cut into ``parts`` contiguous pieces as evenly as possible (the first ones larger)."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if r < extra else 0) for r in range(int(parts))]


@dataclass(frozen=True)
class Shard:
    """This process's rows of one global mini-batch: ``size`` rows from ``offset`` of ``total``; every
    process's shards, in rank order, make up the batch. On one process ``offset=0, size=total``."""

    offset: int
    size: int
    total: int

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of ``t``, a tensor with one row per sample of the global batch."""
        return t[self.offset:self.offset + self.size]

    @property
    def weight(self) -> float:
        """The share of the global batch: the weight of this process's mean gradient in the average."""
        return self.size / self.total if self.total else 0.0


def check_batch_size(batch_size: int, world: World) -> int:
    """The per-process batch of a global ``batch_size`` on ``world``; a size the processes cannot
    share equally is refused."""
    if world.distributed and int(batch_size) % world.size:
        lo = max(world.size, int(batch_size) // world.size * world.size)
        raise ValueError(f"--batch-size {batch_size} is the global batch, split across the {world.size} processes, "
                         f"and must be divisible by {world.size}; use e.g. --batch-size {lo} or "
                         f"{lo + world.size}")
    return int(batch_size) // world.size


def check_last_batch(train_size: int, batch_size: int, world: World) -> None:
    """Refuse a run whose last batch of an epoch has fewer rows than there are processes (one would
    get none)."""
    last = int(train_size) % int(batch_size)
    if world.distributed and 0 < last < world.size:
        raise ValueError(f"the last batch of each epoch holds {last} of the {train_size} training samples "
                         f"(--batch-size {batch_size}), fewer than the {world.size} processes, so a process would "
                         f"get none; change --batch-size or --subset so that the remainder is 0 or at least "
                         f"{world.size}")


class ShardSampler(DistributedSampler):
    """The indices of this process's share of every global batch, in the order of a single-process run.

    Unlike the stock ``DistributedSampler`` (a permutation seeded with ``seed + epoch``, dealt out
    round-robin, padded with repeated samples so that every process gets as many), the epoch's order
    is the one a single-process run uses -- epoch e is the e-th ``torch.randperm`` of a generator
    seeded with ``seed`` (``0, 1, ...`` without ``shuffle``) -- cut into global batches of
    ``batch_size``; process ``rank`` gets the ``rank``-th of ``num_replicas`` contiguous pieces of each
    (:func:`split_sizes`), and no sample is repeated or dropped. Batching this sampler's indices by
    ``batch_size // num_replicas`` gives the process's shard of each global batch. Call
    :meth:`set_epoch` (1-based) before every epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = len(dataset)  # type: ignore[arg-type]
        self.epoch = 1
        self._gen: Optional[torch.Generator] = None
        self._drawn = 0
        self._perm: Optional[torch.Tensor] = None
        self.num_samples = sum(s.size for s in self.shards())
        self.total_size = self.n

    def shards(self) -> List[Shard]:
        """This process's :class:`Shard` of every global batch of an epoch, in order."""
        out = []
        for start in range(0, self.n, self.batch_size):
            total = min(self.batch_size, self.n - start)
            sizes = split_sizes(total, self.num_replicas)
            out.append(Shard(sum(sizes[:self.rank]), sizes[self.rank], total))
        return out

    def order(self) -> torch.Tensor:
        """The global order of the samples in epoch :attr:`epoch`."""
        if not self.shuffle:
            return torch.arange(self.n)
        if self._gen is None or self._drawn > self.epoch:
            self._gen, self._drawn = torch.Generator().manual_seed(int(self.seed)), 0
        while self._drawn < self.epoch:
            self._perm = torch.randperm(self.n, generator=self._gen)
            self._drawn += 1
        return self._perm  # type: ignore[return-value]

    def batches(self) -> Iterator[torch.Tensor]:
        """This process's indices of each global batch of the epoch."""
        order = self.order()
        for k, shard in enumerate(self.shards()):
            yield shard.rows(order[k * self.batch_size:(k + 1) * self.batch_size])

    def __iter__(self) -> Iterator[int]:
        for idx in self.batches():
            yield from idx.tolist()

    def __len__(self) -> int:
        return self.num_samples


def shard_dataset(ds: Dataset, world: World) -> Dataset:
    """This process's contiguous part of ``ds`` (for evaluation: the parts of all processes are
    disjoint and cover ``ds``; a process may get none)."""
    if not world.distributed:
        return ds
    sizes = split_sizes(len(ds), world.size)  # type: ignore[arg-type]
    start = sum(sizes[:world.rank])
    stop = start + sizes[world.rank]
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[start:stop] for t in ds.tensors))
    return Subset(ds, list(range(start, stop)))


# --------------------------------------------------------------------------------------------
# collectives
# --------------------------------------------------------------------------------------------

class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def _weighted_allreduce_hook(state, bucket):  # no annotations: DDP checks them against dist.GradBucket objects
    """DDP communication hook: sum over processes of (gradient x this step's :attr:`Shard.weight`);
    ``state`` is the :class:`DataParallel`, ``bucket`` a ``dist.GradBucket``."""
    tensor = bucket.buffer()
    tensor.mul_(state.shard.weight)
    work = dist.all_reduce(tensor, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class DataParallel:
    """The collectives a run needs, for ``world`` with this process on ``device``.

    On one process every method is the identity (or a plain call), so the loop and the regimes use
    it unconditionally. The loop sets the step's :class:`Shard` with :meth:`begin_step`; regimes reach
    this object as ``Regime.data_parallel`` (set by :meth:`Regime.distribute`, only with several
    processes).
    """

    def __init__(self, world: World = World(), device: torch.device = torch.device("cpu")) -> None:
        self.world = world
        self.device = torch.device(device)
        self.backend: Optional[str] = dist.get_backend() if world.distributed else None
        #: where collective buffers live: the GPU for nccl, the CPU for gloo
        nccl = self.backend is not None and "nccl" in self.backend
        self.comm_device = self.device if nccl and self.device.type == "cuda" else torch.device("cpu")
        self.shard = Shard(0, 0, 0)
        self._ddp_params: set = set()

    def describe(self) -> Dict[str, Any]:
        """What config.json records under ``resolved.distributed``."""
        return {"world_size": self.world.size, "backend": self.backend}

    # -- per step -----------------------------------------------------------------------------
    def begin_step(self, shard: Shard) -> None:
        """Record this process's rows of the step's global batch (weights and draws use them)."""
        self.shard = shard

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` whose gradient all-reduce is weighted by the step's
        shard (exact for an uneven last batch) and which leaves buffers alone during the epoch
        (:meth:`average_batchnorm` runs at its end); ``module`` itself on one process. The wrapped
        parameters are skipped by :meth:`all_reduce_gradients`."""
        if not self.world.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        kwargs: Dict[str, Any] = {"device_ids": [self.device.index] if self.device.type == "cuda" else None}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            kwargs["forward_sync_buffers"] = False
        else:
            kwargs["broadcast_buffers"] = False
        ddp = DistributedDataParallel(module, **kwargs)
        ddp.register_comm_hook(self, _weighted_allreduce_hook)
        self._ddp_params |= {id(p) for p in module.parameters()}
        return ddp

    def all_reduce_gradients(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Replace every gradient of the parameters of ``optimizers`` (those not under :meth:`wrap`) by
        the weighted sum over processes of (gradient x :attr:`Shard.weight`), in one all-reduce per
        dtype. A gradient missing on this process but present on another counts as zero; one missing
        on every process stays missing (the optimiser skips that parameter, as on one process)."""
        if not self.world.distributed:
            return
        seen: set = set()
        params: List[torch.Tensor] = []
        for opt in optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in seen and id(p) not in self._ddp_params and p.requires_grad:
                        seen.add(id(p))
                        params.append(p)
        if not params:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.comm_device)
        dist.all_reduce(present)
        chosen = [p for p, c in zip(params, present.tolist()) if c > 0]
        for p in chosen:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._all_reduce_coalesced([p.grad for p in chosen], scale=self.shard.weight)

    def _all_reduce_coalesced(self, tensors: Sequence[torch.Tensor], scale: float = 1.0) -> None:
        by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group]).to(self.comm_device)
            if scale != 1.0:
                flat.mul_(scale)
            dist.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def global_batch(self, *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The global batch's rows of ``tensors`` (this process's rows of the step), in single-process
        order, for a loss that compares samples with each other. The other processes' rows are
        constants; this process's rows keep their graph with the gradient scaled by
        ``1 / Shard.weight``, so that the weighted gradient average gives the gradient of the loss of
        the whole batch. Every process computes the same loss value. On one process: ``tensors``."""
        if not self.world.distributed:
            return tuple(tensors)
        sizes = split_sizes(self.shard.total, self.world.size)
        biggest = max(sizes)
        out = []
        for t in tensors:
            pad = t.new_zeros((biggest - t.shape[0],) + tuple(t.shape[1:]))
            buf = torch.cat([t.detach(), pad]).contiguous()
            parts = [torch.empty_like(buf) for _ in sizes]
            dist.all_gather(parts, buf)
            pieces = [p[:s] for p, s in zip(parts, sizes)]
            own = t
            if t.requires_grad and self.shard.size:
                own = _ScaleGrad.apply(t, self.shard.total / self.shard.size)
            pieces[self.world.rank] = own
            out.append(torch.cat(pieces))
        return tuple(out)

    def reduce_stats(self, stats: Mapping[str, float]) -> Dict[str, float]:
        """Per-step statistics (means over this process's rows) -> means over the global batch."""
        if not self.world.distributed:
            return dict(stats)
        keys = list(stats)
        t = torch.tensor([float(stats[k]) * self.shard.size for k in keys], dtype=torch.float64,
                         device=self.comm_device)
        dist.all_reduce(t)
        return {k: v / self.shard.total for k, v in zip(keys, t.tolist())}

    # -- per epoch ----------------------------------------------------------------------------
    def sum_values(self, values: Sequence[float]) -> List[float]:
        """Sums over processes of ``values`` (float64)."""
        if not self.world.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def all_reduce_sum_(self, *tensors: torch.Tensor) -> None:
        """Replace each of ``tensors`` (in place) by its sum over processes."""
        if self.world.distributed:
            self._all_reduce_coalesced(tensors)

    def broadcast_modules(self, *modules: nn.Module) -> None:
        """Copy every parameter and buffer of ``modules`` from rank 0 (identical starting points)."""
        if not self.world.distributed:
            return
        tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
        by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        with torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.comm_device)
                dist.broadcast(flat, src=0)
                offset = 0
                for t in group:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def average_batchnorm(self, *modules: nn.Module) -> None:
        """Average the BatchNorm running means and variances of ``modules`` over processes (each
        tracked the statistics of its own shards during the epoch)."""
        if not self.world.distributed:
            return
        stats = [t for m in modules for sub in m.modules() if isinstance(sub, nn.modules.batchnorm._BatchNorm)
                 for t in (sub.running_mean, sub.running_var) if t is not None]
        if stats:
            with torch.no_grad():
                self._all_reduce_coalesced(stats, scale=1.0 / self.world.size)

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on rank 0 only (file writes); every process returns its result or
        raises its exception, so the others wait for rank 0 and stop with it."""
        if not self.world.distributed:
            return fn(*args, **kwargs)
        box: List[Any] = [None]
        if self.world.is_main:
            try:
                box[0] = (True, fn(*args, **kwargs))
            except Exception as exc:  # sent to the other processes, raised everywhere
                try:
                    pickle.dumps(exc)
                    box[0] = (False, exc)
                except Exception:
                    box[0] = (False, RuntimeError(f"{type(exc).__name__}: {exc}"))
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def barrier(self) -> None:
        """Wait for every process (nothing on one process)."""
        if self.world.distributed:
            dist.barrier()


def teardown() -> None:
    """Destroy the default process group if one is initialised (registered by :func:`init` to run
    when the process exits). Every process first waits for the others: rank 0 writes the last files
    after the last collective, and a process that destroyed its group while a peer still held the
    connection was measured to abort (gloo: "terminate called without an active exception"). A
    peer that already failed makes the barrier raise; the group is destroyed all the same."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a failed peer: nothing left to wait for
            pass
        dist.destroy_process_group()


def exit_if_distributed(code: int) -> int:
    """End a process of a multi-process run with exit status ``code``: :func:`teardown`, flush
    Python's streams and logging, then ``os._exit`` (no interpreter or C++ static destructors). After
    a complete run gloo's background threads were seen to abort a process during those destructors
    ("terminate called without an active exception", SIGABRT), turning a finished run into a failed
    launch. Without an initialised process group it only returns ``code`` (one process: the normal
    exit)."""
    if not (dist.is_available() and dist.is_initialized()):
        return code
    import logging
    import sys

    teardown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to flush
            pass
    os._exit(int(code))


def init(world: World, device: torch.device, timeout: timedelta = timedelta(minutes=30)) -> DataParallel:
    """The :class:`DataParallel` of a run of this process on ``device``.

    With several processes the default process group is initialised from the environment
    (``env://``, backend :func:`backend_for` ``device``; a CUDA process first selects
    ``cuda:LOCAL_RANK``) unless it already is, and kept until the process exits (:func:`teardown`
    runs then): re-creating the default group within one ``torchrun`` launch can connect to the
    addresses of the previous one and hang, so several runs in one script share it. A group the
    caller initialised must match the environment's rank and size."""
    if not world.distributed:
        return DataParallel(world, device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device), timeout=timeout)
        atexit.register(teardown)
    elif (dist.get_rank(), dist.get_world_size()) != (world.rank, world.size):
        raise ValueError(f"the initialised process group has rank {dist.get_rank()} of {dist.get_world_size()}, the "
                         f"environment says {world.rank} of {world.size}")
    elif dist.get_backend() == "nccl" and device.type != "cuda":
        raise ValueError(f"the initialised process group uses nccl, which cannot reduce tensors on {device}; "
                         f"initialise it with gloo, or train with --device cuda")
    return DataParallel(world, device)


__all__ = ["ENV_VARS", "World", "world_from_env", "process_device", "backend_for", "split_sizes", "Shard",
           "check_batch_size", "check_last_batch", "ShardSampler", "shard_dataset", "DataParallel",
           "init", "teardown", "exit_if_distributed"]
