"""Measurement helpers: warm-up, repeats, CUDA synchronisation, percentiles, peak memory.

Rules these helpers follow (as kernel benchmarks do): time only after warm-up calls, synchronise
the GPU before and after every timed call, report the median with the 20th/80th percentiles and
the minimum, and compare implementations A/B *interleaved* (round-robin within every repeat, the
starting callable rotated) so that machine-load drifts hit every contender alike and ratios come
from one run.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
On CPU, tracemalloc does not see torch's allocations, so we use the process's resident set:
the kernel's peak-RSS mark (VmHWM) is reset through ``/proc/self/clear_refs`` (Linux >= 4.0)
after returning freed heap to the OS (``malloc_trim``), and the peak minus the RSS before the call
is reported. Where the reset is not possible the fallback is the growth of ``ru_maxrss``, which
only moves when a call exceeds every earlier peak (then noted as such in `PeakMemory.method`).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arflowbench.machine import synchronize, torch_threads

MB = 1024.0**2


@dataclass(frozen=True)
class Timing:
    """Summary of the timed repeats of one callable (milliseconds)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    repeats: int
    samples_ms: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples_ms")
        return d


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of one call above the level before it (MiB) and how it was measured."""

    mb: float | None
    method: str


def summarize(samples_ms: list[float] | tuple[float, ...]) -> Timing:
    """Median, 20th/80th percentiles (linear interpolation) and minimum of timing samples."""
    if not samples_ms:
        raise ValueError("summarize: no timing samples")
    a = np.asarray(samples_ms, dtype=float)
    p20, med, p80 = np.percentile(a, [20, 50, 80])
    return Timing(float(med), float(p20), float(p80), float(a.min()), len(a), tuple(map(float, a)))


def spread(name: str, values: list[float]) -> dict[str, float]:
    """``name`` (median), ``name_p20`` and ``name_p80`` of `values` through `summarize`;
    NaN when nothing was measured (e.g. a run that reused a finished training)."""
    if not values:
        return dict.fromkeys((name, f"{name}_p20", f"{name}_p80"), float("nan"))
    t = summarize(values)
    return {name: t.median_ms, f"{name}_p20": t.p20_ms, f"{name}_p80": t.p80_ms}


def _timed_call(fn: Callable[[], Any], device: str | torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def time_callable(
    fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, device: str | torch.device = "cpu"
) -> Timing:
    """Time one callable: ``warmup`` untimed calls, then ``repeats`` synchronised timed calls."""
    return time_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, device=device)["fn"]


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> dict[str, Timing]:
    """Time several callables A/B interleaved: each repeat calls every one once (round-robin).

    The starting callable rotates from one repeat to the next, so none always runs first
    (right after the previous repeat's largest free, for example).
    """
    if repeats < 1:
        raise ValueError(f"time_interleaved: repeats must be >= 1, got {repeats}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            samples[name].append(_timed_call(fns[name], device))
    return {name: summarize(s) for name, s in samples.items()}


# -- peak memory ---------------------------------------------------------------------------------
def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def measure_peak_memory(
    fn: Callable[[], Any], device: str | torch.device = "cpu", collect: bool = True
) -> PeakMemory:
    """Run ``fn`` once and return its peak memory above the level before the call.

    ``collect`` runs the garbage collector first (slow with torch loaded: a benchmark sweep
    does it once per configuration and passes False).
    """
    device = torch.device(device)
    if collect:
        gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return PeakMemory((peak - before) / MB, "cuda max_memory_allocated")
    _malloc_trim()
    if _reset_peak_rss():
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        if before is not None and peak is not None:
            return PeakMemory(max(peak - before, 0) * 1024 / MB, "peak RSS (VmHWM reset)")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return PeakMemory((after - before) * 1024 / MB, "ru_maxrss growth (lower bound)")


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested state (tuples, lists, dicts), each storage once."""
    seen: set[int] = set()
    total = 0

    def visit(o: Any) -> None:
        nonlocal total
        if isinstance(o, torch.Tensor):
            key = o.untyped_storage().data_ptr()
            if key not in seen or o.numel() == 0:
                seen.add(key)
                total += o.untyped_storage().nbytes()
        elif isinstance(o, Mapping):
            for v in o.values():
                visit(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v)

    visit(obj)
    return total


def restores_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` may set torch's threads itself; its caller gets its own setting back afterwards."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch_threads(None):
            return fn(*args, **kwargs)
    return wrapper
