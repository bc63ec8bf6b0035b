"""Options shared by the `arflowbench` commands, each defined once with its help text, and the
small helpers that turn them into values (matrix by name or file, default folders, progress)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from arflowbench.registry_files import BENCH_RESULTS as BENCH_DIR

RESULTS_HELP = "results store (runs.jsonl, artifacts/); default: results/NAME (NAME: the matrix name)"
MATRIX = typer.Option(..., "--matrix", help="matrix TOML file, or the name of a shipped matrix "
                      "(arflowbench ls matrices)")
RESULTS = typer.Option(None, "--results-dir", help=RESULTS_HELP)
BENCH_RESULTS = typer.Option(BENCH_DIR, "--results-dir",
                             help="where bench.jsonl is appended")
DATA_ROOT = typer.Option(None, "--data-root", help="dataset files (else $ARFLOWBENCH_DATA, then "
                         "each dataset's own places: arflowbench ls datasets)")
DEVICE = typer.Option("auto", "--device", help="auto (cuda when present, else cpu) | cpu | cuda")
PROGRESS = typer.Option(None, "--progress/--no-progress",
                        help="progress bars (default: on when stdout is a terminal)")
THREADS = typer.Option(None, "--threads", help="torch intra-op threads (default: torch's)")
CELLS = typer.Option(None, "--cells", help="only these cells, by the index `validate` prints: "
                     "3,9,25-29 (the others are left as they are)")
SET = typer.Option([], "--set", help="override a spec value in every cell, checked like the "
                   "file: --set train.steps=100 --set sample.cfg_scale=1.5 (repeatable)")


def progress_enabled(flag: bool | None) -> bool:
    """``--progress/--no-progress``, else on exactly when stdout is a terminal (bars draw there)."""
    return sys.stdout.isatty() if flag is None else flag


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when a GPU is present, else cpu; other values are checked as given."""
    from arflowbench.cli_checks import check_device

    check_device(device)
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_matrix(arg: str, sets: list[str]):
    """The `Matrix` named by ``--matrix`` (a file or a shipped name) with ``--set`` applied."""
    from arflowbench.errors import ConfigError
    from arflowbench.matrix import Matrix
    from arflowbench.registry_files import matrix_file

    m = Matrix.from_file(matrix_file(arg), sets)
    if not m.name or Path(m.name).name != m.name or m.name in (".", ".."):
        raise ConfigError(f"matrix name {m.name!r} cannot name a results folder (use letters, "
                          "digits, '-', '_', '.')")
    return m


def results_dir_for(results_dir: Path | None, matrix_name: str) -> Path:
    """``--results-dir`` if given, else ``results/<matrix name>``."""
    from arflowbench.registry_files import default_results_dir

    return results_dir if results_dir is not None else default_results_dir(matrix_name)


def parse_cells(text: str | None, count: int) -> frozenset[int] | None:
    """``--cells 3,9,25-29`` -> {3, 9, 25, ..., 29}; None -> None (every cell). Indices are
    checked against the matrix's `count` cells: one error naming the bad part."""
    from arflowbench.errors import ConfigError

    if text is None:
        return None
    picked: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            raise ConfigError(f"--cells: {part!r} is not an index or a range like 25-29 "
                              f"(cells are 0-{count - 1})") from None
        if not 0 <= first <= last < count:
            raise ConfigError(f"--cells: {part!r} is outside the matrix's cells 0-{count - 1}"
                              + (" (a range goes low-high)" if first > last else ""))
        picked.update(range(first, last + 1))
    return frozenset(picked)
