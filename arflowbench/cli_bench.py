"""`arflowbench bench ...`: benchmarks that append rows to ``results/bench/bench.jsonl``.

Registered on the main app in `cli.py`; heavy modules load inside the commands. Each command
takes ``--progress/--no-progress`` (default: on when stdout is a terminal): the attention bench
counts its configurations, the sampling and training benches, which report no counts while
they time, show a spinner with the time elapsed.
"""

from __future__ import annotations

from pathlib import Path

import typer

from arflowbench import ui
from arflowbench.cli_options import BENCH_RESULTS, DEVICE, PROGRESS, THREADS, progress_enabled
from arflowbench.errors import ArflowbenchError

bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                        help="Benchmarks that append rows to results/bench/bench.jsonl.")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ArflowbenchError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


@bench_app.command("attention")
def bench_attention(
        backends: str = typer.Option("", help="comma-separated backends (default: all available)"),
        s: str = typer.Option("1,2,4,8,16,32,64", "--s", help="images per sequence S"),
        n: str = typer.Option("16,64,256", "--n", help="tokens per image N"),
        modes: str = typer.Option("forward,forward_backward,step", help="what to time"),
        dim: int = typer.Option(384, help="model width"),
        heads: int = typer.Option(6, help="attention heads (divides --dim)"),
        batch: int = typer.Option(1, help="sequences per call"),
        repeats: int = typer.Option(5, help="timed calls per configuration (A/B interleaved)"),
        warmup: int = typer.Option(1, help="untimed calls first"),
        threads: int | None = THREADS,
        max_call_ms: float = typer.Option(600.0, help="skip configurations predicted slower"),
        device: str = DEVICE, results_dir: Path = BENCH_RESULTS,
        progress: bool | None = PROGRESS) -> None:
    """Time attention backends against S, N and mode (A/B interleaved); rows go to bench.jsonl."""
    from arflowbench.benchmarks.attention import markdown_table, run_attention_bench
    from arflowbench.cli_checks import check_bench_attention
    from arflowbench.cli_options import resolve_device

    names = _names(backends) or None
    device = resolve_device(device)
    check_bench_attention(names, dim, heads, batch, repeats, warmup, threads, device)
    rows = run_attention_bench(names, _ints(s), _ints(n), _names(modes), dim=dim, heads=heads,
                               batch=batch, repeats=repeats, warmup=warmup, threads=threads,
                               max_call_ms=max_call_ms, results_dir=results_dir, device=device,
                               progress=progress_enabled(progress))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        typer.echo(f"{mode} (median ms)\n" + markdown_table(rows, mode) + "\n")


@bench_app.command("sampling")
def bench_sampling(
        steps: int = typer.Option(250, help="sampling steps of the whole trajectory"),
        batch: int = typer.Option(8, help="images sampled at once"),
        flavor: str = typer.Option("debug", help="model flavor (arflowbench ls: flavors)"),
        repeats: int = typer.Option(3, help="timed trajectories per variant (interleaved)"),
        threads: int | None = THREADS, device: str = DEVICE,
        results_dir: Path = BENCH_RESULTS, progress: bool | None = PROGRESS) -> None:
    """Whole-trajectory sampling ARFlow vs SiT, per-step time and state memory vs position."""
    from arflowbench.benchmarks.sampling import run_sampling_bench, summary
    from arflowbench.cli_checks import check_bench_sampling
    from arflowbench.cli_options import resolve_device

    device = resolve_device(device)
    check_bench_sampling(steps, batch, flavor, repeats, threads, device)
    with ui.activity(f"bench sampling: {flavor}, {steps} steps x batch {batch}, "
                     f"{repeats} repeats", progress_enabled(progress)):
        rows = run_sampling_bench(results_dir=results_dir, steps=steps, batch=batch,
                                  flavor=flavor, repeats=repeats, threads=threads, device=device)
    typer.echo(summary(rows))


@bench_app.command("training")
def bench_training(
        flavors: str = typer.Option("debug", help="comma-separated model flavors"),
        variants: str = typer.Option("sit-softmax,arflow-hybrid",
                                     help="comma-separated formulation-attention pairs"),
        dataset: str = typer.Option("fashion-mnist", help="training data"),
        patch_size: int = typer.Option(4, help="patch size (fashion-mnist 32x32, 4: 64 tokens)"),
        batch: int = typer.Option(40, help="images per step"),
        repeats: int = typer.Option(10, help="timed steps per variant (interleaved)"),
        precision: str = typer.Option("fp32", help="fp32, or bf16 (autocast; CUDA only)"),
        threads: int | None = THREADS, device: str = DEVICE,
        results_dir: Path = BENCH_RESULTS, progress: bool | None = PROGRESS) -> None:
    """Training step time, images/s and MFU per flavor, variants timed A/B interleaved."""
    from arflowbench.benchmarks.training import run_training_bench
    from arflowbench.cli_options import resolve_device

    # one line per variant as each flavor finishes, printed above the spinner
    with ui.activity(f"bench training: {flavors} x {variants}, {repeats} repeats",
                     progress_enabled(progress)):
        run_training_bench(_names(flavors), _names(variants), dataset=dataset,
                           patch_size=patch_size, batch=batch, repeats=repeats, threads=threads,
                           results_dir=results_dir, say=typer.echo,
                           device=resolve_device(device), precision=precision)
