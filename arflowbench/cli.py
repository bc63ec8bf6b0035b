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

from arflowbench import allocator
from arflowbench.cli_bench import bench_app
from arflowbench.cli_ls import ls
from arflowbench.cli_options import (
    CELLS,
    DATA_ROOT,
    DEVICE,
    MATRIX,
    PROGRESS,
    RESULTS,
    SET,
    THREADS,
    load_matrix,
    parse_cells,
    progress_enabled,
    results_dir_for,
)
from arflowbench.cli_prepare import prepare_app
from arflowbench.errors import ArflowbenchError
from arflowbench.metrics.extractors import extractors_help

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="markdown",
                  help="Benchmark and ablation suite for autoregressive flow-matching generators.")
app.add_typer(bench_app, name="bench")
app.add_typer(prepare_app, name="prepare")
app.command("ls")(ls)


def _version(value: bool) -> None:
    if value:
        from arflowbench import __version__

        typer.echo(f"arflowbench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="print the version and exit"),
        debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error "
                                   "instead of one 'error:' line (anywhere on the line)"),
) -> None:
    """Benchmark and ablation suite for autoregressive flow-matching generators."""


class Cluster(str, Enum):
    slurm = "slurm"
    local = "local"


class Executor(str, Enum):
    local = "local"
    submitit = "submitit"


def _runtime(results_dir: Path, data_root: Path | None, **kw):
    from arflowbench.cli_checks import runtime

    return runtime(results_dir, data_root, **kw)


@app.command()
def validate(matrix: str = MATRIX, results_dir: Path | None = RESULTS,
             data_root: Path | None = DATA_ROOT, sets: list[str] = SET,
             estimate: bool = typer.Option(False, help="count FLOPs per cell and estimate hours"),
             peak_tflops: float = typer.Option(989.0, help="--estimate: peak TFLOP/s of one device "
                                               "(default: H100 SXM bf16 dense)"),
             mfu: float = typer.Option(0.4, help="--estimate: model FLOP utilisation assumed"),
             ) -> None:
    """Expand and check a matrix: one line per cell with its run_id, train_id and what a run
    would do (cached / to train / trained (shared) / shared with an earlier cell)."""
    from arflowbench.cli_validate import print_plan

    m = load_matrix(matrix, sets)
    planned = print_plan(m, _runtime(results_dir_for(results_dir, m.name), data_root))
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


@app.command()
def run(matrix: str = MATRIX, results_dir: Path | None = RESULTS,
        data_root: Path | None = DATA_ROOT, sets: list[str] = SET, cells: str | None = CELLS,
        device: str = DEVICE,
        checkpoint_every: int = typer.Option(100, help="steps between checkpoints"),
        progress: bool | None = PROGRESS, threads: int | None = THREADS,
        compile: bool = typer.Option(False, "--compile", help="train through torch.compile "
                                     "(speed only: run ids unchanged; compiling takes minutes "
                                     "on CPU)"),
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
    from arflowbench.executors import LocalExecutor
    from arflowbench.runner import run_matrix

    m = load_matrix(matrix, sets)
    only = parse_cells(cells, len(m.cells()))
    results_dir = results_dir_for(results_dir, m.name)
    rt = _runtime(results_dir, data_root, device=device, checkpoint_every=checkpoint_every,
                  progress=progress_enabled(progress), threads=threads, compile=compile)
    if executor is Executor.submitit:
        from arflowbench.slurm import SubmititExecutor

        if nproc_per_node > 1:
            raise ArflowbenchError("--nproc-per-node is for the local executor; with submitit "
                                   "use --slurm tasks_per_node=N (one rank per task)")
        extra = slurm + ([f"partition={slurm_partition}"] if slurm_partition else [])
        merged = m.slurm.merged(extra)
        ex = SubmititExecutor(results_dir / "submitit", cluster=submitit_cluster.value,
                              slurm=merged, max_parallel=max_parallel)
        nproc_per_node = (merged.nodes or 1) * (merged.tasks_per_node or 1)  # ranks per cell
    else:
        if max_parallel not in (None, 1) or slurm or slurm_partition:
            raise ArflowbenchError("--max-parallel and --slurm apply to --executor submitit; local "
                                   "cells run one at a time (throughput measured alone)")
        _check_gpus(rt.device, nproc_per_node)
        ex = LocalExecutor(nproc_per_node)
    rt = rt.model_copy(update={"world_size": nproc_per_node})  # batch split checked per cell
    counts = run_matrix(m, rt, ex, echo=typer.echo, warn=lambda msg: typer.echo(msg, err=True),
                        cells=only)
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
def report(results_dir: Path | None = typer.Option(
               None, "--results-dir", help="rows to report; default: every results/NAME/ "
               "folder holding rows (or the --matrix one)"),
           matrix: str | None = typer.Option(None, "--matrix", help="report results/NAME/ of this matrix"),
           out: Path | None = typer.Option(None, "--out", help="default: RESULTS_DIR/report"),
           paper_dir: Path | None = typer.Option(None, help="published numbers (default: the "
                                                 "shipped registry/paper)")) -> None:
    """Write report.md, report.tex, plots and index.html from the rows (never re-runs)."""
    from arflowbench.cli_checks import check_dir, report_dirs
    from arflowbench.registry_files import default_report_dir
    from arflowbench.report import write_report

    check_dir(paper_dir, "--paper-dir")
    dirs = report_dirs(results_dir, load_matrix(matrix, []).name if matrix else None, out)
    for d in dirs:
        page = write_report(d, out or default_report_dir(d), paper_dir)
        typer.echo(f"wrote {page.parent / 'index.html'} (and report.md, report.tex)")


@app.command("eval")
def eval_samples(
        samples: Path = typer.Option(..., "--samples", help="ADM-style .npz or a folder of PNGs"),
        reference: str | None = typer.Option(None, "--reference", help="dataset name, image .npz or "
                                             "PNG folder, or ADM reference batch (mu/sigma used as is)"),
        dataset: str | None = typer.Option(None, "--dataset", help="reference dataset name"),
        extractor: str = typer.Option("inception", help=f"feature extractor: {extractors_help()}"),
        split: str = typer.Option("test", help="reference split"),
        kid_subset_size: int | None = typer.Option(None, help="images per KID subset (default: "
                                                   "the metric's own)"),
        data_root: Path | None = DATA_ROOT,
        cache_dir: Path | None = typer.Option(None, help="feature and statistics cache "
                                              "(default: $ARFLOWBENCH_CACHE, else ~/.cache/arflowbench)"),
        device: str = DEVICE,
        reference_features: bool = typer.Option(
            True, help="reference images' features for KID and precision/recall "
            "(off: FID from ADM statistics only)"),
        progress: bool | None = PROGRESS) -> None:
    """Score any set of samples with the same metrics as a run (FID, KID, precision, recall)."""
    from arflowbench import ui
    from arflowbench.cli_checks import at_least, check_dir
    from arflowbench.cli_options import resolve_device
    from arflowbench.metrics.reference import evaluate_file

    ui.configure(progress_enabled(progress))  # feature bars deep inside the metrics
    device = resolve_device(device)
    check_dir(data_root, "--data-root")
    at_least(2, kid_subset_size=kid_subset_size)
    metrics = evaluate_file(samples, reference, dataset, extractor=extractor, split=split,
                            kid_subset_size=kid_subset_size, reference_features=reference_features,
                            data_root=data_root, cache_dir=cache_dir, device=device)
    typer.echo(json.dumps(metrics, indent=2))


def main() -> None:
    """Console entry point: maps user errors to `error: ...` and exit code 2."""
    allocator.tune()  # before any tensor: steps reuse their pages (allocator.py)
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
