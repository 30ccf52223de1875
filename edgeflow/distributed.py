"""torch.distributed glue: one process per device, launched by ``torchrun`` (or ``--nproc K``).

Nothing here starts processes itself: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR and
:func:`setup` joins the group (gloo on CPU, nccl on CUDA). Every helper works unchanged in a plain
single process, so the same code path serves both.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from edgeflow.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def info() -> DistInfo:
    """The current process's place in the group (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def setup(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op otherwise. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
        # leave the group before the interpreter's teardown (library callers under torchrun);
        # it makes gloo's abort at exit rarer but does not prevent it: the CLI ends its
        # workers through finish() instead
        atexit.register(_leave)
    return info()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def finish(code: int) -> NoReturn:
    """End a torchrun worker process with exit status ``code``, skipping the interpreter's teardown.

    Even after leaving the process group (:func:`_leave`), a worker whose work was done sometimes
    aborted at exit ("terminate called without an active exception", exit -6: a C++ thread of the
    gloo backend destroyed while joinable during static destruction); torchrun then kills the
    other ranks and the run fails, about one run in ten on 2 cores. Every file EdgeFlow writes is
    closed (and renamed into place) before a command returns, so after a last barrier (on
    success: no rank may leave while another still talks to it) the worker flushes its output and
    leaves with ``os._exit``, which runs no destructors.
    """
    if code == 0 and dist.is_available() and dist.is_initialized():
        dist.barrier()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to save
            stream.flush()
    os._exit(code)


def device_for_rank(device: torch.device) -> torch.device:
    """Under torchrun each rank owns cuda:LOCAL_RANK; CPU stays CPU."""
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few Python numbers over all ranks (identity in a single process)."""
    if not info().enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of one number over all ranks: every rank gets the bit-identical result, so
    decisions taken from it (pressure controller, early stopping) agree everywhere."""
    if not info().enabled:
        return value
    return all_reduce_sum([value], device)[0] / info().world_size


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's ``.grad`` over all ranks in place (a no-op in a single process).

    For loops that DDP does not fit: several backward passes per step, and a rank may have done
    none (an uneven split, a skipped task). A rank without a gradient for a parameter contributes
    zeros; a parameter without a gradient on *every* rank keeps ``None``, as in a single process,
    so AdamW skips it (a zero gradient would still decay it). Every rank must call this every step.
    """
    if not info().enabled or not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=device)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in live])
    dist.all_reduce(flat)
    for p, g in zip(live, flat.split([p.numel() for p in live]), strict=True):
        p.grad = g.view_as(p).clone()


def shard_values(values: list[float], n: int, device: torch.device) -> list[float]:
    """The full list of ``n`` per-item numbers when each rank computed only ``values``, its
    :func:`shard` of them: placed at their indices, zeros elsewhere, then summed (float64, so
    adding the zeros is exact and every rank gets the single-process numbers bit for bit)."""
    mine = shard(n)
    if len(values) != len(mine):
        raise ValueError(f"expected {len(mine)} values for this rank's shard, got {len(values)}")
    if not info().enabled:
        return list(values)
    full = [0.0] * n
    full[mine.start:mine.stop] = values
    return all_reduce_sum(full, device)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (identity in a single process)."""
    if not info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (``None`` elsewhere); ``[obj]`` when single."""
    cur = info()
    if not cur.enabled:
        return [obj]
    out = [None] * cur.world_size if cur.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when running under torchrun, else ``model`` itself.

    Parameters must already have their final ``requires_grad``: DDP registers its gradient hooks
    for the trainable ones when it is built.
    """
    if not info().enabled:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step each replica still
    holds the statistics of its own last batch; call this once training ends.
    """
    if not info().enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def replicas_agree(model: torch.nn.Module) -> bool | None:
    """On rank 0: whether every rank's ``model`` is bit-identical (sha256 of its state); ``None``
    on the other ranks and in a single process. DDP should keep replicas equal; this proves it."""
    if not info().enabled:
        return None
    from edgeflow.checkpoint import state_digest

    digests = gather_to_main(state_digest(model))
    return None if digests is None else len(set(digests)) == 1


def rank_batches(n: int, *, batch_size: int, generator: torch.Generator):
    """Index batches of this rank's share of one permutation of ``n`` items.

    ``batch_size`` is the global batch: each of K ranks takes ``batch_size // K`` per step, all
    ranks take the same number of steps (so gradient all-reduces line up), and ``generator`` must
    be seeded identically on every rank. In a single process this is a plain shuffled batching.
    """
    cur = info()
    per_rank = n // cur.world_size
    local = max(1, batch_size // cur.world_size)
    order = torch.randperm(n, generator=generator)
    mine = order[cur.rank::cur.world_size][:per_rank]
    for i in range(0, per_rank, local):
        yield mine[i:i + local]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps per epoch of :func:`rank_batches` (the same on every rank)."""
    world = info().world_size
    return -(-(n // world) // max(1, batch_size // world))


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def shard(n: int, *, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    cur = info()
    rank = cur.rank if rank is None else rank
    world_size = cur.world_size if world_size is None else world_size
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


def relaunch_with_torchrun(nproc: int, argv: list[str] | None = None) -> None:
    """Replace this process with ``torchrun --nproc-per-node nproc -m edgeflow <argv>``."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    argv = list(sys.argv[1:] if argv is None else argv)
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "edgeflow", *cleaned]
    os.execv(sys.executable, cmd)
