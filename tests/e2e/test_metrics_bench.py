"""The metrics sanity benchmark, run small (digits, classifier features)."""

from __future__ import annotations

from arflowbench.benchmarks.metrics import run_metrics_sanity
from arflowbench.results import BENCH_FILE, SCHEMA_VERSION, load


def test_metrics_sanity_bench_writes_rows(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "arflowbench-metrics-cache"
    rows = run_metrics_sanity("digits", ["classifier"], (0.1, 0.3), tmp_path, num=120,
                              cache_dir=cache, say=lambda _: None)
    loaded = load(tmp_path / BENCH_FILE)
    assert not loaded.problems and [b.flat() for b in loaded.bench] == rows
    checks = [r["check"] for r in rows]
    assert checks == ["train-vs-test", "noise", "noise", "noise-monotonic", "throughput"]
    assert all(b.bench == "metrics-sanity" and b.schema_ == SCHEMA_VERSION and b.env
               for b in loaded.bench)
    assert rows[0]["reference_num"] == rows[0]["eval_num_samples"] == 120
    assert rows[3]["monotonic"] and rows[3]["fids"] == [rows[1]["fid"], rows[2]["fid"]]
    assert rows[4]["images_per_s"] > 0
