"""What CPU can test of the GPU paths: float32 sections under autocast, fla's Triton/Hopper rule,
and the kernel choice for a differentiated gated recurrence (the CUDA tensors are faked)."""

from __future__ import annotations

import types

import pytest
import torch

from arflowbench.attention.base import float32_section
from arflowbench.attention.linear import LinearAttention
from arflowbench.attention.mamba import MambaMixer
from arflowbench.attention.ops import chunk_recurrence, fla_gla, recurrence

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def test_float32_section_turns_autocast_off_and_is_a_plain_call_otherwise():
    @float32_section
    def matmul(a, b):
        return a @ b

    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with torch.autocast(**BF16):
        assert (a @ b).dtype == torch.bfloat16  # what the section prevents
        assert matmul(a, b).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")  # restored after the call
    assert torch.equal(matmul(a, b), a @ b)


def test_recurrence_and_readouts_stay_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3, 4, 8, generator=g) for _ in range(3))  # (B, H, C, N, d)
    log_decay = -torch.rand(2, 2, 3, 4, generator=g)
    base = torch.randn(2, 2, 3, 4, 8, generator=g)
    plain = chunk_recurrence(q, k, v, log_decay, base=base)
    with torch.autocast(**BF16):
        mixed = chunk_recurrence(q, k, v, log_decay, base=base.bfloat16())  # a bf16 inner term
    assert mixed.out.dtype == torch.float32
    torch.testing.assert_close(mixed.out, plain.out, atol=2e-2, rtol=0)  # base was rounded
    with torch.autocast(**BF16):
        exact = chunk_recurrence(q, k, v, log_decay, base=base)
    assert torch.equal(exact.out, plain.out)  # the section itself computes in float32


@pytest.mark.parametrize("make", [lambda: LinearAttention(32, 2, 4, decay="gated"),
                                  lambda: MambaMixer(32, 2, 4)], ids=["linear", "mamba"])
def test_backend_float32_parts_ignore_autocast(make):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(2, 12, 32)
    if isinstance(m, LinearAttention):
        q, k, v, log_decay = m._project(x, None)
        plain, _ = m._mix_heads(q, k, v, log_decay, None)
        with torch.autocast(**BF16):
            mixed, _ = m._mix_heads(q, k, v, log_decay, None)
    else:
        xc, delta = torch.randn(2, 12, m.d_inner), torch.rand(2, 12, m.d_inner)
        b_in, c_in = torch.randn(2, 12, 16), torch.randn(2, 12, 16)
        ssm = torch.zeros(2, m.d_inner, 16)
        plain, _ = m._scan(xc, delta, b_in, c_in, ssm, False)
        with torch.autocast(**BF16):
            mixed, _ = m._scan(xc, delta, b_in, c_in, ssm, False)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    with torch.autocast(**BF16):  # the whole layer still runs (projections in bf16)
        y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name,cap,triton,tilelang,bad", [
    ("NVIDIA H100 80GB HBM3", (9, 0), "3.4.0", False, True),
    ("NVIDIA H200", (9, 0), "3.7.0", False, True),
    ("NVIDIA H200", (9, 0), "3.7.1", False, False),
    ("NVIDIA H200", (9, 0), "3.5.1", True, False),  # tilelang takes the backward
    ("NVIDIA H100", (9, 0), "3.3.1", False, False),
    ("NVIDIA A100-SXM4-80GB", (8, 0), "3.5.0", False, False),
    ("NVIDIA GH200 480GB", (9, 0), "3.6.0", False, True),  # Hopper by capability
])
def test_fla_gated_backward_rule(name, cap, triton, tilelang, bad):
    why = fla_gla.gated_backward_problem(name, cap, triton, tilelang)
    assert bool(why) == bad
    if bad:
        assert "Triton >= 3.7.1 or tilelang" in why


def test_gated_training_on_a_bad_triton_takes_the_pytorch_path(monkeypatch):
    """On CUDA, a differentiated gated recurrence skips fla where its backward would raise;
    a forward without gradients (sampling) still takes fla."""
    monkeypatch.setattr(fla_gla, "load_kernel", lambda: ("kernel", ""))
    monkeypatch.setattr(fla_gla, "device_gated_backward_problem", lambda index: "bad triton")
    q = types.SimpleNamespace(is_cuda=True, shape=(1, 1, 1, 2, 8),
                              device=types.SimpleNamespace(index=0))
    assert recurrence.select_kernel(q, q) == ("kernel", fla_gla.FLA_IMPL)
    assert recurrence.select_kernel(q, q, gated_backward=True) == (
        None, "pytorch chunked (CUDA; fla not used: bad triton)")


def test_peaks_come_from_the_datasheet_of_known_gpus_in_the_training_dtype(monkeypatch):
    from arflowbench.metrics import throughput as tp

    assert tp.known_peak("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert tp.known_peak("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert tp.known_peak("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(19.5e12)
    assert tp.known_peak("Some Future GPU", "bf16") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert tp.peak_flops("cuda", "bf16") == (pytest.approx(989.4e12), "datasheet NVIDIA H200 bf16")
    measured = []
    monkeypatch.setattr(tp, "matmul_peak_flops", lambda d, dt: measured.append(dt) or 7.0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some Future GPU")
    assert tp.peak_flops("cuda", "bf16") == (7.0, "measured bf16 matmul")
    assert tp.peak_flops("cpu", "fp32") == (7.0, "measured fp32 matmul")
    assert measured == [torch.bfloat16, torch.float32]


def test_matmul_dtype_follows_autocast_and_tf32():
    from arflowbench.metrics.throughput import matmul_dtype

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        assert matmul_dtype("cuda", torch.bfloat16) == "bf16"
        matmul.allow_tf32 = True
        assert matmul_dtype("cuda:0", None) == "tf32"
        assert matmul_dtype("cpu", None) == "fp32"  # TF32 is a CUDA setting
        matmul.allow_tf32 = False
        assert matmul_dtype("cuda", None) == "fp32"
    finally:
        matmul.allow_tf32 = before


@pytest.mark.parametrize("impl,kernels", [
    ("fla chunk_simple_gla (CUDA) cross-chunk term, pytorch inner term and recurrent step",
     ["fla chunk_simple_gla (Triton)"]),
    ("pytorch chunked (CUDA; fla not used: bad triton)", []),
    ("mamba-ssm CUDA + causal-conv1d",
     ["mamba-ssm selective scan (CUDA)", "causal-conv1d (CUDA)"]),
    ("pytorch selective scan (CUDA; mamba-ssm not used: mamba-ssm not installed)", []),
    ("xformers memory_efficient_attention (CUDA)", ["xformers memory_efficient_attention"]),
    ("torch scaled_dot_product_attention", []),
])
def test_rows_name_the_kernels_the_flop_counter_misses(impl, kernels):
    from arflowbench.metrics.throughput import uncounted_kernels

    assert uncounted_kernels(impl) == kernels
