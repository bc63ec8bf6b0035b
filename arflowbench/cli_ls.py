"""`arflowbench ls`: plugins, shipped matrices and where each dataset is looked for, laid out
for an 80-column terminal (one line per entry, details wrapped under their column)."""

from __future__ import annotations

import json
import shutil
import textwrap
from enum import Enum
from pathlib import Path

import typer

from arflowbench.cli_options import DATA_ROOT


class What(str, Enum):
    all = "all"
    plugins = "plugins"
    matrices = "matrices"
    datasets = "datasets"


def _width() -> int:
    return max(60, min(shutil.get_terminal_size((80, 24)).columns, 120))


def _rows(rows: list[tuple[str, ...]], widths: tuple[int, ...]) -> list[str]:
    """Fixed columns, the last one wrapped under itself to the terminal width."""
    indent = sum(w + 2 for w in widths)
    out = []
    for row in rows:
        head = "".join(f"{cell[:w]:<{w}}  " for cell, w in zip(row, widths))
        lines = textwrap.wrap(row[-1], max(20, _width() - indent - 2)) or [""]
        out.append("  " + head + lines[0])
        out += ["  " + " " * indent + line for line in lines[1:]]
    return out


def _plugins() -> list[str]:
    from arflowbench.plugins import BUILTIN, all_info, default_device

    out = []
    device = default_device()
    infos = all_info(device)
    for kind in dict.fromkeys(r.kind for r in infos):
        out.append(f"{kind} ({device} runs: name, version, available, implementation or "
                   "reason):")
        rows = [(r.name, f"v{r.version}", "yes" if r.available else "NO",
                 (r.implementation if r.available else r.reason)
                 + ("" if r.origin == BUILTIN else f" [plugin from {r.origin}]"))
                for r in infos if r.kind == kind]
        out += _rows(rows, (14, 3, 8))
    return out


def _first_sentence(text: str) -> str:
    """The first sentence of a matrix file's leading comment (its description)."""
    words = []
    for line in text.splitlines():
        if not line.startswith("#") or not line.strip("# "):
            if words:
                break
            continue
        words.append(line.lstrip("#").strip())
    about = " ".join(words)
    end = about.find(". ")
    return about[: end + 1] if end >= 0 else about


def matrix_rows() -> list[dict]:
    """name, cells, description (first comment line) and file of every shipped matrix."""
    from arflowbench.registry_files import shipped_matrices

    out = []
    for name, path in shipped_matrices().items():
        about = _first_sentence(path.read_text("utf-8"))
        out.append({"name": name, "file": str(path), "description": about})
    return out


def _matrices() -> list[str]:
    rows = matrix_rows()
    out = ["matrices (arflowbench run --matrix NAME; results go to results/NAME/):"]
    out += _rows([(r["name"], r["description"]) for r in rows], (18,))
    if rows:
        out.append(f"  files: {Path(rows[0]['file']).parent}")
    return out


def dataset_rows(data_root: Path | None) -> list[dict]:
    """name, whether its data is found here, and the places looked in, for every dataset."""
    from arflowbench.errors import ArflowbenchError
    from arflowbench.plugins import DATASET

    out = []
    for name in DATASET.names():
        try:
            cls = DATASET.load(name)
            places = cls.looked_for(data_root)
            try:
                cls(data_root=data_root).check_available()
                found = "found" if not places or "options" not in places[0] else "per matrix"
            except (ArflowbenchError, TypeError, ValueError):
                found = "per matrix" if places and "options" in places[0] else "missing"
        except ArflowbenchError as err:
            places, found = [str(err)], "unavailable"
        out.append({"name": name, "status": found, "looked_for": places})
    return out


def _datasets(data_root: Path | None) -> list[str]:
    out = ["datasets (looked for in --data-root, $ARFLOWBENCH_DATA, then the places shown):"]
    out += _rows([(r["name"], r["status"], "; ".join(r["looked_for"]))
                  for r in dataset_rows(data_root)], (14, 10))
    return out


def ls(what: What = typer.Argument(What.all, help="what to list: all, plugins, matrices or "
                                   "datasets"),
       as_json: bool = typer.Option(False, "--json", help="JSON instead of text (all: the plugins)"),
       data_root: Path | None = DATA_ROOT) -> None:
    """Plugins (kind, name, version, origin, availability), shipped matrices, and where each
    dataset is looked for."""
    if as_json:
        from arflowbench.plugins import all_info

        data = {What.matrices: matrix_rows, What.datasets: lambda: dataset_rows(data_root)}.get(
            what, lambda: [r.as_dict() for r in all_info()])()
        typer.echo(json.dumps(data, indent=2))
        return
    parts = {What.plugins: _plugins, What.matrices: _matrices,
             What.datasets: lambda: _datasets(data_root)}
    chosen = list(parts.values()) if what is What.all else [parts[what]]
    typer.echo("\n\n".join("\n".join(fn()) for fn in chosen))
