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


def test_count_flops_sees_sdpa_on_cpu_forward_and_backward():
    # torch's own table counts SDPA's CPU kernel as 0 FLOPs; the CPU kernel ran here (the op
    # below is what dispatch chose), and its count is that of the same attention in matmuls
    b, h, lq, lk, d = 2, 3, 8, 12, 16
    q = torch.randn(b, h, lq, d, requires_grad=True)
    k, v = (torch.randn(b, h, lk, d, requires_grad=True) for _ in range(2))
    fwd = 2 * (2 * b * h * lq * lk * d)  # q k^T and p v
    attend = torch.nn.functional.scaled_dot_product_attention
    explicit = count_flops(lambda: (q @ k.transpose(-1, -2)).softmax(-1) @ v)
    assert count_flops(lambda: attend(q, k, v)) == explicit == fwd
    # backward as torch counts the flash kernels: scores recomputed, then dP, dV, dQ, dK
    assert count_flops(lambda: attend(q, k, v).sum().backward()) == fwd + 5 * fwd // 2


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
