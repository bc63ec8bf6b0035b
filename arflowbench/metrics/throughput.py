"""Model FLOP utilisation: measured matmul peak, counted model FLOPs, and their ratio.

MFU here is relative to a peak *measured in this process* (square matmuls of the training dtype),
not to a datasheet number: on a shared CPU the datasheet says little, and a measured peak makes
MFU comparable across the machines a matrix runs on. Record the peak beside every MFU.
"""

from __future__ import annotations

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


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (forward and backward if it calls backward), as counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def mfu(achieved_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOP utilisation: achieved / peak (both in FLOP/s)."""
    if not peak_flops_per_s > 0:
        raise ConfigError(f"peak FLOP/s must be > 0, got {peak_flops_per_s}")
    if achieved_flops_per_s < 0:
        raise ConfigError(f"achieved FLOP/s must be >= 0, got {achieved_flops_per_s}")
    return achieved_flops_per_s / peak_flops_per_s
