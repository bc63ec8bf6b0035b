"""One matrix cell in its own process: a pipeline of stages, then one record.

    resolve -> train (shared per train_id, `train_stage.py`) -> sample (grid, `sampling.py`)
            -> evaluate (eval.at points and the final evaluation, `evaluation.py`) -> record

Run as ``python -m arflowbench.cell JOB.json`` (a `Job`), or under torch's launcher
(``torchrun --nproc-per-node N -m arflowbench.cell JOB.json``). The record (`RunRecord`) is
appended to runs.jsonl whatever happens; exit codes: 0 ok; 2 a user error (bad config, missing
data, NaN loss), recorded as a failed row; 1 an unexpected crash, recorded as a failed row with
the traceback's tail; `EXIT_SKIPPED` nothing done: the cell is claimed by another live process,
or already has an ok row. A process killed by a signal writes nothing: the runner records that.

One cell, one process: the cell holds ``artifacts/<run_id>/.claim`` (`locks.claim`) while it
runs, so a second runner (or a rerun beside an orphan) skips it, naming the holder; a claim left
by a dead process is taken over with a warning. Under a launcher only rank 0 claims and writes.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from arflowbench import ui
from arflowbench.errors import ArflowbenchError, PluginUnavailableError
from arflowbench.launch import die_with_parent, world
from arflowbench.locks import Busy, claim
from arflowbench.machine import environment_stamp, process_peak_memory_mb
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


def run_job(job: Job, rank: int = 0, world_size: int = 1) -> RunRecord:
    """Run one cell; returns its record (appended to runs.jsonl by rank 0 only)."""
    device = job.runtime.resolved_device()
    results_dir = Path(job.runtime.results_dir)
    rec = RunRecord(run_id=job.run_id, train_id=job.train_id, status=STATUS_FAILED,
                    matrix=job.runtime.matrix, cell=job.cell,
                    spec=job.spec.model_dump(mode="json"), started=now_iso(),
                    env=environment_stamp(device))
    t_start = time.perf_counter()
    try:
        if world_size > 1:  # each rank would train its own full copy: refuse, loudly
            raise ArflowbenchError(
                f"distributed training is not implemented yet: this cell was launched with "
                f"WORLD_SIZE={world_size}, but the trainer has no DDP; run it as one process")
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
        _pipeline(res, job, device, results_dir, rec)
        rec.status = STATUS_OK
    except ArflowbenchError as err:
        rec.error = f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - any crash fails this one cell, recorded
        rec.error = f"{type(err).__name__}: {err}"
        rec.traceback = traceback.format_exc()[-4000:]
    rec.finished = now_iso()
    rec.duration_s = round(time.perf_counter() - t_start, 3)
    if rank == 0:
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


def _pipeline(res: Resolved, job: Job, device: str, results_dir: Path, rec: RunRecord) -> None:
    from arflowbench.evaluation import evaluate_final, evaluate_points, final_point
    from arflowbench.sampling import generate, grid_labels, save_grid
    from arflowbench.train_stage import LOSS_LOG, run_train_stage

    art = run_artifacts(results_dir, res.run_id)
    art.mkdir(parents=True, exist_ok=True)
    # 1. train (or reuse the shared training)
    trained = run_train_stage(res, job, device, _warn)
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
                    seed=s.seed, batch_size=len(labels))
    save_grid(grid.images, s.grid_per_class, art / SAMPLES)
    train_rel = trained.dir.relative_to(results_dir)
    rec.artifacts = {"samples": f"{ARTIFACTS_DIR}/{res.run_id}/{SAMPLES}",
                     "loss_log": f"{train_rel}/{LOSS_LOG}"}
    metrics.update(nfe=grid.nfe, sampler=s.sampler, cfg_scale=s.cfg_scale,
                   sample_images_per_s=grid.images_per_s)
    # 3. evaluate: during training (snapshots), then the final weights
    curve = evaluate_points(res, trained, job.runtime, device, art)
    if res.spec.eval.num_samples:
        quality, speed = evaluate_final(res, trained.ema, job.runtime, device)
        metrics.update(quality, **speed)
        # the final weights close the curve when no eval.at point is at the end already
        if curve and curve[-1].step != res.spec.train.steps:
            curve.append(final_point(res, quality))
    rec.eval_curve = curve
    metrics["peak_memory_mb"] = process_peak_memory_mb(device)
    rec.metrics = metrics


def claimed_run(job: Job) -> RunRecord | None:
    """`run_job` under the cell's claim; None (and a line saying why) when there is nothing to
    do: another live process holds the claim, or the run already has an ok row."""
    results_dir = Path(job.runtime.results_dir)

    def on_stale(holder: str) -> None:
        _warn(f"warning: cell {job.run_id} was claimed by {holder}, which died; taking it over")

    try:
        with claim(run_artifacts(results_dir, job.run_id) / CLAIM, wait=False, on_stale=on_stale):
            if job.run_id in finished_run_ids(results_dir / RUNS_FILE):  # finished meanwhile
                _warn(f"cell {job.run_id} already has an ok row: nothing to do")
                return None
            return run_job(job)
    except Busy as busy:
        _warn(f"cell {job.run_id} is held by {busy.holder or 'another process'}: skipped")
        return None


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # a launcher (torchrun) killed by any signal takes this process with it
    argv = sys.argv[1:] if argv is None else argv
    job = Job.model_validate_json(Path(argv[0]).read_text())
    ui.configure(job.runtime.progress)  # bars deep inside metrics follow --no-progress too
    if job.runtime.threads:
        torch.set_num_threads(job.runtime.threads)
    rank, world_size = world()
    try:
        if world_size > 1:  # rank 0 records the refusal; no rank claims what it will not run
            rec = run_job(job, rank, world_size)
        else:
            rec = claimed_run(job)
            if rec is None:
                return EXIT_SKIPPED
    except ArflowbenchError as err:  # its own row could not be written (a full disk)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rec.status == STATUS_OK:
        return 0
    print(f"error: {rec.error}", file=sys.stderr)
    return 1 if rec.traceback else 2


if __name__ == "__main__":
    sys.exit(main())
