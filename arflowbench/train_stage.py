"""The shared training stage: one trained model per `train_id`, under a claim.

Cells that differ only in how they sample or score (sampler, steps, cfg scale, number of
samples, metrics) have the same train_id and share ``artifacts/train/<train_id>/``:

- ``checkpoint.pt``: model, EMA, optimizer, RNG state and the loss history (resumable);
- ``ema_step<step>.pt``: EMA snapshots at the evaluation points of every sibling cell;
- ``loss.csv``: the full loss log; ``train.json``: what the training measured (throughput,
  MFU, peak memory), so a cell that reuses the training still reports it;
- ``.claim``: held while training, so two processes never train the same model twice (the
  second waits, then reuses the result). In a data-parallel cell rank 0 holds it for all ranks
  and alone writes these files; throughput is the global batch over the step time (the sum
  over ranks) and MFU is against the peak of all ranks' devices.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arflowbench.benchmarks.timing import spread
from arflowbench.distributed import World, rank0_claim
from arflowbench.machine import process_peak_memory_mb
from arflowbench.metrics.base import atomic_write
from arflowbench.resolve import Resolved
from arflowbench.results import Job, train_artifacts
from arflowbench.trainer import TrainResult, train
from arflowbench.ui import progress_bar

CHECKPOINT = "checkpoint.pt"
LOSS_LOG = "loss.csv"
TRAIN_INFO = "train.json"
CLAIM = ".claim"
#: written once the training reached its last step (what `validate` reads)
DONE = "done"


def snapshot_name(step: int) -> str:
    return f"ema_step{step:08d}.pt"


@dataclass
class Trained:
    """A finished training: the EMA model, its loss history and how it was obtained."""

    ema: nn.Module
    result: TrainResult
    #: "trained" (here, from scratch), "resumed" (from a checkpoint) or "shared" (reused)
    stage: str
    dir: Path
    #: throughput, MFU and peak memory of the process that trained (train.json)
    info: dict[str, Any]

    def snapshot(self, step: int) -> Path:
        return self.dir / snapshot_name(step)


def run_train_stage(res: Resolved, job: Job, device: str, warn: Callable[[str], None],
                    world: World | None = None) -> Trained:
    """Train `res` (or resume it, or reuse a finished training) under the stage's claim
    (taken by rank 0 for every rank of `world`)."""
    world = world or World()
    rt = job.runtime
    d = train_artifacts(Path(rt.results_dir), res.train_id)
    steps = set(job.snapshot_steps) | set(res.spec.eval_steps())
    snapshots = {s: d / snapshot_name(s) for s in sorted(steps)}
    waited = []

    def on_wait(holder: str) -> None:
        waited.append(holder)
        warn(f"training {res.train_id} is held by {holder or 'another process'}: waiting for it")

    def on_stale(holder: str) -> None:
        warn(f"warning: training {res.train_id} was claimed by {holder}, which died; taking it "
             "over from its last checkpoint")

    with rank0_claim(d / CLAIM, world, on_wait=on_wait, on_stale=on_stale):
        data = res.dataset.load("train")
        torch.manual_seed(res.spec.train.seed)  # model init
        model = res.build_model("cpu")
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        show = rt.progress and world.is_main
        with progress_bar(f"train {res.train_id}", res.spec.train.steps, show) as bar:
            ema, tr = train(model, res.formulation, data, res.spec.train, train_id=res.train_id,
                            checkpoint_path=d / CHECKPOINT, device=device,
                            checkpoint_every=rt.checkpoint_every, snapshots=snapshots,
                            progress=bar, world=world, compile=rt.compile)
        if not world.is_main:
            info = {}
        elif tr.step_times:  # this process trained: measure and keep what it measured
            info = _measure(res, model, data, device, tr)
            atomic_write(d / TRAIN_INFO, lambda f: f.write(json.dumps(info).encode()))
            atomic_write(d / LOSS_LOG, lambda f: f.write(_loss_csv(tr.losses).encode()))
        else:
            info = _read_info(d)
        if world.is_main and not (d / DONE).exists():
            atomic_write(d / DONE, lambda f: f.write(f"{res.spec.train.steps}\n".encode()))
    stage = ("shared" if tr.resumed_from == res.spec.train.steps
             else "resumed" if tr.resumed_from is not None else "trained")
    return Trained(ema, tr, stage, d, info)


def is_trained(results_dir: Path, train_id: str) -> bool:
    """Whether the training stage `train_id` has finished under `results_dir`."""
    return (train_artifacts(results_dir, train_id) / DONE).exists()


def _loss_csv(losses: list[float]) -> str:
    return "step,loss\n" + "".join(f"{i + 1},{v!r}\n" for i, v in enumerate(losses))


def _read_info(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / TRAIN_INFO).read_text())
    except (OSError, ValueError):
        return {}


def _measure(res: Resolved, model: nn.Module, data, device: str,
             tr: TrainResult) -> dict[str, Any]:
    """Throughput (median and spread over steps), peak memory right after training (before the
    FLOP count below allocates anything), and MFU: FLOPs of one counted step over the median
    step time, against the peak of the dtype the training's matmuls ran in (bf16 under bf16
    autocast; `throughput.peak_flops`). Kernels the FLOP counter cannot see are listed."""
    from arflowbench.metrics.throughput import (
        count_flops,
        matmul_dtype,
        mfu,
        peak_flops,
        uncounted_kernels,
    )
    from arflowbench.trainer import autocast_context, autocast_dtype, micro_slices, step_generator

    batch, accum, W = res.spec.train.batch_size, res.spec.train.grad_accum, tr.world_size
    precision = res.spec.train.precision
    info: dict[str, Any] = {
        # the global batch over rank 0's step time: the images/s of all ranks together
        **spread("train_images_per_s", [batch / t for t in tr.step_times]),
        "train_peak_memory_mb": process_peak_memory_mb(device),  # rank 0's
        "train_steps_timed": len(tr.step_times),
        "world_size": W,
        "grad_accum": accum,
    }
    g = step_generator(res.spec.train.seed, 0)
    x, y = res.formulation.make_batch(data, batch, g)
    x, y = x.to(device), y.to(device)
    rows = micro_slices(len(y), World(0, W), accum)[0]  # one micro-batch, counted W x A times
    kw = {} if W * accum == 1 else {"rows": rows}

    def one_step():
        with autocast_context(device, precision):  # the step as trained (implementations too)
            loss = res.formulation.training_loss(model, x, y, g, **kw)["loss"]
        loss.backward()

    flops = count_flops(one_step) * W * accum  # one global step
    model.zero_grad(set_to_none=True)
    dtype = matmul_dtype(device, autocast_dtype(device, precision))
    one, source = peak_flops(device, dtype)
    peak = one * W  # every rank's device
    achieved = flops / statistics.median(tr.step_times)
    implementation = getattr(model, "attention_implementation", "") or ""
    info.update(train_flops_per_step=float(flops), train_achieved_flops=achieved,
                matmul_peak_flops=peak, mfu=mfu(achieved, peak), peak_dtype=dtype,
                peak_source=source,
                flops_uncounted=", ".join(uncounted_kernels(implementation)) or "none")
    return info
