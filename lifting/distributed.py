"""Data-parallel training machinery shared by ``train_lifter`` and ``train_tcmr``.

* ``init_distributed``: process group from torchrun's (RANK/WORLD_SIZE/LOCAL_RANK) or Slurm's
  (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID + MASTER_ADDR/MASTER_PORT) environment; gloo on CPU,
  nccl on CUDA (one GPU per local rank). Without those variables: one process, nothing initialised,
  and every helper below is a no-op, so the single-process code path is unchanged.
* ``rank_part``: the batch semantics. ``batch_size`` stays the GLOBAL batch; the step's batch (a
  slice of the seeded epoch permutation, or a ``MixedBatchSampler`` draw) is cut into ``world``
  contiguous, equal parts and rank r trains on part r. With equal parts and mean-reduced losses,
  DDP's gradient average equals the single-process gradient of the whole batch.
* ``DistributedBatchNorm``: VideoPose3D's BatchNorm statistics are over the whole batch; with DDP
  each rank sees 1/world of it, so per-rank statistics are noisier and the model is a different
  one. ``sync_bn=True`` (the default of ``train_lifter``) replaces every BatchNorm by this module,
  whose batch mean/variance are all-reduced (differentiably) over the ranks: the reference
  semantics, at the cost of 2 small all-reduces per BN layer per step. It works on gloo/CPU, where
  ``torch.nn.SyncBatchNorm`` refuses CPU tensors. TCMR has no BatchNorm.
* Metrics: ``all_reduce_sums``; rank 0 evaluates and ``broadcast_object`` shares the result, so the
  history, the LR schedule and the checkpoint are identical on every rank; only rank 0 writes.
* Resume: ``gather_rng_states`` / ``restore_rng_state`` keep each rank's torch RNG (dropout) in the
  checkpoint, so a resumed run continues every rank's stream as an uninterrupted one would.
"""
from __future__ import annotations

import atexit
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .videopose3d.model import TemporalModelOptimized1f

__all__ = ["DistContext", "init_distributed", "init_group", "shutdown", "teardown_group", "rank_part",
           "all_reduce_sums", "broadcast_object", "barrier", "gather_rng_states", "restore_rng_state",
           "DistributedBatchNorm", "convert_sync_batchnorm", "SyncTemporalModelOptimized1f", "wrap_ddp"]


@dataclass(frozen=True)
class DistContext:
    """Where this process is: rank r of ``world_size``, its device, and whether a group is live."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_rank(env: Mapping[str, str]) -> tuple[int, int, int]:
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init_distributed(device: torch.device, *, timeout_minutes: float = 60.0,
                     env: Mapping[str, str] | None = None) -> DistContext:
    """Join the process group described by the environment (see module docstring).

    ``device`` is the single-process choice; under CUDA each rank takes ``cuda:<local_rank>``.
    """
    env = os.environ if env is None else env
    rank, world, local = _env_rank(env)
    if world <= 1:
        return DistContext(device=device)
    if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise RuntimeError(f"rank {rank} of {world}: MASTER_ADDR and MASTER_PORT must be set for "
                           f"multi-process training (torchrun sets them; see docs/slurm_extract.sh)")
    if device.type == "cuda":
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # One group per process, torn down at exit: re-creating it for a second training run in the
    # same process (torchrun's rendezvous store is reused) can hang.
    init_group(backend, rank, world, datetime.timedelta(minutes=timeout_minutes))
    return DistContext(rank, world, local, device, backend)


def init_group(backend: str, rank: int, world_size: int, timeout: datetime.timedelta) -> None:
    """The default process group (no-op when one is live), with ``teardown_group`` run at exit.

    ``torch.distributed.nn`` is imported first on purpose: its functions take
    ``group=group.WORLD`` as a default argument, and DDP imports it lazily; imported while a group
    is live, those defaults pin that group for the life of the process and ``teardown_group``
    could not join its threads. Imported before, the defaults are None.
    """
    if dist.is_initialized():
        return
    import torch.distributed.nn  # noqa: F401  (see the docstring)

    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    atexit.register(teardown_group)


def teardown_group() -> None:
    """Destroy the default group AND its backend while the interpreter is fully alive.

    ``destroy_process_group`` only unregisters the group: DDP reducers (often in dead reference
    cycles) still hold it, so gloo's worker threads outlive the call. Such a thread may still hold
    a finished collective whose tensors belong to Python objects (an ``all_gather`` output, kept
    alive through the weak reference of the ``barrier`` that followed it); when it lets go during
    interpreter finalization, taking the GIL ends the thread inside a destructor and the process
    aborts ("terminate called without an active exception", SIGABRT, exit code -6) after a run
    that finished. So: keep one Python reference, destroy, collect the cycles, then drop that
    reference: the group's destructor runs with the GIL released (torch binds it so) and joins
    the worker threads, which release their work while Python can still take the GIL. Local
    only, no collective: a rank that exits on an error must not wait for the others here. A group
    that user code still references stays alive (and its threads with it), as before.
    """
    if not dist.is_initialized():
        return
    group = dist.group.WORLD
    dist.destroy_process_group()
    gc.collect()
    del group


def shutdown(ctx: DistContext) -> None:
    """End of a run: wait for every rank (the group itself lives until the process exits)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()


def rank_part(idx: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Rank r's contiguous part of one global batch ``idx`` (B,); parts are equal when B % world
    == 0, else the first B % world ranks get one more (see ``train_tcmr`` for the consequence)."""
    if not ctx.enabled:
        return idx
    return np.array_split(np.asarray(idx), ctx.world_size)[ctx.rank]


def all_reduce_sums(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Element-wise sum of a {name: float} dict over the ranks (same keys on every rank)."""
    if not ctx.enabled:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; small)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_rng_states(ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's CPU torch RNG state, in rank order (all ranks get the list)."""
    state = torch.get_rng_state()
    if not ctx.enabled:
        return [state]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, state)
    return out


def restore_rng_state(states: list[torch.Tensor] | None, fallback: torch.Tensor, ctx: DistContext,
                      where: str) -> None:
    """Restore this rank's RNG from a checkpoint written by a run of the same world size."""
    if not ctx.enabled or not states:
        torch.set_rng_state(fallback)
        return
    if len(states) != ctx.world_size:
        raise RuntimeError(f"{where}: written by a run with {len(states)} process(es); resuming "
                           f"it exactly needs the same number, not {ctx.world_size}")
    torch.set_rng_state(states[ctx.rank])


class _GroupStats(torch.autograd.Function):
    """Sum a (3, C) tensor over the ranks; the gradient is summed likewise (the batch statistics
    of every rank depend on every rank's inputs)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # noqa: D401
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class DistributedBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the whole global batch (all ranks).

    Input (N, C) or (N, C, L); same parameters, buffers and state_dict keys as ``nn.BatchNorm1d``;
    outside training or without a process group it IS ``nn.BatchNorm1d``. The running variance
    uses the unbiased estimate over all N*L*world elements, as BatchNorm on the whole batch would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        flat = x.transpose(0, 1).reshape(c, -1) if x.dim() == 3 else x.t()
        n_local = torch.full((c,), float(flat.shape[1]), dtype=flat.dtype, device=flat.device)
        stats = _GroupStats.apply(torch.stack([flat.sum(1), (flat * flat).sum(1), n_local]))
        n = stats[2]
        mean = stats[0] / n
        var = (stats[1] / n - mean * mean).clamp_min(0)
        momentum = self.momentum or 0.0
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = (1, c, 1) if x.dim() == 3 else (1, c)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` below ``module`` by a ``DistributedBatchNorm`` carrying the
    same parameters, buffers and momentum (in place; returns ``module``)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm1d:
            new = DistributedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(iter(child.buffers())).device if list(child.buffers()) else "cpu")
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module


class SyncTemporalModelOptimized1f(TemporalModelOptimized1f):
    """The strided training twin with BatchNorm routed through the modules (so that a
    ``DistributedBatchNorm`` can synchronise it); numerically the parent otherwise."""

    @staticmethod
    def _bn(h: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
        if isinstance(bn, DistributedBatchNorm):
            return bn(h.reshape(-1, h.shape[-1])).reshape(h.shape)
        return TemporalModelOptimized1f._bn(h, bn)


def wrap_ddp(model: nn.Module, ctx: DistContext, *, broadcast_buffers: bool = True,
             find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when a group is live, else ``model``."""
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=broadcast_buffers,
                                               find_unused_parameters=find_unused_parameters)

