"""`arflowbench validate`'s table: one line per cell (run_id, train_id, state, axes), warnings for
data that is missing here, rows left by older code versions, and a summary line whose counts add
up (cells = to run + cached + duplicates + unavailable)."""

from __future__ import annotations

from pathlib import Path

import typer

from arflowbench.config import RuntimeOptions
from arflowbench.matrix import Matrix


def _warn(msg: str) -> None:
    typer.echo(msg, err=True)


def missing_data(m: Matrix, rt: RuntimeOptions) -> list[str]:
    """One warning per dataset of the matrix whose files are not found here (cells still listed)."""
    from arflowbench.errors import DataNotFoundError
    from arflowbench.plugins import DATASET

    out, seen = [], set()
    for cell in m.cells():
        data = cell.spec.data
        key = (data.name, repr(sorted(data.options.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            cls = DATASET.load(data.name)
            cls(cls.Config(**data.options), data_root=rt.data_root).check_available()
        except DataNotFoundError as err:  # other data problems: the plan reports them
            out.append(f"warning: {err}")
        except Exception:  # noqa: BLE001 - bad options are reported by the plan itself
            continue
    return out


def older_rows(m: Matrix, planned, results_dir: Path) -> int:
    """Cells to run whose axis values already have an ok row under another run_id: rows written
    by an older code version (or other spec), which `report` still shows."""
    from arflowbench.results import RUNS_FILE, STATUS_OK, load

    rows = [r for r in load(results_dir / RUNS_FILE).runs if r.status == STATUS_OK]
    old = {(r.matrix, r.run_id): r for r in rows}
    by_cell = {(r.matrix, repr(sorted(r.cell.items()))) for r in old.values()}
    return sum((p.matrix_label, repr(sorted(p.cell.values.items()))) in by_cell
               for p in planned if not p.cached)


def print_plan(m: Matrix, rt: RuntimeOptions) -> list:
    """Print the plan of `m` under `rt`; returns the planned cells (for ``--estimate``)."""
    from arflowbench.runner import CACHED, DATA_MISSING, DUPLICATE, SAME_RUN, TO_TRAIN, plan

    problems = missing_data(m, rt)
    for msg in problems:
        _warn(msg)
    planned = plan(m, rt, warn=_warn, check_data=not problems, missing_data_ok=True)
    typer.echo(f"{'cell':>4}  {'run_id':12}  {'train_id':12}  {'state':28}  axes")
    for p in planned:  # ids of cells without their data are unknown until it is prepared
        ids = (f"{'-':12}  {'-':12}" if p.state == DATA_MISSING
               else f"{p.resolved.run_id}  {p.resolved.train_id}")
        typer.echo(f"{p.cell.index:4d}  {ids}  {p.describe:28}  {p.label}")
    waiting = [p for p in planned if p.state == DATA_MISSING]
    for msg in dict.fromkeys(line for p in waiting for line in p.resolved.data_missing.splitlines()):
        _warn(f"warning: {msg}")
    unavailable = [p for p in planned if p.resolved.unavailable]
    rest = [p for p in planned if not p.resolved.unavailable]
    cached = sum(p.state == CACHED or (p.state == SAME_RUN and p.same_as is None) for p in rest)
    dupes = sum(p.state == DUPLICATE or (p.state == SAME_RUN and p.same_as is not None)
                for p in rest)
    to_run = len(rest) - cached - dupes
    trainings = len({p.resolved.train_id for p in rest if p.state in (TO_TRAIN, DATA_MISSING)})
    older = older_rows(m, rest, Path(rt.results_dir))
    if older:
        _warn(f"note: {older} cell(s) to run have rows from an older code version or spec under "
              f"{rt.results_dir} (same axes, another run_id); report shows those rows until "
              "the cells run again")
    typer.echo(f"{m.name}: {len(planned)} cells, {to_run} to run ({trainings} trainings), "
               f"{cached} cached, {dupes} duplicates, {len(unavailable)} unavailable"
               + (f"; data missing here: {len(problems)} dataset(s)" if problems else "")
               + (f", {len(waiting)} waiting for data" if waiting else ""))
    return planned
