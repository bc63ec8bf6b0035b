"""The Slurm path (submitit) runs a cell through the same runner, caching included; tested with
submitit's local executor, which runs the submitted function in a separate process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arflowbench.config import Matrix, RuntimeOptions
from arflowbench.slurm import SubmititExecutor
from arflowbench.runner import run_matrix

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
