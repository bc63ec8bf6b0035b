"""Progress on the long steps: feature extraction (samples and reference statistics) and the
sampling / training benchmarks draw a bar when asked or on a terminal, and nothing otherwise."""

from __future__ import annotations

import pytest

from arflowbench import ui
from arflowbench.metrics.evaluate import evaluate_samples

from .test_cli import cli_inprocess

FAST = {"extractor": "classifier", "kid_subsets": 5}


@pytest.fixture
def no_terminal(monkeypatch):
    """stdout is a pipe; the process-wide switch is restored afterwards."""
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    ui.configure(None)
    yield
    ui.configure(None)


def test_feature_extraction_bars_count_pulled_images(digits, tmp_path, capsys, no_terminal):
    images = digits.load("test").images[:120]
    n_ref = len(digits.load("test").images)
    evaluate_samples(images, None, digits, cache_dir=tmp_path, **FAST)  # classifier trained, cached
    assert "features" not in capsys.readouterr().out  # not a terminal: no bar
    ui.configure(True)
    evaluate_samples(images, None, digits, cache_dir=tmp_path, cache_reference=False, **FAST)
    out = capsys.readouterr().out
    assert "classifier features: samples" in out and "120/120" in out  # input[0] check not counted
    assert "classifier features: reference test" in out and f"{n_ref}/{n_ref}" in out
    evaluate_samples(images, None, digits, cache_dir=tmp_path, **FAST)  # reference from the cache
    out = capsys.readouterr().out
    assert "features: samples" in out and "reference" not in out  # never pulled: no bar
    ui.configure(False)
    evaluate_samples(images, None, digits, cache_dir=tmp_path, cache_reference=False, **FAST)
    assert "features" not in capsys.readouterr().out


def test_bench_sampling_spinner_follows_the_switch(tmp_path, monkeypatch, capsys, no_terminal):
    # the benchmark itself is tested elsewhere (and takes a while): here only the wiring
    monkeypatch.setattr("arflowbench.benchmarks.sampling.run_sampling_bench", lambda **kw: [])
    args = ("bench", "sampling", "--steps", "2", "--batch", "1", "--repeats", "1", "--threads",
            "1", "--results-dir", str(tmp_path))
    code, out, err = cli_inprocess(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "| variant |" in out and "bench sampling:" not in out  # a pipe: no spinner
    code, out, err = cli_inprocess(monkeypatch, capsys, *args, "--progress")
    assert code == 0, err
    assert "bench sampling: debug, 2 steps x batch 1" in out


def test_bench_training_no_progress_wins_over_a_terminal(tmp_path, monkeypatch, capsys,
                                                         no_terminal):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    code, out, err = cli_inprocess(monkeypatch, capsys, "bench", "training", "--dataset",
                                   "digits", "--batch", "10", "--repeats", "1", "--threads", "1",
                                   "--results-dir", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert "sit-softmax" in out and "img/s" in out and "bench training:" not in out
