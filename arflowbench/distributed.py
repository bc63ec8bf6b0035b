"""The process group of a cell launched with several processes (torchrun, or submitit tasks).

`World` is what the trainer and the sampler need to know: this process's rank, the world size,
its device, and the few collectives they use. A cell started as one process gets the trivial
world (rank 0 of 1), whose collectives are no-ops, so single-process runs never touch
torch.distributed.

- Backend: nccl on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU.
- Every collective has a timeout (`DEFAULT_TIMEOUT_S`, ``runtime.dist_timeout_s``): a rank
  that dies makes its peers fail with an error (gloo sees the closed connection at once; a hung
  rank is caught by the timeout), never hang. The launcher then stops the others, and the runner
  records a failed row if rank 0 could not write one.
- Only rank 0 takes claims and writes files (`rank0_claim`): the others wait at a barrier until
  rank 0 holds the claim, so no rank reads a checkpoint another process is still writing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from arflowbench.locks import claim

#: seconds a collective may wait for its peers (rank 0 alone scoring metrics or waiting on a
#: training claim held by another run counts against it)
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class World:
    """This process's place in the cell's process group (rank 0 of 1 without a launcher)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, value: float) -> float:
        """`value` summed over ranks (float64 on the CPU for gloo, on the device for nccl)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return float(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` (picklable), on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, t: torch.Tensor) -> list[torch.Tensor] | None:
        """Rank 0: the tensors of every rank (same shape and dtype everywhere), in rank order,
        on the CPU; other ranks: None."""
        if not self.distributed:
            return [t.cpu()]
        t = t.to(_collective_device()).contiguous()
        out = [torch.empty_like(t) for _ in range(self.size)] if self.is_main else None
        dist.gather(t, out, dst=0)
        return [o.cpu() for o in out] if out is not None else None


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's variables ((0, 1, 0) without one)."""
    env = os.environ
    return (int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")),
            int(env.get("LOCAL_RANK", "0")))


def init_world(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[World, str]:
    """Join the launcher's process group; returns the world and this rank's device.

    Without a launcher (WORLD_SIZE unset or 1) nothing is initialised: (World(), device)."""
    rank, size, local = launched_world()
    if size <= 1:
        return World(), device
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    return World(rank, size), device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def rank0_claim(path: Path, world: World, **claim_kw) -> Iterator[None]:
    """`locks.claim(path)` held by rank 0 for the whole block; the other ranks enter the block
    once rank 0 holds it (a barrier), so they see what the previous holder left."""
    if not world.is_main:
        world.barrier()
        yield
        return
    with claim(path, **claim_kw):
        world.barrier()
        yield


def shard(n: int, world: World) -> range:
    """This rank's contiguous part of range(n): sizes differ by at most one, rank order."""
    lo = n * world.rank // world.size
    hi = n * (world.rank + 1) // world.size
    return range(lo, hi)


def check_split(batch_size: int, images_per_item: int, world_size: int, grad_accum: int,
                what: Callable[[], str] = lambda: "") -> int:
    """Items per micro-batch of one rank; raises ConfigError unless the global batch splits
    evenly over world size x grad_accum x images per item (so the split is exact)."""
    from arflowbench.errors import ConfigError

    parts = world_size * grad_accum * images_per_item
    if batch_size % parts:
        raise ConfigError(
            f"{what()}train.batch_size {batch_size} must be a multiple of world size {world_size} "
            f"x train.grad_accum {grad_accum} x images per item {images_per_item} (= {parts})")
    return batch_size // parts
