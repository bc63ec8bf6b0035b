"""Checks of command-line input, run before any work so that bad input is one `error:` line.

Each function raises `ConfigError` naming the option; nothing here writes a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from arflowbench.errors import ConfigError

DEVICES = ("cpu", "cuda")


def check_device(device: str, option: str = "--device") -> None:
    """`device` is cpu or cuda (with a GPU present); "auto" is checked by `RuntimeOptions`."""
    if device not in (*DEVICES, "auto"):
        raise ConfigError(f"{option}: {device!r} is not a device (allowed: auto, cpu, cuda)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{option} cuda: no CUDA GPU is available on this machine "
                              "(use --device cpu or auto)")


def check_dir(path: Path | None, option: str) -> None:
    """An input folder given on the command line exists (no silent fallback)."""
    if path is not None and not Path(path).is_dir():
        raise ConfigError(f"{option} {path}: no such folder")


def runtime(results_dir: Path, data_root: Path | None, **kw: Any):
    """`RuntimeOptions` from CLI options; pydantic's complaints become one line naming them."""
    from arflowbench.config import RuntimeOptions

    check_dir(data_root, "--data-root")
    try:
        rt = RuntimeOptions(results_dir=results_dir, data_root=data_root, **kw)
    except ValidationError as err:
        first = err.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "options"
        raise ConfigError(f"{option}: {first['msg']} (got {first.get('input')!r})") from None
    check_device(rt.device)
    return rt


def at_least(minimum: int, **values: int | None) -> None:
    """Each named integer option is >= `minimum` (None: not given)."""
    for name, v in values.items():
        if v is not None and v < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")


def check_bench_attention(backends: list[str] | None, dim: int, heads: int, batch: int,
                          repeats: int, warmup: int, threads: int | None, device: str) -> None:
    """`bench attention` options: sizes, known backends, heads dividing dim, a real device."""
    from arflowbench.plugins import ATTENTION

    at_least(1, dim=dim, heads=heads, batch=batch, repeats=repeats, threads=threads)
    at_least(0, warmup=warmup)
    if dim % heads:
        raise ConfigError(f"--heads {heads} does not divide --dim {dim}")
    for name in backends or ():
        ATTENTION.load(name)  # unknown: an error listing the known names
    check_device(device)


def check_bench_sampling(steps: int, batch: int, flavor: str, repeats: int, threads: int | None,
                         device: str) -> None:
    """`bench sampling` options: sizes, a known model flavor, a real device."""
    from arflowbench.models.flavors import FLAVORS

    at_least(1, steps=steps, batch=batch, repeats=repeats, threads=threads)
    if flavor not in FLAVORS:
        raise ConfigError(f"--flavor {flavor!r} is not a model flavor (known: {', '.join(FLAVORS)})")
    check_device(device)


def check_report(results_dir: Path) -> None:
    """`report` reads an existing results dir (a typo is not an empty report)."""
    check_dir(results_dir, "--results-dir")


def report_dirs(results_dir: Path | None, matrix_name: str | None, out: Path | None) -> list[Path]:
    """The results dirs `report` reads: ``--results-dir``; else ``results/<matrix name>``; else
    every folder under ``results/`` that holds rows (one report each, so ``--out`` needs one)."""
    from arflowbench.registry_files import RESULTS_ROOT, default_results_dir
    from arflowbench.results import BENCH_FILE, RUNS_FILE

    if results_dir is not None or matrix_name is not None:
        d = results_dir if results_dir is not None else default_results_dir(matrix_name)
        check_dir(d, "--results-dir")
        return [d]
    found = sorted(d for d in RESULTS_ROOT.glob("*")
                   if d.is_dir() and ((d / RUNS_FILE).exists() or (d / BENCH_FILE).exists()))
    if not found:
        raise ConfigError(f"no rows under {RESULTS_ROOT}/ (results/<matrix name>/runs.jsonl): run a "
                          "matrix first (arflowbench run --matrix quickstart) or pass --results-dir")
    if out is not None and len(found) > 1:
        raise ConfigError(f"--out names one folder but {len(found)} results dirs have rows "
                          f"({', '.join(d.name for d in found)}): add --results-dir or --matrix")
    return found
