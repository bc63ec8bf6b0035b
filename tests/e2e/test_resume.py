"""Reliability of training: a SIGKILLed run resumes to bit-identical weights; a NaN loss stops
with a clear message and keeps the last good checkpoint; checkpoints load with weights_only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.errors import NonFiniteLossError
from arflowbench.executors import write_job
from arflowbench.resolve import resolve
from arflowbench.results import Job, run_artifacts, train_artifacts
from arflowbench.trainer import load_checkpoint, train

SPEC = {
    "data": {"name": "digits"},
    "model": {"flavor": "debug", "patch_size": 2},
    # weight decay: the resumed optimizer state must carry its decay / no-decay groups
    "train": {"steps": 40, "batch_size": 16, "lr": 1e-3, "grad_clip": 1.0, "weight_decay": 0.02},
    "sample": {"sampler": "euler", "steps": 2, "grid_per_class": 1},
}


def make_job(results_dir: Path) -> tuple[Path, Path]:
    """The cell's job file, and the folder of its (shared) training stage."""
    spec = RunSpec.model_validate(SPEC)
    runtime = RuntimeOptions(results_dir=results_dir, checkpoint_every=4, progress=False)
    res = resolve(spec, runtime)
    job = Job(run_id=res.run_id, train_id=res.train_id, spec=spec, runtime=runtime)
    job_file = write_job(job, run_artifacts(results_dir, res.run_id))
    return job_file, train_artifacts(results_dir, res.train_id)


def cell_process(job_file: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "arflowbench.cell", str(job_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    # uninterrupted reference run
    job_a, art_a = make_job(tmp_path / "a")
    proc = cell_process(job_a)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    # the same run, killed with SIGKILL once a mid-run checkpoint exists, then resumed
    job_b, art_b = make_job(tmp_path / "b")
    proc = cell_process(job_b)
    deadline = time.time() + 240
    while checkpoint_step(art_b / "checkpoint.pt") < 12:
        assert proc.poll() is None, "run finished before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = checkpoint_step(art_b / "checkpoint.pt")
    assert 12 <= killed_at < 40
    proc = cell_process(job_b)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    a = torch.load(art_a / "checkpoint.pt", weights_only=True)
    b = torch.load(art_b / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 40
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["losses"] == b["losses"]
    assert [g["weight_decay"] for g in b["optimizer"]["param_groups"]] == [0.0, 0.02]
    row = json.loads((tmp_path / "b" / "runs.jsonl").read_text().splitlines()[-1])
    assert row["status"] == "ok" and row["metrics"]["resumed_from_step"] == killed_at
    assert row["train_stage"] == "resumed"


class NaNAfter:
    """Wraps a formulation so that its loss becomes NaN from a given step on."""

    def __init__(self, inner, bad_call: int):
        self.inner, self.bad_call, self.calls = inner, bad_call, 0

    def make_batch(self, *a):
        return self.inner.make_batch(*a)

    def training_loss(self, model, x, y, g):
        self.calls += 1
        out = self.inner.training_loss(model, x, y, g)
        if self.calls >= self.bad_call:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    spec = RunSpec.model_validate(SPEC)
    res = resolve(spec, RuntimeOptions())
    model = res.build_model()
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(NonFiniteLossError) as info:
        train(model, NaNAfter(res.formulation, 7), res.dataset.load("train"), spec.train,
              train_id=res.train_id, checkpoint_path=ckpt, checkpoint_every=4)
    msg = str(info.value)
    assert "non-finite loss" in msg and "step 7" in msg and "step 4" in msg
    kept = load_checkpoint(ckpt, res.train_id)
    assert kept["step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["model"].values())
