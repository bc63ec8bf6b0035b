"""The attention benchmark and its timing helpers: a tiny real sweep, skips, crossover."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arflowbench.benchmarks.attention import MODES, crossover, markdown_table, run_attention_bench
from arflowbench.benchmarks.timing import (
    measure_peak_memory,
    summarize,
    tensor_bytes,
    time_interleaved,
)
from arflowbench.errors import ConfigError
from arflowbench.results import BENCH_FILE, SCHEMA_VERSION, load

ROW_KEYS = {"bench", "timestamp", "backend", "implementation", "mode", "S", "N",
            "dim", "heads", "batch", "dtype", "device", "repeats", "warmup", "median_ms", "p20_ms",
            "p80_ms", "min_ms", "peak_memory_mb", "state_bytes", "status", "reason",
            "memory_method"}


def test_tiny_sweep_writes_well_formed_rows(tmp_path, capsys):
    backends = ["softmax", "linear", "mamba", "xformers"]
    rows = run_attention_bench(backends, S_values=(1, 2), N_values=(4,), dim=16, heads=2,
                               batch=1, repeats=2, warmup=0, results_dir=tmp_path,
                               progress=False, max_call_ms=1e9)
    stored = load(tmp_path / BENCH_FILE)
    assert not stored.problems and [b.flat() for b in stored.bench] == rows
    assert all(b.schema_ == SCHEMA_VERSION and b.env["torch"] for b in stored.bench)
    runnable = [b for b in backends if b != "xformers"]  # a CPU sweep, on any machine
    assert {(r["backend"], r["S"], r["mode"]) for r in rows} == {
        (b, s, m) for b in runnable for s in (1, 2) for m in MODES}
    assert "skip backend 'xformers'" in capsys.readouterr().out
    for r in rows:
        assert set(r) == ROW_KEYS
        assert (r["bench"], r["status"]) == ("attention", "ok")
        assert 0 < r["min_ms"] <= r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["repeats"] == 2 and r["dtype"] == "float32"
        assert isinstance(r["implementation"], str) and r["implementation"]
        assert r["peak_memory_mb"] is not None and r["memory_method"]
        assert (r["state_bytes"] is not None) == (r["mode"] == "step")
    # the KV cache grows with S; the linear and Mamba states do not
    step = {(r["backend"], r["S"]): r["state_bytes"] for r in rows if r["mode"] == "step"}
    assert step[("softmax", 2)] == 2 * step[("softmax", 1)]
    assert step[("linear", 2)] == step[("linear", 1)] and step[("mamba", 2)] == step[("mamba", 1)]


def test_predicted_slow_configurations_are_skipped_with_reason(tmp_path):
    rows = run_attention_bench(["linear"], S_values=(1, 2, 4), N_values=(4,), modes=("forward",),
                               dim=16, heads=2, batch=1, repeats=1, warmup=0,
                               results_dir=tmp_path, progress=False, max_call_ms=1e-6)
    status = {r["S"]: r["status"] for r in rows}
    assert status == {1: "ok", 2: "skipped", 4: "skipped"}
    assert all("max_call_ms" in r["reason"] for r in rows if r["status"] == "skipped")
    with pytest.raises(ConfigError, match="mode 'backward'"):
        run_attention_bench(["linear"], modes=("backward",), results_dir=tmp_path)


def _rows(medians: dict[str, list[float]], s_values=(1, 2, 4, 8, 16), n=64, mode="forward"):
    return [{"kind": "bench", "bench": "attention", "mode": mode, "N": n, "S": s,
             "backend": b, "median_ms": ms, "status": "ok"}
            for b, values in medians.items() for s, ms in zip(s_values, values, strict=True)]


def test_crossover_on_synthetic_rows():
    soft = [1.0, 2.0, 4.0, 8.0, 16.0]
    rows = _rows({"softmax": soft, "lin": [3.0, 3.0, 3.5, 5.0, 7.0]})
    assert crossover(rows, "lin") == 4
    # faster at S=2 but slower again at S=4: the crossover is where it stays faster
    rows = _rows({"softmax": soft, "lin": [3.0, 1.0, 5.0, 7.0, 9.0]})
    assert crossover(rows, "lin") == 8
    assert crossover(_rows({"softmax": soft, "lin": [0.5] * 5}), "lin") == 1
    assert crossover(_rows({"softmax": soft, "lin": [2.0, 3.0, 5.0, 9.0, 17.0]}), "lin") is None
    # skipped rows and other modes are ignored; only S measured for both count
    rows = _rows({"softmax": soft[:3], "lin": [9.0, 9.0, 1.0]}, s_values=(1, 2, 4))
    rows += [{**rows[0], "S": 8, "median_ms": None, "status": "skipped"}]
    rows += _rows({"softmax": [1.0], "lin": [0.1]}, s_values=(1,), mode="step")
    assert crossover(rows, "lin") == 4 and crossover(rows, "lin", mode="step") == 1
    two_n = _rows({"softmax": soft, "lin": [0.5] * 5}) + _rows(
        {"softmax": soft, "lin": [99.0] * 5}, n=16)
    with pytest.raises(ValueError, match="several N"):
        crossover(two_n, "lin")
    assert crossover(two_n, "lin", N=64) == 1 and crossover(two_n, "lin", N=16) is None
    table = markdown_table(two_n, "forward", N=64)
    assert table.splitlines()[0] == "| S | lin | softmax |" and "| 16 | 0.50 | 16.00 |" in table
    both = markdown_table(two_n, "forward")  # one titled table per N
    assert "forward, N=16" in both and "forward, N=64" in both and table in both


def test_summarize_percentiles():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    t = summarize(samples)
    p20, p50, p80 = np.percentile(samples, [20, 50, 80])
    assert (t.median_ms, t.p20_ms, t.p80_ms, t.min_ms) == (p50, p20, p80, min(samples))
    assert t.repeats == 5 and "samples_ms" not in t.as_dict()


def test_time_interleaved_is_round_robin_with_rotation():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    timings = time_interleaved(fns, warmup=1, repeats=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(t.repeats == 3 for t in timings.values())


def test_tensor_bytes_and_peak_memory():
    a = torch.zeros(10, 10)
    state = {"kv": (a, a[:5]), "z": [torch.zeros(3, dtype=torch.float64)], "n": None}
    assert tensor_bytes(state) == a.numel() * 4 + 3 * 8  # the view shares a's storage
    size_mb = 64
    peak = measure_peak_memory(lambda: torch.ones(size_mb * 2**18).add_(1))  # 64 MiB float32
    assert peak.method and peak.mb is not None
    if peak.method.startswith("peak RSS"):
        assert size_mb * 0.9 <= peak.mb <= size_mb * 3


def test_a_backend_failing_with_any_error_is_skipped_not_the_sweep(tmp_path, monkeypatch):
    import arflowbench.benchmarks.attention as bench

    real, linear = bench._make_call, bench.ATTENTION.load("linear")

    def make_call(module, mode, *args):
        if isinstance(module, linear):
            raise NotImplementedError("no CPU operator for this backend")  # as xformers on CPU
        return real(module, mode, *args)

    monkeypatch.setattr(bench, "_make_call", make_call)
    rows = run_attention_bench(["softmax", "linear"], S_values=(1,), N_values=(4,), dim=16,
                               heads=2, batch=1, repeats=1, warmup=0, results_dir=tmp_path,
                               progress=False, max_call_ms=1e9, modes=("forward",))
    by = {r["backend"]: r for r in rows}
    assert by["softmax"]["status"] == "ok"
    assert by["linear"]["status"] == "skipped" and "no CPU operator" in by["linear"]["reason"]
