"""Expand a matrix, skip finished cells, run the rest one per process, record every outcome.

Every cell is resolved (validated) before the first one runs, so a bad config stops the matrix
before any work. A cell whose run_id already has an ``ok`` row is skipped; a half-done cell
resumes from its last checkpoint (the trainer finds it under artifacts/<run_id>/).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arflowbench.config import Cell, Matrix, RuntimeOptions
from arflowbench.errors import ConfigError
from arflowbench.executors import LocalExecutor
from arflowbench.resolve import Resolved, resolve
from arflowbench.results import (
    ARTIFACTS_DIR,
    RUNS_FILE,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_OK,
    append_row,
    environment_stamp,
    now_iso,
    read_rows,
)


@dataclass
class Planned:
    cell: Cell
    resolved: Resolved
    cached: bool

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cell.values.items()) or "(base)"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def check_results_dir(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"results dir {results_dir} is not writable: {err.strerror}") from None


def plan(matrix: Matrix, runtime: RuntimeOptions, warn=_stderr) -> list[Planned]:
    """Resolve every cell (raising on the first bad one) and mark the cached ones."""
    runs_file = Path(runtime.results_dir) / RUNS_FILE
    read = read_rows(runs_file)
    for msg in read.describe_problems(runs_file):
        warn(msg)
    done = {r.get("run_id") for r in read.rows if r.get("status") == STATUS_OK}
    broken = {rid for _, _, rid in read.problems if rid}
    out = []
    for cell in matrix.cells():
        try:
            res = resolve(cell.spec, runtime)
        except ConfigError as err:
            label = ", ".join(f"{k}={v}" for k, v in cell.values.items()) or "(base)"
            raise type(err)(f"{matrix.name} cell {cell.index} [{label}]: {err}") from None
        p = Planned(cell, res, res.run_id in done)
        if not p.cached and res.run_id in broken:
            warn(f"warning: cell {cell.index} ({res.run_id}) will run again: its row is corrupt")
        out.append(p)
    return out


def _row_count(runs_file: Path, run_id: str) -> int:
    return sum(1 for r in read_rows(runs_file).rows if r.get("run_id") == run_id)


def run_matrix(matrix: Matrix, runtime: RuntimeOptions, executor=None, echo=print,
               warn=_stderr) -> dict[str, int]:
    """Run every pending cell; returns counts of ok / failed / cached / skipped cells.
    `echo` gets progress lines, `warn` warnings (corrupt rows, re-runs)."""
    results_dir = Path(runtime.results_dir)
    check_results_dir(results_dir)
    planned = plan(matrix, runtime, warn=warn)
    executor = executor or LocalExecutor()
    runs_file = results_dir / RUNS_FILE
    counts = {"ok": 0, "failed": 0, "cached": 0, "skipped": 0}
    runtime = runtime.model_copy(update={"matrix": matrix.name})
    for i, p in enumerate(planned, 1):
        head = f"[{i}/{len(planned)}] {p.resolved.run_id} {p.label}"
        if p.cached:
            echo(f"{head}: cached")
            counts["cached"] += 1
            continue
        if p.resolved.unavailable and matrix.on_unavailable == "skip":
            echo(f"{head}: skipped (unavailable here: {p.resolved.unavailable})")
            counts["skipped"] += 1
            continue
        echo(f"{head}: running")
        job = {"run_id": p.resolved.run_id, "spec": p.cell.spec.model_dump(mode="json"),
               "runtime": runtime.model_dump(mode="json"), "cell": p.cell.values}
        before = _row_count(runs_file, p.resolved.run_id)
        outcome = executor.run(job, results_dir / ARTIFACTS_DIR / p.resolved.run_id)
        if _row_count(runs_file, p.resolved.run_id) == before:  # died without writing its row
            why = (f"killed by signal {-outcome.returncode}" if outcome.returncode < 0
                   else f"exit code {outcome.returncode}")
            append_row(runs_file, failed_row(job, f"cell process {why}: "
                                                  f"{outcome.log_tail.strip()[-500:]}"))
        status = STATUS_OK if outcome.returncode == 0 else STATUS_FAILED
        counts["ok" if status == STATUS_OK else "failed"] += 1
        echo(f"{head}: {status}" + ("" if status == STATUS_OK else
                                    f" ({_last_error(runs_file, p.resolved.run_id)})"))
    return counts


def _last_error(runs_file: Path, run_id: str) -> str:
    rows = [r for r in read_rows(runs_file).rows if r.get("run_id") == run_id]
    return (rows[-1].get("error") or "") if rows else ""


def failed_row(job: dict[str, Any], error: str) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "kind": "run", "run_id": job["run_id"],
            "status": STATUS_FAILED, "matrix": job["runtime"].get("matrix", ""),
            "cell": job.get("cell", {}), "spec": job["spec"], "metrics": {}, "curves": {},
            "artifacts": {}, "env": environment_stamp(), "started": now_iso(),
            "finished": now_iso(), "error": error}


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `arflowbench run --matrix FILE`")
