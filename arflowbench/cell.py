"""One matrix cell in its own process: a pipeline of stages, then one record.

    resolve -> train (shared per train_id, `train_stage.py`) -> sample (grid, `sampling.py`)
            -> evaluate (eval.at points and the final evaluation, `evaluation.py`) -> record

Run as ``python -m arflowbench.cell JOB.json`` (a `Job`), or under torch's launcher
(``torchrun --nproc-per-node N -m arflowbench.cell JOB.json``). The record (`RunRecord`) is
appended to runs.jsonl whatever happens; exit codes: 0 ok; 2 a user error (bad config, missing
data, NaN loss), recorded as a failed row; 1 an unexpected crash, recorded as a failed row with
the traceback's tail; `EXIT_SKIPPED` nothing done: the cell is claimed by another live process,
or already has an ok row. A process killed by a signal writes nothing: the runner records that.

One cell, one claim: the cell holds ``artifacts/<run_id>/.claim`` (`locks.claim`) while it
runs, so a second runner (or a rerun beside an orphan) skips it, naming the holder; a claim left
by a dead process is taken over with a warning.

Under a launcher (WORLD_SIZE > 1) the cell joins the process group (`distributed.init_world`):
every rank runs the pipeline (data-parallel training, sharded sampling); rank 0 alone takes the
claims, decides for all (skip or run), writes checkpoints, artifacts and the row. A rank that
dies makes the others fail (closed connection, or the collective timeout), never hang; the
launcher then stops the rest, and a rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from arflowbench import allocator, ui
from arflowbench.distributed import World, close_world, init_world, launched_world
from arflowbench.errors import ArflowbenchError, PluginUnavailableError
from arflowbench.launch import die_with_parent
from arflowbench.locks import Busy, claim
from arflowbench.machine import configure_device, environment_stamp, process_peak_memory_mb
from arflowbench.resolve import Resolved, resolve
from arflowbench.results import (
    ARTIFACTS_DIR,
    RUNS_FILE,
    STATUS_FAILED,
    STATUS_OK,
    Job,
    PluginRef,
    RunRecord,
    append,
    finished_run_ids,
    now_iso,
    run_artifacts,
)

SAMPLES = "samples.png"
#: the claim a running cell holds in its artifacts folder
CLAIM = ".claim"
#: exit code of a cell that did nothing: claimed by another live process, or already finished
EXIT_SKIPPED = 75
#: points kept of the loss curve in the row (the full log is an artifact)
CURVE_POINTS = 200


def smoothed(losses: list[float], window: int = 20) -> float:
    tail = losses[-window:]
    return sum(tail) / len(tail)


def downsample(losses: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    stride = max(1, len(losses) // points)
    idx = list(range(0, len(losses), stride))
    if idx[-1] != len(losses) - 1:
        idx.append(len(losses) - 1)
    return [[i + 1, losses[i]] for i in idx]


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_job(job: Job, world: World | None = None, device: str | None = None) -> RunRecord:
    """Run one cell (this rank's part of it); returns its record (appended to runs.jsonl by
    rank 0 only)."""
    world = world or World()
    device = device or job.runtime.resolved_device()
    configure_device(device)  # TF32 on CUDA targets, before the stamp that records it
    results_dir = Path(job.runtime.results_dir)
    rec = RunRecord(run_id=job.run_id, train_id=job.train_id, status=STATUS_FAILED,
                    matrix=job.runtime.matrix, cell=job.cell,
                    spec=job.spec.model_dump(mode="json"), started=now_iso(),
                    env={**environment_stamp(device), "world_size": world.size})
    t_start = time.perf_counter()
    try:
        res = resolve(job.spec, job.runtime)
        if (res.run_id, res.train_id) != (job.run_id, job.train_id):
            raise ArflowbenchError(f"id mismatch: runner {job.run_id}/{job.train_id}, cell "
                                   f"{res.run_id}/{res.train_id} (code changed in between?)")
        rec.spec = res.spec.model_dump(mode="json")
        rec.plugins = _plugins(res)
        rec.data_info = res.dataset.record_info()
        if res.unavailable:
            raise PluginUnavailableError(f"attention {res.spec.attention.name!r} is "
                                         f"unavailable here: {res.unavailable}")
        _pipeline(res, job, device, results_dir, rec, world)
        rec.status = STATUS_OK
    except ArflowbenchError as err:
        rec.error = f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - any crash fails this one cell, recorded
        rec.error = f"{type(err).__name__}: {err}"
        rec.traceback = traceback.format_exc()[-4000:]
    rec.finished = now_iso()
    rec.duration_s = round(time.perf_counter() - t_start, 3)
    if world.is_main:
        append(results_dir / RUNS_FILE, rec)
    return rec


def _plugins(res: Resolved) -> dict[str, PluginRef]:
    s, v = res.spec, res.versions
    out = {
        "attention": PluginRef(name=s.attention.name, version=v["attention"],
                               implementation=res.attention_implementation),
        "formulation": PluginRef(name=s.formulation.name, version=v["formulation"]),
        "dataset": PluginRef(name=s.data.name, version=v["dataset"]),
    }
    for m in res.metrics:
        out[f"metric:{m.name}"] = PluginRef(name=m.name, version=m.version,
                                            implementation=m.availability().implementation)
    return out


def _pipeline(res: Resolved, job: Job, device: str, results_dir: Path, rec: RunRecord,
              world: World) -> None:
    from arflowbench.evaluation import evaluate_final, evaluate_points, final_point
    from arflowbench.sampling import generate, grid_labels, save_grid
    from arflowbench.train_stage import LOSS_LOG, run_train_stage

    art = run_artifacts(results_dir, res.run_id)
    art.mkdir(parents=True, exist_ok=True)
    # 1. train (or reuse the shared training)
    trained = run_train_stage(res, job, device, _warn, world)
    losses = trained.result.losses
    rec.train_stage = trained.stage
    rec.loss_curve = downsample(losses)
    # what actually ran, known once the tensors were on the device
    rec.plugins["attention"].implementation = trained.ema.attention_implementation
    metrics: dict[str, Any] = {
        "param_count": res.param_count,
        "train_loss_final": losses[-1],
        "train_loss_smoothed": smoothed(losses),
        "resumed_from_step": trained.result.resumed_from,
        **trained.info,
    }
    # 2. sample: the grid, grid_per_class images of every class, one row per class
    s = res.spec.sample
    labels = grid_labels(res.dataset.num_classes, s.grid_per_class)
    grid = generate(res.formulation, trained.ema, labels, s, res.dataset, device=device,
                    seed=s.seed, batch_size=-(-len(labels) // world.size), world=world)
    if world.is_main:
        save_grid(grid.images, s.grid_per_class, art / SAMPLES)
    train_rel = trained.dir.relative_to(results_dir)
    rec.artifacts = {"samples": f"{ARTIFACTS_DIR}/{res.run_id}/{SAMPLES}",
                     "loss_log": f"{train_rel}/{LOSS_LOG}"}
    metrics.update(nfe=grid.nfe, sampler=s.sampler, cfg_scale=s.cfg_scale,
                   sample_images_per_s=grid.images_per_s)
    # 3. evaluate: during training (snapshots), then the final weights
    curve = evaluate_points(res, trained, job.runtime, device, art, world)
    if res.spec.eval.num_samples:
        quality, speed = evaluate_final(res, trained.ema, job.runtime, device, world)
        metrics.update(quality, **speed)
        npz = speed.pop("samples_npz", None)  # rank 0: the ADM-style sample batch
        if npz:
            rec.artifacts["samples_npz"] = f"{ARTIFACTS_DIR}/{res.run_id}/{npz}"
        # the final weights close the curve when no eval.at point is at the end already
        if curve and curve[-1].step != res.spec.train.steps:
            curve.append(final_point(res, quality))
    rec.eval_curve = curve
    metrics["peak_memory_mb"] = process_peak_memory_mb(device)
    rec.metrics = metrics


def claimed_run(job: Job, world: World | None = None,
                device: str | None = None) -> RunRecord | None:
    """`run_job` under the cell's claim (rank 0's, for every rank); None (and a line saying why)
    when there is nothing to do: another live process holds the claim, or the run already has
    an ok row. Rank 0 decides and tells the other ranks."""
    world = world or World()
    results_dir = Path(job.runtime.results_dir)
    if not world.is_main:
        return run_job(job, world, device) if world.broadcast(None) else None

    def on_stale(holder: str) -> None:
        _warn(f"warning: cell {job.run_id} was claimed by {holder}, which died; taking it over")

    try:
        with claim(run_artifacts(results_dir, job.run_id) / CLAIM, wait=False, on_stale=on_stale):
            if job.run_id in finished_run_ids(results_dir / RUNS_FILE):  # finished meanwhile
                world.broadcast(False)
                _warn(f"cell {job.run_id} already has an ok row: nothing to do")
                return None
            world.broadcast(True)
            return run_job(job, world, device)
    except Busy as busy:
        world.broadcast(False)
        _warn(f"cell {job.run_id} is held by {busy.holder or 'another process'}: skipped")
        return None


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # a launcher (torchrun) killed by any signal takes this process with it
    allocator.tune()  # steps reuse their pages instead of faulting them in anew (allocator.py)
    argv = sys.argv[1:] if argv is None else argv
    job = Job.model_validate_json(Path(argv[0]).read_text())
    ui.configure(job.runtime.progress)  # bars deep inside metrics follow --no-progress too
    if job.runtime.threads:
        torch.set_num_threads(job.runtime.threads)
    world, device = World(), None
    try:
        if launched_world()[1] > 1:
            world, device = init_world(job.runtime.resolved_device(), job.runtime.dist_timeout_s)
    except Exception as err:  # noqa: BLE001 - no process group: no rank can write a row
        print(f"error: rank {os.environ.get('RANK', '?')} could not join the process group: "
              f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    try:
        rec = claimed_run(job, world, device)
        if rec is None:
            return EXIT_SKIPPED
    except ArflowbenchError as err:  # its own row could not be written (a full disk)
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        close_world(world)
    if rec.status == STATUS_OK:
        return 0
    print(f"error: {rec.error}", file=sys.stderr)
    return 1 if rec.traceback else 2


def exit_process(code: int) -> None:
    """Leave with `code`. Under a launcher, without the interpreter's teardown: gloo's worker
    threads can outlive `destroy_process_group` and abort the process while its static objects
    are destroyed (``terminate called without an active exception``, SIGABRT), turning a cell
    whose row is written into a failed launch. Everything this process owes is on disk by now
    (rows and checkpoints are written atomically); only the standard streams are flushed."""
    if launched_world()[1] > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
