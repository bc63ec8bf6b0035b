"""The matrices and published numbers that ship with arflowbench, found by name.

One source of truth: the repository's top-level ``registry/`` folder (``matrices/*.toml``,
``paper/*.toml``). A wheel carries the same files as package data under ``arflowbench/registry/``
(``setup.py`` maps the folder into the package), so an installed tool finds them without a
checkout: ``arflowbench run --matrix quickstart``. A ``--matrix`` that names an existing file is
that file; otherwise it is looked up among the shipped matrices by file stem or ``name``.

Layout of results (one place, documented in the README): each matrix's rows go to
``results/<matrix name>/`` (`default_results_dir`), its report to ``results/<name>/report/``
(`default_report_dir`, ignored by git), benchmark rows to ``results/bench/``.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from arflowbench.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_HERE = Path(__file__).resolve().parent
#: where the registry is looked for: inside an installed wheel, then beside the package (checkout)
SEARCH = (_HERE / "registry", _HERE.parent / "registry")
#: the folder every results dir defaults under, relative to the working directory
RESULTS_ROOT = Path("results")
#: the results dir of `arflowbench bench ...`
BENCH_RESULTS = RESULTS_ROOT / "bench"
#: a report's folder inside its results dir
REPORT_DIR = "report"


def registry_dir() -> Path | None:
    """The registry folder this installation reads (None: neither a wheel nor a checkout)."""
    return next((d for d in SEARCH if (d / "matrices").is_dir()), None)


def paper_dir() -> Path | None:
    """``registry/paper``: the published numbers the report shows beside measured ones."""
    d = registry_dir()
    return d / "paper" if d is not None and (d / "paper").is_dir() else None


def _declared_name(path: Path) -> str:
    try:
        name = tomllib.loads(path.read_text("utf-8")).get("name", path.stem)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return path.stem
    return name if isinstance(name, str) else path.stem


def shipped_matrices() -> dict[str, Path]:
    """Matrix name (its ``name``, else the file stem) -> file, for every shipped matrix."""
    d = registry_dir()
    if d is None:
        return {}
    return {_declared_name(p): p for p in sorted((d / "matrices").glob("*.toml"))}


def matrix_file(arg: str | Path) -> Path:
    """``--matrix`` as a file: an existing path, else a shipped matrix by name or file stem.
    Unknown names raise `ConfigError` with the closest shipped names."""
    path = Path(arg)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path  # a path (Matrix.from_file says if it is missing)
    shipped = shipped_matrices()
    by_stem = {p.stem: p for p in shipped.values()}
    hit = shipped.get(str(arg)) or by_stem.get(str(arg))
    if hit is not None:
        return hit
    names = sorted(shipped)
    close = difflib.get_close_matches(str(arg), names + sorted(by_stem), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
    raise ConfigError(f"--matrix {arg!r}: no such file and no shipped matrix of that name "
                      f"(shipped: {', '.join(names) or 'none'}){hint}")


def default_results_dir(matrix_name: str) -> Path:
    """``results/<matrix name>``: where a matrix's rows go unless ``--results-dir`` says."""
    return RESULTS_ROOT / matrix_name


def default_report_dir(results_dir: Path) -> Path:
    """``<results dir>/report``: where `arflowbench report` writes unless ``--out`` says."""
    return Path(results_dir) / REPORT_DIR
