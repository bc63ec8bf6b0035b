"""The one shared training loop: step, EMA, clip, log, checkpoint/resume.

The trainer never knows which formulation runs: it asks the formulation for a batch and a loss.

Determinism: every step draws its batch, noise, times and label dropout from a generator seeded
by (seed, step) alone, so a run resumed from a checkpoint sees exactly the batches the
uninterrupted run would have seen; together with the restored model, EMA and optimizer state it
ends with bit-identical weights on the same machine (tested with SIGKILL).

Data parallel (`World` with several ranks): every rank draws the whole (global) batch, noise,
times and label dropout from the same (seed, step) generator and runs the model on its own slice
of it (`Formulation.training_loss(..., rows=)`); DistributedDataParallel averages the gradients.
With `train.grad_accum` = A, a rank's slice is run as A micro-batches whose losses are scaled by
1/A. The W x A slices are equal, so the averaged gradient is the gradient of the global mean loss:
a W-rank run computes what one process computes (to float rounding; tested with gloo). Rank 0
writes checkpoints and snapshots; every rank resumes from the same checkpoint.

Checkpoints are written atomically (temp file, fsync, rename) and hold only tensors and plain
Python values, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from arflowbench.config import TrainSpec
from arflowbench.data.base import ImageSet
from arflowbench.distributed import World, check_split
from arflowbench.errors import ArflowbenchError, ConfigError, NonFiniteLossError
from arflowbench.machine import synchronize

#: bump when the training loop's numerics change (feeds the run hash)
#: 2: weight decay on weight matrices only (`param_groups`)
TRAINER_VERSION = 2
#: train.precision (config.PRECISIONS) -> autocast dtype of a training step (None: plain fp32)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
#: `Formulation.training_loss`'s whole-batch `rows` (kept here: the trainer does not import
#: the formulations package)
ALL = slice(None)
#: first steps excluded from throughput (allocator and kernel warm-up)
WARMUP_STEPS = 3


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    #: wall seconds of each step run in this process after warm-up (not restored on resume)
    step_times: list[float] = field(default_factory=list)
    images_per_step: int = 0
    resumed_from: int | None = None
    #: ranks that trained together (images_per_step is the global batch, over all of them)
    world_size: int = 1


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step: a pure function of (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def ema_decay_at(decay: float, step: int) -> float:
    """EMA warm-up: short runs would otherwise sample from nearly initial weights."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic write: a crash leaves either the old or the new checkpoint, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill: leave no half-written file behind
        raise


def load_checkpoint(path: Path, train_id: str) -> dict | None:
    """A checkpoint or snapshot of training `train_id` (None if absent); weights only."""
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    owner = ckpt.get("train_id", ckpt.get("run_id"))
    if owner != train_id:
        raise ArflowbenchError(f"checkpoint {path} belongs to training {owner}, not {train_id}")
    return ckpt


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups as in the public ARFlow code: parameters with >= 2 dimensions (weight
    matrices, conv kernels, the label-embedding table) decay by `weight_decay`; biases, norm
    scales and other 1-D (or 0-D) parameters are in a no-decay group. Frozen parameters are left
    out. Group order and membership follow `named_parameters()`, so a checkpoint's optimizer state
    loads into the same model."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def autocast_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype of a training step on `device` at `train.precision`, None for none.

    fp32 (the default, as the public ARFlow/SiT code): no autocast anywhere. bf16: autocast on
    CUDA. bf16 on CPU is rejected (ConfigError): CPU bf16 autocast is slower than fp32 here and
    is not what a bf16 cell measures on GPU, so a CPU run of such a cell would report numbers
    of neither setting."""
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"unknown train.precision {precision!r} "
                          f"(known: {', '.join(AUTOCAST_DTYPES)})")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is not None and torch.device(device).type != "cuda":
        raise ConfigError(f"train.precision = {precision!r} needs a CUDA device, this cell runs on "
                          f"{device!r}: use train.precision = \"fp32\" (the default) on CPU")
    return dtype


def autocast_context(device: str, precision: str) -> AbstractContextManager:
    """The context a training step's forward and loss run in (see `autocast_dtype`)."""
    dtype = autocast_dtype(device, precision)
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype)


def clip_gradients(model: nn.Module, spec: TrainSpec) -> None:
    if spec.grad_clip is None:
        return
    if spec.grad_clip_mode == "value":
        nn.utils.clip_grad_value_(model.parameters(), spec.grad_clip)
    else:
        nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)


class DataParallelModel:
    """The `GenerativeModel` interface over a DistributedDataParallel wrapper: calls go through
    DDP (so gradients are averaged over ranks), the other members to the network itself."""

    def __init__(self, ddp: nn.Module, module: nn.Module):
        self.ddp, self.module = ddp, module
        self.channels, self.image_size = module.channels, module.image_size

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.ddp(x, t, y)

    @property
    def null_class(self) -> int:
        return self.module.null_class

    @property
    def supports_step(self) -> bool:
        return self.module.supports_step

    def init_state(self, batch_size: int, device=None):
        return self.module.init_state(batch_size, device)

    def step(self, x, t, y, state):
        return self.module.step(x, t, y, state)


def micro_slices(items: int, world: World, grad_accum: int) -> list[slice]:
    """The item slices of the global batch this rank runs, one per micro-batch: the batch is cut
    into world.size x grad_accum equal parts, rank r takes parts r*A ... r*A + A - 1."""
    if world.size == 1 and grad_accum == 1:
        return [ALL]  # the plain single-process step, bit for bit
    m = items // (world.size * grad_accum)
    first = world.rank * grad_accum
    return [slice((first + a) * m, (first + a + 1) * m) for a in range(grad_accum)]


def _wrap(model: nn.Module, world: World, device: str):
    """(what the formulation calls, a context factory that skips DDP's gradient all-reduce)."""
    if not world.distributed:
        return model, nullcontext
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    ddp = DDP(model, device_ids=ids)
    return DataParallelModel(ddp, model), ddp.no_sync


def train(model: nn.Module, formulation, data: ImageSet, spec: TrainSpec, *, train_id: str,
          checkpoint_path: Path, device: str = "cpu", checkpoint_every: int = 100,
          snapshots: dict[int, Path] | None = None, progress=None,
          world: World | None = None, compile: bool = False) -> tuple[nn.Module, TrainResult]:
    """Train (or resume) to `spec.steps`; returns the EMA model and what was measured.

    `snapshots` maps steps to files where the EMA weights at that step are kept (written before
    any later checkpoint, so a resumed run never lacks an earlier snapshot).
    `progress(step, total, loss, images_per_s)` is called after every step if given (rank 0).
    `world`: this rank's place in a data-parallel run (default: one process).
    `compile`: the training forward runs through ``torch.compile`` (weights, EMA and checkpoints
    stay those of `model`)."""
    world = world or World()
    snapshots = snapshots or {}
    autocast = autocast_context(device, spec.precision)  # first: a bad pair fails before any work
    slices = [ALL]  # one process, one batch: the formulation's plain loss
    if world.size * spec.grad_accum > 1:
        check_split(spec.batch_size, formulation.images_per_item, world.size, spec.grad_accum)
        slices = micro_slices(formulation.items_per_batch(spec.batch_size), world,
                              spec.grad_accum)
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, spec.weight_decay), lr=spec.lr, betas=spec.betas)
    result = TrainResult(images_per_step=spec.batch_size, world_size=world.size)
    start = 0
    ckpt = load_checkpoint(checkpoint_path, train_id)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"])
        start = int(ckpt["step"])
        result.losses = list(ckpt["losses"])
        result.resumed_from = start
    net, no_sync = _wrap(model, world, device)  # after loading: DDP starts from equal weights
    if compile:  # after DDP, as torch recommends
        if isinstance(net, DataParallelModel):
            net.ddp = torch.compile(net.ddp)
        else:
            net = torch.compile(net)
    pin = torch.device(device).type == "cuda"  # pinned host memory: the copy is asynchronous
    write = world.is_main

    def payload(step: int) -> dict:
        return {"train_id": train_id, "step": step, "model": model.state_dict(),
                "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "rng_cpu": torch.get_rng_state(), "losses": result.losses}

    last_good = start
    for step in range(start, spec.steps):
        t0 = time.perf_counter()
        g = step_generator(spec.seed, step)
        x, y = formulation.make_batch(data, spec.batch_size, g)  # the global batch, every rank
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        after_batch = g.get_state()  # each micro-batch redraws the global noise from here
        opt.zero_grad(set_to_none=True)
        value = 0.0
        for i, rows in enumerate(slices):
            g.set_state(after_batch)
            last = i == len(slices) - 1
            with (nullcontext() if last else no_sync()), autocast:
                # rows only when split: a formulation without `rows` still trains alone
                kw = {} if rows == ALL else {"rows": rows}
                loss = formulation.training_loss(net, x, y, g, **kw)["loss"]
            if len(slices) > 1:
                loss = loss / len(slices)  # the mean over this rank's micro-batches
            value += float(loss.detach())
            loss.backward()  # DDP averages over ranks at the last micro-batch
        value = world.sum(value) / world.size  # the global batch's loss, on every rank
        if not math.isfinite(value):  # every rank stops here, before the optimizer step
            where = (f"the last good checkpoint (step {last_good}) is kept at {checkpoint_path}"
                     if checkpoint_path.exists() else "no checkpoint was written yet")
            raise NonFiniteLossError(f"non-finite loss ({value}) at step {step + 1}; {where}. "
                                     "Lower train.lr or set train.grad_clip.")
        clip_gradients(model, spec)
        opt.step()
        update_ema(ema, model, ema_decay_at(spec.ema_decay, step))
        synchronize(device)
        dt = time.perf_counter() - t0
        if step - start >= WARMUP_STEPS:
            result.step_times.append(dt)
        result.losses.append(value)
        done = step + 1
        if write and done in snapshots:
            save_checkpoint(snapshots[done], {"train_id": train_id, "step": done,
                                              "ema": ema.state_dict()})
        if write and (done % checkpoint_every == 0 or done == spec.steps):
            save_checkpoint(checkpoint_path, payload(done))
            last_good = done
        if progress is not None and write:
            progress(done, spec.steps, value, spec.batch_size / dt)
    world.barrier()  # rank 0's last checkpoint and snapshots are on disk for every rank
    return ema, result
