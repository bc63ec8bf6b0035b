"""Throughput options that matter on GPUs, checked on CPU: `--compile` (a runtime option, not
hashed), TF32 only for CUDA targets (recorded in the row's env), `make test-gpu` without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.formulations.sit import SiT
from arflowbench.machine import configure_device, environment_stamp
from arflowbench.resolve import resolve
from arflowbench.trainer import TrainSpec, train

ROOT = Path(__file__).resolve().parents[2]


def test_compile_wraps_the_training_forward_and_changes_nothing_else(
        tmp_path, model_factory, digits_train, monkeypatch):
    """torch.compile itself works on CPU (a debug-flavor cell compiled in ~75-90 s on 2 cores,
    outputs equal): too slow for the suite, so it is replaced by a recording identity here."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)
    spec = TrainSpec(steps=2, batch_size=8)
    results = []
    for on in (False, True):
        ema, tr = train(model_factory(), SiT(), digits_train, spec, train_id="x",
                        checkpoint_path=tmp_path / f"{on}" / "ckpt.pt", compile=on)
        results.append((tr.losses, [p.clone() for p in ema.parameters()]))
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_compile_is_not_hashed(tmp_path):
    spec = RunSpec.model_validate({"data": {"name": "digits"}, "train": {"steps": 1}})
    plain = resolve(spec, RuntimeOptions(results_dir=tmp_path))
    compiled = resolve(spec, RuntimeOptions(results_dir=tmp_path, compile=True))
    assert (plain.run_id, plain.train_id) == (compiled.run_id, compiled.train_id)


def test_tf32_is_set_for_cuda_targets_only_and_stamped(monkeypatch):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = False
        configure_device("cpu")
        assert matmul.allow_tf32 is False  # CPU targets: untouched
        assert environment_stamp("cpu")["tf32"] is None
        configure_device("cuda:0")
        assert matmul.allow_tf32 is True and cudnn.allow_tf32 is True
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200 (simulated)")
        assert environment_stamp("cuda")["tf32"] is True
        assert environment_stamp("cpu")["tf32"] is None
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_make_test_gpu_stops_with_one_line_without_a_gpu():
    out = subprocess.run(["make", "-s", "--no-print-directory", "test-gpu-check",
                          f"PYTHON_BIN={sys.executable}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert lines[0].startswith("make test-gpu: no CUDA device") and len(lines) <= 2
