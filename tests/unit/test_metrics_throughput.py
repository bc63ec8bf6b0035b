"""Measured matmul peak, counted FLOPs and MFU."""

from __future__ import annotations

import pytest
import torch

from arflowbench.errors import ConfigError
from arflowbench.metrics.throughput import count_flops, matmul_peak_flops, mfu


def test_matmul_peak_is_a_positive_rate():
    peak = matmul_peak_flops("cpu", size=256, repeats=3)
    assert peak > 1e6  # any CPU does a 256^3 matmul at more than a MFLOP/s


def test_count_flops_of_a_linear_layer_forward_and_backward():
    batch, d_in, d_out = 4, 32, 16
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in, requires_grad=True)
    fwd = 2 * batch * d_in * d_out
    assert count_flops(lambda: layer(x)) == fwd
    # backward: grad wrt input and grad wrt weight, each a matmul of the same size
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * fwd


def test_mfu():
    assert mfu(25.0, 100.0) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="peak"):
        mfu(1.0, 0.0)
    with pytest.raises(ConfigError, match="achieved"):
        mfu(-1.0, 10.0)
    with pytest.raises(ConfigError):
        matmul_peak_flops("cpu", size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_matmul_peak_on_gpu_beats_a_teraflop_in_bf16():
    assert matmul_peak_flops("cuda", torch.bfloat16, size=4096) > 1e12
