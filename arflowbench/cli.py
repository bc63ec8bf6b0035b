"""The `arflowbench` command line.

Every user error ends as one line ``error: ...`` on stderr and exit code 2; ``--debug`` (anywhere
on the command line) shows the full traceback instead. Heavy modules are imported inside the
commands so that `arflowbench ls` and `--help` stay fast.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer

from arflowbench.cli_prepare import prepare_app
from arflowbench.errors import ArflowbenchError
from arflowbench.metrics.extractors import extractors_help

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and ablation suite for autoregressive flow-matching generators.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write rows to the results store.")
app.add_typer(bench_app, name="bench")
app.add_typer(prepare_app, name="prepare")

RESULTS = typer.Option(Path("results"), "--results-dir", help="results store (runs.jsonl, artifacts/)")
DATA_ROOT = typer.Option(None, "--data-root", help="dataset files (else $ARFLOWBENCH_DATA)")


class Executor(str, Enum):
    local = "local"
    submitit = "submitit"


def _runtime(results_dir: Path, data_root: Path | None, **kw):
    from arflowbench.cli_checks import runtime

    return runtime(results_dir, data_root, **kw)


@app.command()
def validate(matrix: Path = typer.Option(..., "--matrix", help="matrix TOML file"),
             results_dir: Path = RESULTS, data_root: Path | None = DATA_ROOT,
             estimate: bool = typer.Option(False, help="count FLOPs per cell and estimate hours"),
             peak_tflops: float = typer.Option(989.0, help="--estimate: peak TFLOP/s of one device "
                                               "(default: H100 SXM bf16 dense)"),
             mfu: float = typer.Option(0.4, help="--estimate: model FLOP utilisation assumed"),
             ) -> None:
    """Expand and check a matrix: one line per cell with its run_id, train_id and what a run
    would do (cached / to train / trained (shared) / shared with an earlier cell)."""
    from arflowbench.config import Matrix
    from arflowbench.runner import CACHED, DATA_MISSING, TO_TRAIN, plan

    m = Matrix.from_file(matrix)
    planned = plan(m, _runtime(results_dir, data_root), warn=lambda s: typer.echo(s, err=True),
                   missing_data_ok=True)
    typer.echo(f"{'cell':>4}  {'run_id':12}  {'train_id':12}  {'state':28}  axes")
    for p in planned:  # ids of cells without their data are unknown until it is prepared
        ids = (f"{'-':12}  {'-':12}" if p.state == DATA_MISSING
               else f"{p.resolved.run_id}  {p.resolved.train_id}")
        typer.echo(f"{p.cell.index:4d}  {ids}  {p.describe:28}  {p.label}")
    n = {s: sum(p.state == s and not p.resolved.unavailable for p in planned)
         for s in (CACHED, TO_TRAIN, DATA_MISSING)}
    trainings = len({p.resolved.train_id for p in planned if p.state in (TO_TRAIN, DATA_MISSING)})
    unavailable = sum(bool(p.resolved.unavailable) for p in planned)
    typer.echo(f"{m.name}: {len(planned)} cells, {len(planned) - n[CACHED] - unavailable} to run "
               f"({trainings} trainings), {n[CACHED]} cached, {unavailable} unavailable"
               + (f", {n[DATA_MISSING]} waiting for data" if n[DATA_MISSING] else ""))
    for msg in dict.fromkeys(line for p in planned if p.resolved.data_missing
                             for line in p.resolved.data_missing.splitlines()):
        typer.echo(f"warning: {msg}", err=True)
    if estimate:
        _print_estimate(planned, peak_tflops * 1e12, mfu)


def _print_estimate(planned, peak: float, mfu: float) -> None:
    from arflowbench.errors import ConfigError
    from arflowbench.estimate import cell_cost, fmt_flops

    if not (peak > 0 and 0 < mfu <= 1):
        raise ConfigError(f"--peak-tflops must be > 0 and --mfu in (0, 1], got {peak / 1e12} "
                          f"and {mfu}")
    typer.echo(f"\nestimate at {peak / 1e12:g} TFLOP/s x MFU {mfu:g} per device "
               "(FLOPs counted with torch.utils.flop_counter):")
    typer.echo(f"{'cell':>4}  {'params':>8}  {'train/img':>10}  {'train':>10}  "
               f"{'sample/img':>10}  {'samples':>7}  {'sample':>10}  {'hours':>8}")
    seen: set[str] = set()
    total_train = total_sample = 0.0
    for p in planned:
        if p.resolved.unavailable:
            continue
        cost = cell_cost(p.resolved, count_training=p.resolved.train_id not in seen)
        seen.add(p.resolved.train_id)
        total_train, total_sample = total_train + cost.train_flops, total_sample + cost.sample_flops
        typer.echo(f"{p.cell.index:4d}  {cost.params / 1e6:7.1f}M  "
                   f"{fmt_flops(cost.train_flops_per_image):>10}  {fmt_flops(cost.train_flops):>10}  "
                   f"{fmt_flops(cost.sample_flops_per_image):>10}  {cost.sample_images:7d}  "
                   f"{fmt_flops(cost.sample_flops):>10}  {cost.hours(peak, mfu):8.2f}")
    hours = (total_train + total_sample) / (peak * mfu) / 3600
    typer.echo(f"total: training {fmt_flops(total_train)} (shared trainings counted once), "
               f"sampling {fmt_flops(total_sample)}, {hours:.1f} device-hours")


class Cluster(str, Enum):
    slurm = "slurm"
    local = "local"


@app.command()
def run(matrix: Path = typer.Option(..., "--matrix", help="matrix TOML file"),
        results_dir: Path = RESULTS, data_root: Path | None = DATA_ROOT,
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        checkpoint_every: int = typer.Option(100, help="steps between checkpoints"),
        progress: bool = typer.Option(True, help="show progress bars"),
        threads: int | None = typer.Option(None, help="torch threads per cell process"),
        executor: Executor = typer.Option(Executor.local, help="local subprocesses or submitit"),
        nproc_per_node: int = typer.Option(1, min=1, help="local: processes per cell, under "
                                           "torch.distributed.run (one cell after another)"),
        max_parallel: int | None = typer.Option(None, min=1, help="submitit: jobs at once "
                                                "(default: every pending cell)"),
        slurm: list[str] = typer.Option([], "--slurm", help="submitit: KEY=VALUE over the "
                                        "matrix's [slurm] table (partition, nodes, gpus_per_node, "
                                        "tasks_per_node, cpus_per_task, timeout_min, ...)"),
        slurm_partition: str | None = typer.Option(None, help="submitit: Slurm partition"),
        submitit_cluster: Cluster = typer.Option(
            Cluster.slurm, help="submitit: 'slurm', or 'local' (the Slurm path on this machine)"),
        ) -> None:
    """Train, sample and evaluate every cell of a matrix; finished cells are skipped, cells
    another live process runs are skipped with its pid."""
    from arflowbench.config import Matrix
    from arflowbench.executors import LocalExecutor
    from arflowbench.runner import run_matrix

    rt = _runtime(results_dir, data_root, device=device, checkpoint_every=checkpoint_every,
                  progress=progress, threads=threads)
    m = Matrix.from_file(matrix)
    if executor is Executor.submitit:
        from arflowbench.slurm import SubmititExecutor

        if nproc_per_node > 1:
            raise ArflowbenchError("--nproc-per-node is for the local executor; with submitit "
                                   "use --slurm tasks_per_node=N (one rank per task)")
        extra = slurm + ([f"partition={slurm_partition}"] if slurm_partition else [])
        ex = SubmititExecutor(results_dir / "submitit", cluster=submitit_cluster.value,
                              slurm=m.slurm.merged(extra), max_parallel=max_parallel)
    else:
        if max_parallel not in (None, 1) or slurm or slurm_partition:
            raise ArflowbenchError("--max-parallel and --slurm apply to --executor submitit; local "
                                   "cells run one at a time (throughput measured alone)")
        _check_gpus(rt.device, nproc_per_node)
        ex = LocalExecutor(nproc_per_node)
    counts = run_matrix(m, rt, ex, echo=typer.echo, warn=lambda msg: typer.echo(msg, err=True))
    typer.echo(f"{m.name}: {counts['ok']} ok, {counts['failed']} failed, "
               f"{counts['cached']} cached, {counts['skipped']} skipped")
    if counts["failed"]:
        raise typer.Exit(1)


def _check_gpus(device: str, nproc: int) -> None:
    """`--device cuda` needs a GPU per process; `auto` on a GPU machine too (on CPU, N processes
    share the cores through gloo)."""
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and have == 0:
        raise ArflowbenchError("--device cuda: no CUDA device on this machine")
    if device in ("cuda", "auto") and have and nproc > have:
        raise ArflowbenchError(f"--nproc-per-node {nproc} needs {nproc} GPUs; this machine has "
                               f"{have}")


@app.command()
def report(results_dir: Path = RESULTS,
           out: Path | None = typer.Option(None, "--out", help="default: RESULTS/reports"),
           paper_dir: Path = typer.Option(Path("registry/paper"), help="published numbers")) -> None:
    """Write report.md, report.tex, plots and index.html from the rows (never re-runs)."""
    from arflowbench.cli_checks import check_report
    from arflowbench.report import write_report

    check_report(results_dir)
    out = out or results_dir / "reports"
    page = write_report(results_dir, out, paper_dir if paper_dir.exists() else None)
    typer.echo(f"wrote {page}")


@app.command("ls")
def list_plugins(as_json: bool = typer.Option(False, "--json", help="JSON list of objects")) -> None:
    """Every registered plugin: kind, name, version, origin, availability and implementation."""
    from arflowbench.plugins import all_info

    rows = [r.as_dict() for r in all_info()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("kind", "name", "version", "origin", "available", "implementation / reason")
    for r in rows:
        detail = r["implementation"] if r["available"] else r["reason"]
        table.add_row(r["kind"], r["name"], str(r["version"]), r["origin"],
                      "yes" if r["available"] else "no", detail)
    Console().print(table)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ArflowbenchError(f"expected comma-separated integers, got {text!r}") from None


@bench_app.command("attention")
def bench_attention(
        backends: str = typer.Option("", help="comma-separated backends (default: all available)"),
        s: str = typer.Option("1,2,4,8,16,32,64", "--s", help="images per sequence S"),
        n: str = typer.Option("16,64,256", "--n", help="tokens per image N"),
        modes: str = typer.Option("forward,forward_backward,step", help="what to time"),
        dim: int = 384, heads: int = 6, batch: int = 1, repeats: int = 5, warmup: int = 1,
        threads: int | None = typer.Option(None, help="torch threads (default: torch's)"),
        max_call_ms: float = typer.Option(600.0, help="skip configurations predicted slower"),
        device: str = "cpu", results_dir: Path = RESULTS, progress: bool = True) -> None:
    """Time attention backends against S, N and mode (A/B interleaved); rows go to bench.jsonl."""
    from arflowbench.benchmarks.attention import markdown_table, run_attention_bench
    from arflowbench.cli_checks import check_bench_attention

    names = [b for b in backends.split(",") if b] or None
    check_bench_attention(names, dim, heads, batch, repeats, warmup, threads, device)
    rows = run_attention_bench(names, _ints(s), _ints(n),
                               [m for m in modes.split(",") if m], dim=dim, heads=heads,
                               batch=batch, repeats=repeats, warmup=warmup, threads=threads,
                               max_call_ms=max_call_ms, results_dir=results_dir, device=device,
                               progress=progress)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        typer.echo(f"{mode} (median ms)\n" + markdown_table(rows, mode) + "\n")


@bench_app.command("sampling")
def bench_sampling(steps: int = 250, batch: int = 8, flavor: str = "debug", repeats: int = 3,
                   threads: int | None = None, device: str = "cpu",
                   results_dir: Path = RESULTS) -> None:
    """Whole-trajectory sampling ARFlow vs SiT, per-step time and state memory vs position."""
    from arflowbench.benchmarks.sampling import run_sampling_bench, summary
    from arflowbench.cli_checks import check_bench_sampling

    check_bench_sampling(steps, batch, flavor, repeats, threads, device)
    rows = run_sampling_bench(results_dir=results_dir, steps=steps, batch=batch, flavor=flavor,
                              repeats=repeats, threads=threads, device=device)
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
        threads: int | None = typer.Option(None, help="torch threads (default: torch's)"),
        results_dir: Path = typer.Option(Path("results/bench"), "--results-dir",
                                         help="where bench.jsonl is appended")) -> None:
    """Training step time, images/s and MFU per flavor, variants timed A/B interleaved."""
    from arflowbench.benchmarks.training import run_training_bench

    run_training_bench([f for f in flavors.split(",") if f], [v for v in variants.split(",") if v],
                       dataset=dataset, patch_size=patch_size, batch=batch, repeats=repeats,
                       threads=threads, results_dir=results_dir, say=typer.echo)


@app.command("eval")
def eval_samples(
        samples: Path = typer.Option(..., "--samples", help="ADM-style .npz or a folder of PNGs"),
        reference: str | None = typer.Option(None, "--reference", help="dataset name, image .npz or "
                                             "PNG folder, or ADM reference batch (mu/sigma used as is)"),
        dataset: str | None = typer.Option(None, "--dataset", help="reference dataset name"),
        extractor: str = typer.Option("inception", help=f"feature extractor: {extractors_help()}"),
        split: str = typer.Option("test", help="reference split"),
        kid_subset_size: int | None = None, data_root: Path | None = DATA_ROOT,
        cache_dir: Path | None = None, device: str = "cpu",
        reference_features: bool = typer.Option(
            True, help="reference images' features for KID and precision/recall "
            "(off: FID from ADM statistics only)")) -> None:
    """Score any set of samples with the same metrics as a run (FID, KID, precision, recall)."""
    from arflowbench.cli_checks import at_least, check_device, check_dir
    from arflowbench.metrics.reference import evaluate_file

    check_device(device)
    check_dir(data_root, "--data-root")
    at_least(2, kid_subset_size=kid_subset_size)
    metrics = evaluate_file(samples, reference, dataset, extractor=extractor, split=split,
                            kid_subset_size=kid_subset_size, reference_features=reference_features,
                            data_root=data_root, cache_dir=cache_dir, device=device)
    typer.echo(json.dumps(metrics, indent=2))


def main() -> None:
    """Console entry point: maps user errors to `error: ...` and exit code 2."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except ArflowbenchError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
