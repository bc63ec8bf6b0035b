"""The results contract: records round-trip, schema-1 rows load, bad rows are skipped with a
warning, ids and artifact paths from rows are treated as untrusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.results import (
    SCHEMA_VERSION,
    BenchRecord,
    EvalPoint,
    Job,
    PluginRef,
    RunRecord,
    append,
    append_row,
    load,
    parse_record,
)

ROOT = Path(__file__).resolve().parents[2]


def _record(**kw) -> RunRecord:
    base = dict(run_id="0123456789ab", train_id="ba9876543210", status="ok", matrix="m",
                cell={"sample.cfg_scale": 1.5}, spec={"sample": {"cfg_scale": 1.5}},
                plugins={"attention": PluginRef(name="hybrid", version=1, implementation="x")},
                metrics={"fid": 3.5}, loss_curve=[[1, 0.9], [2, 0.8]],
                eval_curve=[EvalPoint(images_seen=64, step=2, num_samples=10,
                                      metrics={"fid": 9.0})],
                artifacts={"samples": "artifacts/0123456789ab/samples.png"})
    return RunRecord(**{**base, **kw})


def test_run_record_round_trips_through_the_store(tmp_path: Path) -> None:
    rec = _record()
    append(tmp_path / "runs.jsonl", rec)
    raw = json.loads((tmp_path / "runs.jsonl").read_text())
    assert raw["schema"] == SCHEMA_VERSION and raw["kind"] == "run"
    loaded = load(tmp_path / "runs.jsonl")
    assert loaded.runs == [rec] and not loaded.problems
    assert loaded.runs[0].setting("sample.cfg_scale") == 1.5
    assert loaded.runs[0].setting("sample.nothing.here") is None


def test_bench_record_flattens_values(tmp_path: Path) -> None:
    b = BenchRecord(bench="attention", env={"torch": "x"}, values={"S": 2, "median_ms": 1.0})
    append(tmp_path / "bench.jsonl", b)
    (got,) = load(tmp_path / "bench.jsonl").bench
    assert got == b and got.flat()["S"] == 2 and got.flat()["bench"] == "attention"


def test_job_carries_typed_spec_and_runtime() -> None:
    job = Job(run_id="abc123", train_id="def456", spec=RunSpec(), runtime=RuntimeOptions())
    again = Job.model_validate_json(job.model_dump_json())
    assert again == job and isinstance(again.spec, RunSpec)


@pytest.mark.parametrize("matrix", ["quickstart", "throughput"])
def test_committed_schema_1_rows_still_load(matrix: str) -> None:
    loaded = load(ROOT / "results" / matrix / "runs.jsonl")
    assert loaded.runs and not loaded.problems
    for r in loaded.runs:
        assert r.schema_ == 1 and r.train_id is None and r.loss_curve
        assert r.plugins["attention"].name == r.setting("attention.name")


def test_committed_schema_1_bench_rows_still_load() -> None:
    loaded = load(ROOT / "results" / "bench" / "bench.jsonl")
    assert loaded.bench and not loaded.problems
    kinds = {b.bench for b in loaded.bench}
    assert {"attention", "sampling", "metrics-sanity"} <= kinds
    att = next(b for b in loaded.bench if b.bench == "attention")
    assert "median_ms" in att.values and "env" not in att.values and att.env


@pytest.mark.parametrize("row, why", [
    ({"kind": "run", "run_id": "../../etc", "status": "ok"}, "run_id"),
    ({"kind": "run", "run_id": "abc", "status": "done"}, "status"),
    ({"kind": "run", "status": "ok"}, "run_id"),
    ({"kind": "table", "run_id": "abc"}, "unknown row kind"),
    ({"schema": 2, "kind": "run", "run_id": "abc", "status": "ok", "surprise": 1}, "surprise"),
])
def test_bad_rows_are_skipped_with_a_warning(tmp_path: Path, row: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_record(row)
    path = tmp_path / "runs.jsonl"
    append_row(path, row)
    append(path, _record())
    loaded = load(path)
    assert len(loaded.runs) == 1 and len(loaded.problems) == 1 and why in loaded.problems[0]


def test_artifact_paths_must_stay_inside_the_results_dir(tmp_path: Path) -> None:
    inside = _record()
    assert inside.artifact("samples", tmp_path) == tmp_path.resolve() / inside.artifacts["samples"]
    for evil in ("../../etc/passwd", "/etc/passwd", "artifacts/../../x"):
        assert _record(artifacts={"samples": evil}).artifact("samples", tmp_path) is None
    assert inside.artifact("missing", tmp_path) is None
