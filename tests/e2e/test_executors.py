"""The Slurm path (submitit) runs cells through the same runner, caching included, several at
once (bounded by max_parallel), and requeues a preempted job from its checkpoint; tested with
submitit's local cluster, which runs each job in separate processes."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from arflowbench.config import Matrix, RuntimeOptions
from arflowbench.executors import LocalExecutor
from arflowbench.results import RUNS_FILE, load, run_artifacts, train_artifacts
from arflowbench.runner import make_job, plan, run_matrix
from arflowbench.slurm import SubmititExecutor

ROOT = Path(__file__).resolve().parents[2]


def test_submitit_local_executor_runs_and_caches_cells(tmp_path):
    pytest.importorskip("submitit")
    text = (ROOT / "registry" / "matrices" / "debug.toml").read_text()
    matrix_file = tmp_path / "one.toml"
    matrix_file.write_text(text.replace('"sample.cfg_scale" = [1.0, 2.0]', '"sample.cfg_scale" = [1.0]'))
    matrix = Matrix.from_file(matrix_file)
    runtime = RuntimeOptions(results_dir=tmp_path / "r", progress=False)
    executor = SubmititExecutor(tmp_path / "r" / "submitit", cluster="local")
    lines: list[str] = []
    counts = run_matrix(matrix, runtime, executor, echo=lines.append)
    assert counts == {"ok": 1, "failed": 0, "cached": 0, "skipped": 0}, lines
    rows = [json.loads(x) for x in (tmp_path / "r" / "runs.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"]
    again = run_matrix(matrix, runtime, executor, echo=lines.append)
    assert again["cached"] == 1 and again["ok"] == 0


TWO = """
name = "two"
[base]
data.name = "digits"
model = { flavor = "debug", patch_size = 2 }
formulation.name = "sit"
train = { steps = 30, batch_size = 16, lr = 1e-3 }
sample = { sampler = "euler", steps = 2, grid_per_class = 1 }
[axes]
"train.seed" = [0, 1]
"""


def _two_cells(tmp_path: Path, max_parallel: int | None) -> tuple[list, float]:
    pytest.importorskip("submitit")
    path = tmp_path / "two.toml"
    path.write_text(TWO)
    runtime = RuntimeOptions(results_dir=tmp_path / "r", progress=False, threads=1)
    executor = SubmititExecutor(tmp_path / "r" / "submitit", cluster="local",
                                max_parallel=max_parallel)
    lines: list[str] = []
    t0 = time.perf_counter()
    counts = run_matrix(Matrix.from_file(path), runtime, executor, echo=lines.append, poll_s=0.1)
    wall = time.perf_counter() - t0
    assert counts == {"ok": 2, "failed": 0, "cached": 0, "skipped": 0}, lines
    rows = load(tmp_path / "r" / RUNS_FILE).runs
    assert len(rows) == 2 and {r.status for r in rows} == {"ok"}
    return rows, wall


def test_submitit_runs_pending_cells_at_the_same_time(tmp_path):
    rows, wall = _two_cells(tmp_path, max_parallel=None)
    started = [datetime.fromisoformat(r.started) for r in rows]
    finished = [datetime.fromisoformat(r.finished) for r in rows]
    assert max(started) < min(finished), "the two cells did not overlap"
    print(f"2 cells, local submitit, concurrent: {wall:.1f} s")


def test_submitit_max_parallel_one_runs_cells_in_order(tmp_path):
    rows, wall = _two_cells(tmp_path, max_parallel=1)
    assert [r.setting("train.seed") for r in rows] == [0, 1]
    assert datetime.fromisoformat(rows[0].finished) <= datetime.fromisoformat(rows[1].started)
    print(f"2 cells, local submitit, --max-parallel 1: {wall:.1f} s")


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def test_a_preempted_job_requeues_and_ends_with_the_uninterrupted_weights(tmp_path):
    """The time-limit / preemption signal (USR2) is sent to the job's task exactly as submitit's
    local controller sends it `signal_delay_s` before the limit: deterministic, where a real
    limit would race the machine's load. (`LocalJob._interrupt` cannot be used: it signals the
    controller, which USR2 kills, leaving the task to finish unsupervised.)"""
    pytest.importorskip("submitit")
    matrix_file = tmp_path / "one.toml"
    matrix_file.write_text(TWO.replace("steps = 30", "steps = 40").replace("[0, 1]", "[0]"))
    jobs = {}
    for name in ("a", "b"):
        rt = RuntimeOptions(results_dir=tmp_path / name, progress=False, threads=1,
                            checkpoint_every=4)
        (p,) = plan(Matrix.from_file(matrix_file), rt)
        jobs[name] = (make_job(p, rt), train_artifacts(rt.results_dir, p.resolved.train_id))
    job, art_a = jobs["a"]
    assert LocalExecutor().run(job, run_artifacts(tmp_path / "a", job.run_id)).returncode == 0
    job, art_b = jobs["b"]
    cell = SubmititExecutor(tmp_path / "b" / "submitit", cluster="local").submit(
        job, run_artifacts(tmp_path / "b", job.run_id))
    deadline = time.time() + 180
    while _checkpoint_step(art_b / "checkpoint.pt") < 8:
        assert not cell.done() and time.time() < deadline, "no mid-training checkpoint"
        time.sleep(0.05)
    (task,) = Path(f"/proc/{cell.job.job_id}/task/{cell.job.job_id}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)
    while not cell.done():
        assert time.time() < deadline + 120, "the requeued job never finished"
        time.sleep(0.2)
    outcome = cell.outcome()
    assert outcome.returncode == 0, outcome.log_tail
    (row,) = load(tmp_path / "b" / RUNS_FILE).runs
    assert row.status == "ok" and row.train_stage == "resumed"
    assert 8 <= row.metrics["resumed_from_step"] < 40
    a = torch.load(art_a / "checkpoint.pt", weights_only=True)
    b = torch.load(art_b / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 40 and a["losses"] == b["losses"]
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after requeue"
