"""Published numbers (``registry/paper/*.toml``): parsed strictly, shown by the report beside
measured ones and always labelled as published, never mixed into measured columns."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class PublishedResult(BaseModel):
    """One published number, as a ``[[result]]`` table of a ``registry/paper/*.toml`` file."""

    model_config = {"extra": "forbid", "frozen": True}
    method: str
    model: str | None = None
    dataset: str
    resolution: int
    #: guidance scale; 1.0 means no guidance, absent means the source does not state it
    cfg_scale: float | None = None
    sampler: str | None = None
    training_steps: str | None = None
    fid: float
    source: str
    note: str | None = None


class PaperFile(BaseModel):
    """A ``registry/paper/*.toml`` file: an optional ``[paper]`` table and ``[[result]]`` rows."""

    model_config = {"extra": "forbid", "frozen": True}
    paper: dict[str, str] = {}
    result: list[PublishedResult]


def default_paper_dir() -> Path | None:
    """The shipped ``registry/paper`` (inside the wheel, or the checkout's)."""
    from arflowbench.registry_files import paper_dir

    return paper_dir()


def load_published(paper_dir: Path | None) -> tuple[pd.DataFrame, list[str]]:
    """All published results under ``paper_dir`` (one row each) and one warning per bad file."""
    rows, problems = [], []
    for path in sorted(Path(paper_dir).glob("*.toml")) if paper_dir else []:
        try:
            parsed = PaperFile.model_validate(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, ValidationError, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append(f"warning: {path}: skipped published numbers: {first}")
            continue
        rows += [{**r.model_dump(), "file": path.name} for r in parsed.result]
    return pd.DataFrame(rows), problems
