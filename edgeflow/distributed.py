"""torch.distributed glue: one process per device, launched by ``torchrun`` (or ``--nproc K``).

Nothing here starts processes itself: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR and
:func:`setup` joins the group (gloo on CPU, nccl on CUDA). Every helper works unchanged in a plain
single process, so the same code path serves both.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

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
    return info()


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
