"""Model FLOP utilisation: the peak, counted model FLOPs, and their ratio.

The peak is that of the dtype the matmuls of training run in (bf16 under bf16 autocast, TF32
for float32 with TF32 matmuls on, else float32; `matmul_dtype`). On a GPU listed in
`KNOWN_PEAKS` it is the datasheet's dense peak (how MFU is quoted for GPUs); elsewhere it is
*measured in this process* (square matmuls of that dtype): on a shared CPU the datasheet says
little, and a measured peak makes MFU comparable across the machines a matrix runs on. Record
the peak, its dtype and its source beside every MFU (`peak_flops`).

``FlopCounterMode`` counts aten matmuls, convolutions and SDPA's CUDA kernels; `count_flops` adds
SDPA's CPU kernel (forward and backward), which torch's table leaves out (torch 2.14 counts it as
0: every CPU attention FLOP was missing). Custom kernels are invisible to it (fla's Triton
cross-chunk term, mamba-ssm's selective scan, causal-conv1d, xformers' attention), so rows also
say which ran (`uncounted_kernels`): their MFU is a lower bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from arflowbench.errors import ConfigError
from arflowbench.machine import synchronize


def matmul_peak_flops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    repeats: int = 10,
) -> float:
    """Peak FLOP/s of ``size x size`` matmuls on `device`: the fastest of `repeats` after a
    warm-up. The fastest, not the median: on a shared machine interference only ever slows a
    matmul down, and a median-based "peak" fell below what the model's own matmuls reached
    (MFU > 1 on a 2-core CPU).

    The matmul is ``F.linear(a, b)`` (``a @ b.T``), the layout of ``nn.Linear``, which holds
    most of a transformer's FLOPs: on CPU, torch 2.14's bfloat16 ``torch.mm`` takes a slow path
    (measured 0.3-1.4 GFLOP/s on a 2-core AVX-512 machine, against 20 GFLOP/s for ``linear``
    and 150-170 GFLOP/s for float32 either way), so ``mm`` would understate the peak.
    Default size: 2048 on CPU (about 0.1 s per matmul at float32), 8192 on GPU.
    """
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    if size < 1 or repeats < 1:
        raise ConfigError(f"size and repeats must be >= 1, got {size} and {repeats}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    flops = 2.0 * size**3
    F.linear(a, b)  # warm-up: kernel selection, thread pool start, clocks
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        F.linear(a, b)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return flops / min(times)


#: dense (no sparsity) datasheet peaks in TFLOP/s: (name fragment, {dtype: peak}); the first
#: fragment found in ``torch.cuda.get_device_name`` wins, so specific names come first
KNOWN_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H800", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("RTX 4090", {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),
)
#: implementation-name fragment -> the kernel FlopCounterMode cannot see (fragments of what
#: *ran*: "fla not used: ..." or "mamba-ssm not used: ..." must not match)
UNCOUNTED = {
    "fla chunk_simple_gla (CUDA)": "fla chunk_simple_gla (Triton)",
    "mamba-ssm CUDA": "mamba-ssm selective scan (CUDA)",
    "+ causal-conv1d": "causal-conv1d (CUDA)",
    "xformers memory_efficient_attention": "xformers memory_efficient_attention",
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def matmul_dtype(device: str | torch.device, autocast: torch.dtype | None) -> str:
    """"bf16"/"fp16" under that autocast; "tf32" for float32 matmuls on CUDA with TF32 on;
    else "fp32"."""
    if autocast is not None:
        return DTYPE_NAMES[autocast]
    cuda = torch.device(device).type == "cuda"
    return "tf32" if cuda and torch.backends.cuda.matmul.allow_tf32 else "fp32"


def known_peak(gpu_name: str, dtype: str) -> float | None:
    """The datasheet peak (FLOP/s) of `gpu_name` in `dtype` from `KNOWN_PEAKS`, or None."""
    for fragment, peaks in KNOWN_PEAKS:
        if fragment in gpu_name:
            value = peaks.get("bf16" if dtype == "fp16" else dtype)
            return None if value is None else value * 1e12
    return None


def peak_flops(device: str | torch.device, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s of one `device` in matmul `dtype`, where it comes from): the table for a
    known GPU, else a measured matmul peak (`matmul_peak_flops`)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = known_peak(name, dtype)
        if value is not None:
            return value, f"datasheet {name} {dtype}"
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    return matmul_peak_flops(device, torch_dtype), f"measured {dtype} matmul"


def uncounted_kernels(implementation: str) -> list[str]:
    """The kernels in an attention implementation name that FlopCounterMode cannot see."""
    return [kernel for fragment, kernel in UNCOUNTED.items() if fragment in implementation]


def _sdpa_flops(q: torch.Size, k: torch.Size, v: torch.Size, over_dk: int, over_dv: int) -> int:
    """2 * B * Hq * Lq * Lk * d per (Lq x Lk)-sized product over width d; q (B, Hq, Lq, dk),
    k (B, Hkv, Lk, dk), v (B, Hkv, Lk, dv): `over_dk` products over dk and `over_dv` over dv."""
    *lead, lq, dk = q
    lk, dv = k[-2], v[-1]
    return math.prod(lead) * 2 * lq * lk * (over_dk * dk + over_dv * dv)


def _sdpa_cpu_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(query, key, value, over_dk=1, over_dv=1)  # scores, then p v


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # torch's own count for its CUDA kernels: scores recomputed, dQ, dK (dk); dP, dV (dv)
    return _sdpa_flops(query, key, value, over_dk=3, over_dv=2)


#: SDPA's CPU kernels, missing from torch's FLOP table (see the module docstring)
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (forward and backward if it calls backward), as counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention), SDPA's CPU
    kernel included (`CPU_SDPA_FLOPS`)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


def mfu(achieved_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOP utilisation: achieved / peak (both in FLOP/s)."""
    if not peak_flops_per_s > 0:
        raise ConfigError(f"peak FLOP/s must be > 0, got {peak_flops_per_s}")
    if achieved_flops_per_s < 0:
        raise ConfigError(f"achieved FLOP/s must be >= 0, got {achieved_flops_per_s}")
    return achieved_flops_per_s / peak_flops_per_s
