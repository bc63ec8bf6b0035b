"""The shared training stage and evaluation during training, end to end through real cell
processes: a cfg x sampler-steps sweep trains once and survives a kill of the whole matrix; a
rerun reuses finished evaluation points."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from arflowbench.cell import run_job
from arflowbench.config import Matrix, RuntimeOptions
from arflowbench.evaluation import POINTS_FILE
from arflowbench.results import RUNS_FILE, load, run_artifacts, train_artifacts
from arflowbench.runner import CACHED, SHARED, TO_TRAIN, TRAINED, make_job, plan, run_matrix

SWEEP = """
name = "sweep"
[base]
data.name = "digits"
model = { flavor = "debug", patch_size = 2 }
attention.name = "softmax"
formulation.name = "sit"
train = { steps = 12, batch_size = 16, lr = 1e-3 }
sample = { sampler = "euler", grid_per_class = 1 }
[axes]
"sample.cfg_scale" = [1.0, 2.0]
"sample.steps" = [2, 3]
"""


def _rows(results: Path):
    loaded = load(results / RUNS_FILE)
    assert not loaded.problems
    return loaded.runs


def test_cfg_by_steps_sweep_trains_once_and_a_killed_matrix_loses_nothing(tmp_path: Path):
    matrix_file, results = tmp_path / "sweep.toml", tmp_path / "results"
    matrix_file.write_text(SWEEP)
    rt = RuntimeOptions(results_dir=results, progress=False, threads=1)
    planned = plan(Matrix.from_file(matrix_file), rt)
    assert len({p.resolved.train_id for p in planned}) == 1
    assert [p.state for p in planned] == [TO_TRAIN] + [SHARED] * 3
    # the whole matrix (runner and cell), killed while its second cell runs
    proc = subprocess.Popen([sys.executable, "-m", "arflowbench.cli", "run", "--matrix",
                             str(matrix_file), "--results-dir", str(results), "--no-progress",
                             "--threads", "1"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (results / RUNS_FILE).exists() or not _rows(results):
        assert proc.poll() is None and time.time() < deadline, "first cell never finished"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    first = _rows(results)
    assert len(first) in (1, 2) and first[0].train_stage == "trained"
    states = [p.state for p in plan(Matrix.from_file(matrix_file), rt)]
    assert states[0] == CACHED and set(states[len(first):]) == {TRAINED}
    # the rerun finishes the matrix without training again
    counts = run_matrix(Matrix.from_file(matrix_file), rt, echo=lambda _: None,
                        warn=lambda _: None)
    rows = _rows(results)
    assert counts["failed"] == 0 and len(rows) == 4 and len({r.run_id for r in rows}) == 4
    assert [r.train_stage for r in rows].count("trained") == 1  # trainings counted: one
    assert {r.train_stage for r in rows[1:]} == {"shared"}
    assert len({r.train_id for r in rows}) == 1
    assert {(r.setting("sample.cfg_scale"), r.setting("sample.steps")) for r in rows} == {
        (c, s) for c in (1.0, 2.0) for s in (2, 3)}
    assert {r.metrics["nfe"] for r in rows} == {2, 3}
    assert len(list((results / "artifacts" / "train").iterdir())) == 1


def test_eval_points_are_recorded_and_not_redone_on_rerun(tmp_path: Path):
    m = Matrix.from_file(_write(tmp_path / "at.toml", SWEEP.replace(
        '[axes]\n"sample.cfg_scale" = [1.0, 2.0]\n"sample.steps" = [2, 3]\n',
        'eval = { num_samples = 20, at = [64, 192], at_num_samples = 20, batch_size = 20, '
        'metrics = [{ name = "class-accuracy" }] }\n')))
    rt = RuntimeOptions(results_dir=tmp_path / "results", progress=False)
    (p,) = plan(m, rt)
    assert p.snapshot_steps == (4, 12)
    rec = run_job(make_job(p, rt))
    assert rec.status == "ok", rec.error
    assert [(e.images_seen, e.step) for e in rec.eval_curve] == [(64, 4), (192, 12)]
    assert all(0 <= e.metrics["class_accuracy"] <= 1 for e in rec.eval_curve)
    snaps = sorted(q.name for q in train_artifacts(rt.results_dir, p.resolved.train_id).iterdir()
                   if q.name.startswith("ema_step"))
    assert snaps == ["ema_step00000004.pt", "ema_step00000012.pt"]
    points = run_artifacts(rt.results_dir, rec.run_id) / POINTS_FILE
    before = points.read_text()
    again = run_job(make_job(p, rt))  # e.g. a rerun after a crash in the final evaluation
    assert again.status == "ok" and points.read_text() == before  # nothing sampled twice
    assert again.eval_curve == rec.eval_curve and again.train_stage == "shared"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


METRIC_SOURCE = '''
from typing import ClassVar
from arflowbench.metrics.base import Display, Metric


class Brightness(Metric):
    """A throwaway contributed metric: the mean pixel value of the samples."""

    name = "brightness"
    version = 7
    display: ClassVar[dict] = {"brightness": Display("mean brightness", higher_is_better=True)}

    def compute(self, samples, labels, dataset, *, cache_dir=None, device="cpu"):
        return {"brightness": float(samples.float().mean() / 255)}
'''


def test_contributed_metric_from_an_entry_point_runs_and_is_reported(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "abt_brightness.py").write_text(METRIC_SOURCE)
    info = site / "abt_brightness-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: abt-brightness\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[arflowbench.metric]\nbrightness = abt_brightness:Brightness\n")
    matrix = _write(tmp_path / "m.toml", SWEEP.split("[axes]")[0] + (
        'eval = { num_samples = 10, at = [96], at_num_samples = 10, batch_size = 10, '
        'metrics = [{ name = "brightness" }] }\n'))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results = tmp_path / "results"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "arflowbench.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    out = cli("run", "--matrix", str(matrix), "--results-dir", str(results), "--no-progress")
    assert out.returncode == 0, out.stderr
    (rec,) = _rows(results)
    assert 0 < rec.metrics["brightness"] < 1 and rec.eval_curve[0].metrics["brightness"] > 0
    assert rec.plugins["metric:brightness"].version == 7
    out = cli("report", "--results-dir", str(results), "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "mean brightness" in md and "quality vs images seen" in md
    assert (tmp_path / "report" / "plots" / "sweep_quality_vs_images.png").is_file()
