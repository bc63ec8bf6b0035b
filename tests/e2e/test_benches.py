"""`bench training` and `bench sampling` at toy sizes: the rows they write, and the ratios
computed from their own timings."""

from __future__ import annotations

import pytest
import torch

from arflowbench.benchmarks.sampling import RATIO_TARGET, run_sampling_bench
from arflowbench.benchmarks.training import HYBRID_SPEED_TARGET, run_training_bench
from arflowbench.machine import torch_threads
from arflowbench.results import BENCH_FILE, load


def _by(rows, measure):
    return [r for r in rows if r.get("measure") == measure]


@pytest.fixture
def three_threads():
    """The caller's torch setting (3 threads), which a bench run at 1 thread must give back."""
    with torch_threads(3):
        yield
        assert torch.get_num_threads() == 3, "the bench left torch's thread count changed"


def test_training_bench_writes_a_ratio_row_from_its_interleaved_timings(tmp_path, three_threads):
    rows = run_training_bench(("debug",), dataset="digits", batch=10, repeats=2, warmup=0,
                              threads=1, results_dir=tmp_path, say=lambda *_: None)
    steps = {r["variant"]: r for r in _by(rows, "step")}
    assert set(steps) == {"sit-softmax", "arflow-hybrid"}
    assert all(r["threads"] == 1 and r["train_images_per_s"] > 0 for r in steps.values())
    (ratio,) = _by(rows, "training_ratio")
    # images/s ratio = inverse ratio of the median step times
    assert ratio["ratio_median"] == pytest.approx(
        steps["sit-softmax"]["median_ms"] / steps["arflow-hybrid"]["median_ms"])
    assert ratio["ratio_median"] == pytest.approx(
        steps["arflow-hybrid"]["train_images_per_s"] / steps["sit-softmax"]["train_images_per_s"])
    lo, hi = ratio["ratio_p20_p80"]
    assert lo <= ratio["ratio_median"] <= hi
    assert ratio["target"] == HYBRID_SPEED_TARGET
    assert ratio["within_target"] == (ratio["ratio_median"] >= HYBRID_SPEED_TARGET)
    stored = load(tmp_path / BENCH_FILE)
    assert [r.values.get("measure") for r in stored.bench] == ["step", "step", "training_ratio"]


def test_sampling_bench_ratio_and_state_sizes(tmp_path, three_threads):
    rows = run_sampling_bench(tmp_path, steps=3, batch=2, flavor="debug", positions=(1, 3),
                              repeats=1, step_repeats=1, warmup=0, threads=1)
    whole = {r["variant"]: r for r in _by(rows, "sampling")}
    (ratio,) = _by(rows, "sampling_ratio")
    assert ratio["ratio_median"] == pytest.approx(
        whole["arflow-hybrid"]["median_ms"] / whole["sit-softmax"]["median_ms"])
    assert ratio["target"] == RATIO_TARGET and ratio["threads"] == 1
    assert all(r["nfe"] == 3 for r in whole.values())
    state = {(r["variant"], r["position"]): r["state_bytes"] for r in _by(rows, "step")}
    # hybrid carries a constant state; softmax's KV cache grows with every step it holds
    assert state[("arflow-hybrid", 1)] == state[("arflow-hybrid", 3)] > 0
    assert state[("arflow-softmax", 3)] == 3 * state[("arflow-softmax", 1)]
    assert state[("sit-softmax", 1)] is None
    flops = {(r["variant"], r["position"]): r["flops"] for r in _by(rows, "step")}
    # hybrid's step and SiT's forward cost the same at every position; softmax's grows with its
    # cache; the ratio row's FLOPs ratio is hybrid's step over SiT's (hybrid does more: its gate
    # projection and state matmuls)
    assert flops[("arflow-hybrid", 1)] == flops[("arflow-hybrid", 3)]
    assert flops[("sit-softmax", 1)] == flops[("sit-softmax", 3)] > 0
    assert flops[("arflow-softmax", 3)] > flops[("arflow-softmax", 1)]
    assert ratio["flops_ratio"] == pytest.approx(
        flops[("arflow-hybrid", 1)] / flops[("sit-softmax", 1)])
    assert ratio["flops_ratio"] > 1
