"""The attention benchmark: backend x S (images per sequence) x N (tokens per image) x mode.

Memory is measured on a backend's second call (the first, untimed, counts as a warm-up: Triton
autotuning allocates a large buffer once). Modes: "forward" (no grad, the whole S*N sequence),
"forward_backward" (forward plus backward into the parameters), "step" (one sampling step at
position S: the state already holds S-1 chunks; the row also records the bytes of the state
returned by that step). Within one configuration the backends are timed A/B interleaved (see
`timing.time_interleaved`), so their ratios come from one run. Every measurement is appended at
once to ``results_dir / BENCH_FILE`` (a crash keeps what was measured). Rows carry ``status``
"ok" or "skipped" (with ``reason``): a configuration is skipped when a lower bound of its cost,
predicted from the same backend at the previous S, is over ``max_call_ms`` or ``max_memory_mb``
(cost grows at least linearly with S for the sequence modes and does not shrink for "step"), or
after that backend failed or was skipped at a smaller S.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from arflowbench.benchmarks.timing import measure_peak_memory, tensor_bytes, time_interleaved
from arflowbench.errors import ArflowbenchError, ConfigError
from arflowbench.machine import torch_threads
from arflowbench.plugins import ATTENTION, availability_for
from arflowbench.results import BENCH_FILE, BenchRecord, append, environment_stamp

MODES = ("forward", "forward_backward", "step")
DEFAULT_S = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_N = (16, 64, 256)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resolve_backends(names: Sequence[str] | None, say: Callable[[str], None],
                      device: str = "cpu") -> list[str]:
    """Registered names (all by default) that can run on `device` (the sweep's target, not the
    machine); the others are reported and dropped."""
    names = list(ATTENTION.names()) if names is None else list(names)
    runnable = []
    for name in names:
        try:
            avail = availability_for(ATTENTION.load(name), device)
        except ArflowbenchError as exc:
            say(f"skip backend {name!r}: {exc}")
            continue
        if avail.available:
            runnable.append(name)
        else:
            say(f"skip backend {name!r}: unavailable here: {avail.reason}")
    return runnable


def _make_call(module, mode: str, x: torch.Tensor, cond: torch.Tensor, chunk: int):
    """The callable timed for one backend, and (step mode) a function giving the state bytes."""
    if mode == "forward":
        def call():
            with torch.no_grad():
                return module(x, cond)
        return call, None
    if mode == "forward_backward":
        grad_out = torch.randn_like(x)

        def call():
            module.zero_grad(set_to_none=True)
            module(x, cond).backward(grad_out)
        return call, None
    # step: build a state holding S-1 chunks (untimed), then time the step of chunk S
    with torch.no_grad():
        state = module.init_state(x.shape[0], x.device)
        for start in range(0, x.shape[1] - chunk, chunk):
            _, state = module.step(x[:, start:start + chunk], state, cond[:, start:start + chunk])
    last, last_cond = x[:, -chunk:], cond[:, -chunk:]

    def call():
        with torch.no_grad():
            return module.step(last, state, last_cond)
    return call, lambda: tensor_bytes(call()[1])


def run_attention_bench(
    backends: Sequence[str] | None = None,
    S_values: Iterable[int] = DEFAULT_S,
    N_values: Iterable[int] = DEFAULT_N,
    modes: Iterable[str] = MODES,
    dim: int = 384,
    heads: int = 6,
    batch: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    results_dir: Path = Path("results"),
    device: str = "cpu",
    progress: bool = True,
    dtype: str = "float32",
    max_call_ms: float = 600.0,
    max_memory_mb: float = 6000.0,
    seed: int = 0,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Sweep backends x S x N x mode; append one row per measurement and return all rows.

    Defaults (dim 384 / 6 heads, SiT-S width; batch 1; 1 warm-up + 5 repeats; calls predicted
    over 600 ms or 6 GB skipped) keep the full default sweep on a 2-core CPU within minutes.
    ``threads`` sets torch's intra-op threads for the sweep (restored after; recorded in the
    rows' env): 1 avoids spin-waiting thread pools on an oversubscribed machine.
    """
    with torch_threads(threads):
        return _sweep(backends, S_values, N_values, modes, dim, heads, batch, repeats, warmup,
                      results_dir, device, progress, dtype, max_call_ms, max_memory_mb, seed)


def _sweep(backends, S_values, N_values, modes, dim, heads, batch, repeats, warmup, results_dir,
           device, progress, dtype, max_call_ms, max_memory_mb, seed) -> list[dict[str, Any]]:
    modes, S_values, N_values = list(modes), sorted(set(S_values)), list(N_values)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"bench attention: unknown mode {bad[0]!r} (allowed: {', '.join(MODES)})")
    if dtype not in DTYPES:
        raise ConfigError(f"bench attention: dtype {dtype!r} (allowed: {', '.join(DTYPES)})")
    if min(S_values + N_values, default=1) < 1:
        raise ConfigError("bench attention: S and N values must be >= 1")
    console = Console()
    say = console.print
    names = _resolve_backends(backends, say, device)
    torch_dtype, out_file = DTYPES[dtype], Path(results_dir) / BENCH_FILE
    env = environment_stamp(device)
    rows: list[dict[str, Any]] = []
    base = {"dim": dim, "heads": heads, "batch": batch, "dtype": dtype, "device": device,
            "repeats": repeats, "warmup": warmup}

    def record(status: str = "ok", reason: str | None = None, **fields: Any) -> None:
        values = {**base, "implementation": None, "median_ms": None, "p20_ms": None,
                  "p80_ms": None, "min_ms": None, "peak_memory_mb": None, "memory_method": None,
                  "state_bytes": None, **fields}
        rec = BenchRecord(bench="attention", status=status, reason=reason, env=env,
                          values=values)
        append(out_file, rec)
        rows.append(rec.flat())

    total = len(N_values) * len(S_values) * len(modes)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not progress) as bar:
        task = bar.add_task("attention bench", total=total)
        for n in N_values:
            modules = {}
            for name in names:
                torch.manual_seed(seed)
                try:
                    modules[name] = ATTENTION.load(name)(dim, heads, n).to(device, torch_dtype)
                except ArflowbenchError as exc:
                    say(f"skip backend {name!r} at N={n}: {exc}")
            last: dict[tuple[str, str], tuple[int, float, float]] = {}  # (S, min ms, MB) at prev S
            blocked: dict[tuple[str, str], str] = {}
            for s in S_values:
                torch.manual_seed(seed + s)
                x = torch.randn(batch, s * n, dim, device=device, dtype=torch_dtype)
                cond = 0.1 * torch.randn_like(x)
                for mode in modes:
                    bar.update(task, description=f"N={n} S={s} {mode}")
                    calls, state_fns = {}, {}
                    for name, module in modules.items():
                        key = (name, mode)
                        reason = blocked.get(key) or _predicted_over(
                            last.get(key), s, mode, max_call_ms, max_memory_mb)
                        if reason:
                            blocked[key] = blocked.get(key) or f"{reason} (first at S={s})"
                            record(backend=name, mode=mode, S=s, N=n, status="skipped",
                                   reason=blocked[key])
                            continue
                        try:  # step mode runs S-1 steps here to build the state
                            calls[name], state_fns[name] = _make_call(module, mode, x, cond, n)
                        except Exception as exc:  # noqa: BLE001 - OOM, no CPU operator...: skip
                            blocked[key] = f"failed at S={s}: {str(exc)[:160]}"
                            record(backend=name, mode=mode, S=s, N=n, status="skipped",
                                   reason=blocked[key])
                    mems = {}
                    gc.collect()  # once per configuration: a full collection takes ~0.1-0.5 s
                    for name in list(calls):
                        try:
                            # the first call is untimed and unmeasured (Triton autotuning
                            # allocates a large buffer once): it counts as the first warm-up
                            calls[name]()
                            mems[name] = measure_peak_memory(calls[name], device, collect=False)
                        except Exception as exc:  # noqa: BLE001 - one backend, not the sweep
                            blocked[(name, mode)] = f"failed at S={s}: {str(exc)[:160]}"
                            record(backend=name, mode=mode, S=s, N=n, status="skipped",
                                   reason=blocked[(name, mode)])
                            del calls[name]
                    timings = time_interleaved(calls, warmup=max(warmup - 1, 0),
                                               repeats=repeats, device=device)
                    for name, t in timings.items():
                        state_fn = state_fns[name]
                        record(backend=name, implementation=modules[name].implementation,
                               mode=mode, S=s, N=n, **t.as_dict(),
                               peak_memory_mb=mems[name].mb, memory_method=mems[name].method,
                               state_bytes=state_fn() if state_fn else None)
                        # min, not median: the least noisy lower bound on a loaded machine
                        last[(name, mode)] = (s, t.min_ms, mems[name].mb or 0.0)
                    bar.advance(task)
    return rows


def _predicted_over(prev: tuple[int, float, float] | None, s: int, mode: str,
                    max_call_ms: float, max_memory_mb: float) -> str | None:
    """Why S would obviously blow the limits, from a lower bound scaled from the previous S."""
    if prev is None:
        return None
    s_prev, ms, mb = prev
    ratio = 1.0 if mode == "step" else s / s_prev
    if ms * ratio > max_call_ms:
        return (f"predicted >= {ms * ratio:.0f} ms per call (from {ms:.0f} ms at S={s_prev}), "
                f"over max_call_ms={max_call_ms:g}")
    if mb * ratio > max_memory_mb:
        return (f"predicted >= {mb * ratio:.0f} MB (from {mb:.0f} MB at S={s_prev}), "
                f"over max_memory_mb={max_memory_mb:g}")
    return None


def _ok_rows(rows: Iterable[dict[str, Any]], mode: str, n: int | None,
             several_n: bool = False) -> list[dict[str, Any]]:
    picked = [r for r in rows if r.get("bench") == "attention"
              and r.get("mode") == mode and r.get("status", "ok") == "ok"
              and r.get("median_ms") is not None]
    ns = sorted({r["N"] for r in picked})
    if n is None and len(ns) > 1 and not several_n:
        raise ValueError(f"rows hold several N values {ns}; pass N=")
    return [r for r in picked if n is None or r["N"] == n]


def median_by_s(rows: Iterable[dict[str, Any]], backend: str, mode: str,
                n: int | None = None) -> dict[int, float]:
    """{S: median_ms} of one backend (the latest row wins when a configuration repeats)."""
    return {r["S"]: r["median_ms"] for r in _ok_rows(rows, mode, n) if r["backend"] == backend}


def crossover(rows: Iterable[dict[str, Any]], backend: str, baseline: str = "softmax",
              mode: str = "forward", N: int | None = None) -> int | None:
    """Smallest S from which ``backend`` is faster than ``baseline`` at every larger S.

    Only S values measured for both are compared; None if ``backend`` is not faster at the
    largest common S (or there is none). Pass ``N`` when the rows hold several N values.
    """
    rows = list(rows)
    a, b = median_by_s(rows, backend, mode, N), median_by_s(rows, baseline, mode, N)
    common = sorted(set(a) & set(b))
    found = None
    for s in reversed(common):
        if a[s] >= b[s]:
            break
        found = s
    return found


def markdown_table(rows: Iterable[dict[str, Any]], mode: str, N: int | None = None) -> str:
    """Median ms per backend (columns) and S (rows) for one mode and N, as Markdown.

    Without ``N``, rows holding several N values give one titled table per N.
    """
    rows = list(rows)
    if N is None:
        ns = sorted({r["N"] for r in _ok_rows(rows, mode, None, several_n=True)})
        if len(ns) > 1:
            return "\n\n".join(f"{mode}, N={n} (median ms)\n\n" + markdown_table(rows, mode, n)
                               for n in ns)
    rows = _ok_rows(rows, mode, N)
    backends = sorted({r["backend"] for r in rows})
    per = {b: median_by_s(rows, b, mode) for b in backends}
    lines = ["| S | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
    for s in sorted({r["S"] for r in rows}):
        cells = [f"{per[b][s]:.2f}" if s in per[b] else "-" for b in backends]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
