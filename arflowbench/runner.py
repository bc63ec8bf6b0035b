"""Expand a matrix, skip finished cells, run the rest one per process, record every outcome.

Every cell is resolved (validated) before the first one runs, so a bad config stops the matrix
before any work. A cell whose run_id already has an ``ok`` row is skipped; cells with the same
run_id are run once; cells that share a train_id share one training (the first trains, the
others reuse it); a half-done training resumes from its last checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from arflowbench.config import Cell, Matrix, RuntimeOptions
from arflowbench.errors import ConfigError, ResultsWriteError
from arflowbench.executors import LocalExecutor
from arflowbench.resolve import Resolved, resolve
from arflowbench.results import (
    RUNS_FILE,
    STATUS_FAILED,
    STATUS_OK,
    Job,
    RunRecord,
    append,
    environment_stamp,
    load,
    now_iso,
    run_artifacts,
)
from arflowbench.train_stage import is_trained

#: what `validate` says of a cell
CACHED, TO_TRAIN, TRAINED, SHARED, DUPLICATE = (
    "cached", "to train", "trained (shared)", "shared", "duplicate")


@dataclass
class Planned:
    cell: Cell
    resolved: Resolved
    #: CACHED, TO_TRAIN, TRAINED (reuses a finished training), SHARED (reuses the training an
    #: earlier cell of this plan does) or DUPLICATE (the same run as an earlier cell)
    state: str
    #: the earlier cell this one reuses (SHARED, DUPLICATE)
    same_as: int | None = None
    #: EMA snapshot steps the shared training must keep (every sibling's eval points)
    snapshot_steps: tuple[int, ...] = ()

    @property
    def cached(self) -> bool:
        return self.state == CACHED

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cell.values.items()) or "(base)"

    @property
    def describe(self) -> str:
        if self.resolved.unavailable:
            return f"unavailable: {self.resolved.unavailable}"
        if self.state == SHARED:
            return f"shared (training of cell {self.same_as})"
        if self.state == DUPLICATE:
            return f"duplicate of cell {self.same_as} (runs once)"
        return self.state


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
    """Resolve every cell (raising on the first bad one) and say what each will do."""
    results_dir = Path(runtime.results_dir)
    loaded = load(results_dir / RUNS_FILE)
    for msg in loaded.problems:
        warn(msg)
    done = {r.run_id for r in loaded.runs if r.status == STATUS_OK}
    out: list[Planned] = []
    first_run: dict[str, int] = {}
    first_train: dict[str, int] = {}
    for cell in matrix.cells():
        try:
            res = resolve(cell.spec, runtime)
        except ConfigError as err:
            label = ", ".join(f"{k}={v}" for k, v in cell.values.items()) or "(base)"
            raise type(err)(f"{matrix.name} cell {cell.index} [{label}]: {err}") from None
        p = Planned(cell, res, TO_TRAIN)
        if res.run_id in first_run:
            p.state, p.same_as = DUPLICATE, first_run[res.run_id]
        elif res.run_id in done:
            p.state = CACHED
        elif is_trained(results_dir, res.train_id):
            p.state = TRAINED
        elif res.train_id in first_train:
            p.state, p.same_as = SHARED, first_train[res.train_id]
        first_run.setdefault(res.run_id, cell.index)
        if p.state not in (CACHED, DUPLICATE):
            first_train.setdefault(res.train_id, cell.index)
        if not p.cached and res.run_id in loaded.broken_run_ids:
            warn(f"warning: cell {cell.index} ({res.run_id}) will run again: its row is corrupt")
        out.append(p)
    snaps: dict[str, set[int]] = {}
    for p in out:
        snaps.setdefault(p.resolved.train_id, set()).update(p.resolved.spec.eval_steps())
    for p in out:
        p.snapshot_steps = tuple(sorted(snaps[p.resolved.train_id]))
    return out


def _row_count(runs_file: Path, run_id: str) -> int:
    return sum(1 for r in load(runs_file).runs if r.run_id == run_id)


def make_job(p: Planned, runtime: RuntimeOptions) -> Job:
    return Job(run_id=p.resolved.run_id, train_id=p.resolved.train_id, spec=p.cell.spec,
               runtime=runtime, cell=p.cell.values, snapshot_steps=list(p.snapshot_steps))


def run_matrix(matrix: Matrix, runtime: RuntimeOptions, executor=None, echo=print,
               warn=_stderr) -> dict[str, int]:
    """Run every pending cell; returns counts of ok / failed / cached / skipped cells.
    `echo` gets progress lines, `warn` warnings (corrupt rows, re-runs)."""
    results_dir = Path(runtime.results_dir)
    planned = plan(matrix, runtime, warn=warn)  # bad input stops here, before anything is written
    check_results_dir(results_dir)
    executor = executor or LocalExecutor()
    runs_file = results_dir / RUNS_FILE
    counts = {"ok": 0, "failed": 0, "cached": 0, "skipped": 0}
    runtime = runtime.model_copy(update={"matrix": matrix.name})
    for i, p in enumerate(planned, 1):
        head = f"[{i}/{len(planned)}] {p.resolved.run_id} {p.label}"
        if p.cached or p.state == DUPLICATE:
            echo(f"{head}: {p.describe}")
            counts["cached"] += 1
            continue
        if p.resolved.unavailable and matrix.on_unavailable == "skip":
            echo(f"{head}: skipped (unavailable here: {p.resolved.unavailable})")
            counts["skipped"] += 1
            continue
        echo(f"{head}: running ({p.describe})")
        job = make_job(p, runtime)
        before = _row_count(runs_file, job.run_id)
        try:  # our own writes (job file, log, failed row) failing stop the matrix, no crash
            outcome = executor.run(job, run_artifacts(results_dir, job.run_id))
            if _row_count(runs_file, job.run_id) == before:  # died without writing its row
                why = (f"killed by signal {-outcome.returncode}" if outcome.returncode < 0
                       else f"exit code {outcome.returncode}")
                append(runs_file, failed_record(job, f"cell process {why}: "
                                                     f"{outcome.log_tail.strip()[-500:]}"))
        except (ResultsWriteError, OSError) as err:
            why = err if isinstance(err, ResultsWriteError) else \
                f"{err.filename or run_artifacts(results_dir, job.run_id)}: {err.strerror or err}"
            raise ResultsWriteError(f"stopped the matrix at cell {i}/{len(planned)}: "
                                    f"{why}") from None
        status = STATUS_OK if outcome.returncode == 0 else STATUS_FAILED
        counts["ok" if status == STATUS_OK else "failed"] += 1
        echo(f"{head}: {status}" + ("" if status == STATUS_OK else
                                    f" ({_last_error(runs_file, job.run_id)})"))
    return counts


def _last_error(runs_file: Path, run_id: str) -> str:
    rows = [r for r in load(runs_file).runs if r.run_id == run_id]
    return (rows[-1].error or "") if rows else ""


def failed_record(job: Job, error: str) -> RunRecord:
    """The row of a cell whose process died without writing its own."""
    return RunRecord(run_id=job.run_id, train_id=job.train_id, status=STATUS_FAILED,
                     matrix=job.runtime.matrix, cell=job.cell,
                     spec=job.spec.model_dump(mode="json"), env=environment_stamp(),
                     started=now_iso(), finished=now_iso(), error=error)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `arflowbench run --matrix FILE`")
