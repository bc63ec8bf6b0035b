"""Expand a matrix, skip finished cells, run the rest one per process, record every outcome.

Every cell is resolved (validated) before the first one runs, so a bad config stops the matrix
before any work. A cell whose run_id already has an ``ok`` row is skipped; cells with the same
run_id are run once; cells that share a train_id share one training (the first trains, the
others reuse it); a half-done training resumes from its last checkpoint. A cell another live
process is running (its claim, ``artifacts/<run_id>/.claim``, is held) is skipped. The
runner's own failed writes and SIGTERM are handled by `runner_guards`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from arflowbench.cell import CLAIM, EXIT_SKIPPED
from arflowbench.config import RuntimeOptions
from arflowbench.errors import ConfigError
from arflowbench.executors import LocalExecutor
from arflowbench.locks import peek
from arflowbench.matrix import Cell, Matrix
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
from arflowbench.runner_guards import own_writes, sigterm_interrupts
from arflowbench.train_stage import is_trained

#: what `validate` says of a cell
CACHED, TO_TRAIN, TRAINED, SHARED, DUPLICATE, SAME_RUN = (
    "cached", "to train", "trained (shared)", "shared", "duplicate", "same run")
#: `validate` only: the cell's data is not prepared on this machine (ids provisional)
DATA_MISSING = "data missing"


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
    #: the matrix name its row carries (``matrix/group`` in a grouped matrix)
    matrix_label: str = ""

    @property
    def cached(self) -> bool:
        return self.state == CACHED

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cell.values.items()) or "(base)"

    @property
    def describe(self) -> str:
        if self.state == DATA_MISSING:
            return DATA_MISSING
        if self.resolved.unavailable:
            return f"unavailable: {self.resolved.unavailable}"
        if self.state == SHARED:
            return f"shared (training of cell {self.same_as})"
        if self.state == DUPLICATE:
            return f"duplicate of cell {self.same_as} (runs once)"
        if self.state == SAME_RUN:
            return (f"same run as cell {self.same_as} (recorded here too)" if self.same_as
                    is not None else "cached (run in another group; recorded here too)")
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


def plan(matrix: Matrix, runtime: RuntimeOptions, warn=_stderr,
         check_data: bool = True, missing_data_ok: bool = False) -> list[Planned]:
    """Resolve every cell (raising on the first bad one) and say what each will do;
    ``check_data=False`` (`validate` with data missing) checks everything but the data. With
    `missing_data_ok` (`validate`), a cell whose data is not prepared yet is planned as
    DATA_MISSING (its `resolved.data_missing` says what to run) instead of stopping the plan."""
    results_dir = Path(runtime.results_dir)
    loaded = load(results_dir / RUNS_FILE)
    for msg in loaded.problems:
        warn(msg)
    done = {(r.matrix, r.run_id) for r in loaded.runs if r.status == STATUS_OK}
    done_anywhere = {run_id for _, run_id in done}
    out: list[Planned] = []
    first_run: dict[tuple[str, str], int] = {}  # (matrix label, run_id) -> cell
    first_any: dict[str, int] = {}
    first_train: dict[str, int] = {}
    for cell in matrix.cells():
        try:
            res = resolve(cell.spec, runtime, check_data=check_data,
                          missing_data_ok=missing_data_ok)
        except ConfigError as err:
            label = ", ".join(f"{k}={v}" for k, v in cell.values.items()) or "(base)"
            raise type(err)(f"{matrix.name} cell {cell.index} [{label}]: {err}") from None
        label = matrix.label(cell)
        p = Planned(cell, res, TO_TRAIN, matrix_label=label)
        if (label, res.run_id) in first_run:
            p.state, p.same_as = DUPLICATE, first_run[(label, res.run_id)]
        elif (label, res.run_id) in done:
            p.state = CACHED
        elif res.run_id in done_anywhere or res.run_id in first_any:
            # the same run in another group: run once, recorded under each group
            p.state, p.same_as = SAME_RUN, first_any.get(res.run_id)
        elif is_trained(results_dir, res.train_id):
            p.state = TRAINED
        elif res.train_id in first_train:
            p.state, p.same_as = SHARED, first_train[res.train_id]
        if res.data_missing:
            p.state = DATA_MISSING
        first_run.setdefault((label, res.run_id), cell.index)
        first_any.setdefault(res.run_id, cell.index)
        if p.state not in (CACHED, DUPLICATE, SAME_RUN):
            first_train.setdefault(res.train_id, cell.index)
        if not p.cached and res.run_id in loaded.broken_run_ids:
            warn(f"warning: cell {cell.index} ({res.run_id}) will run again: its row is corrupt")
        out.append(p)
    _warn_unequal_images(out, warn)
    snaps: dict[str, set[int]] = {}
    for p in out:
        snaps.setdefault(p.resolved.train_id, set()).update(p.resolved.spec.eval_steps())
    for p in out:
        p.snapshot_steps = tuple(sorted(snaps[p.resolved.train_id]))
    return out


def _warn_unequal_images(planned: list[Planned], warn) -> None:
    """Cells compared in one matrix should see the same number of training images."""
    seen: dict[int, list[int]] = {}
    for p in planned:
        t = p.resolved.spec.train
        seen.setdefault(t.steps * t.batch_size, []).append(p.cell.index)
    if len(seen) > 1:
        parts = "; ".join(f"{n} images: cells {', '.join(map(str, cells))}"
                          for n, cells in sorted(seen.items()))
        warn(f"warning: cells see different numbers of training images (train.steps x "
             f"train.batch_size): {parts}; compare them along the train axes only")


def _row_count(runs_file: Path, run_id: str) -> int:
    return sum(1 for r in load(runs_file).runs if r.run_id == run_id)


def make_job(p: Planned, runtime: RuntimeOptions) -> Job:
    return Job(run_id=p.resolved.run_id, train_id=p.resolved.train_id, spec=p.cell.spec,
               runtime=runtime, cell=p.cell.values, snapshot_steps=list(p.snapshot_steps))


def run_matrix(matrix: Matrix, runtime: RuntimeOptions, executor=None, echo=print,
               warn=_stderr, poll_s: float = 0.2,
               cells: Collection[int] | None = None) -> dict[str, int]:
    """Run every pending cell (or only those whose index is in `cells`); returns counts of
    ok / failed / cached / skipped cells among them. `echo` gets progress lines, `warn`
    warnings (corrupt rows, re-runs, stale claims). Every cell is still planned: trainings
    keep the snapshots of every cell sharing them, whichever cells run now.

    Up to `executor.max_parallel` cells run at once (local: 1), each recorded as it ends. A
    cell sharing the training of an earlier cell starts once that one has ended (it would only
    wait on the training claim). A cell claimed by a live process (another runner, an orphan)
    is skipped with the holder named. SIGTERM or Ctrl-C stops the running cells, then raises."""
    results_dir = Path(runtime.results_dir)
    planned = plan(matrix, runtime, warn=warn)  # bad input stops here, before anything is written
    check_results_dir(results_dir)
    executor = executor or LocalExecutor()
    runs_file = results_dir / RUNS_FILE
    counts = {"ok": 0, "failed": 0, "cached": 0, "skipped": 0}
    heads = {p.cell.index: f"[{i}/{len(planned)}] {p.resolved.run_id} {p.label}"
             for i, p in enumerate(planned, 1)}
    queue: list[Planned] = []
    for p in planned:
        if cells is not None and p.cell.index not in cells:
            continue  # --cells: left as it is, not counted
        head = heads[p.cell.index]
        if p.state == SAME_RUN and p.same_as is None and _record_same_run(runs_file, p):
            echo(f"{head}: cached ({p.describe}; recorded under {p.matrix_label})")
            counts["cached"] += 1
            continue
        if p.cached or p.state == DUPLICATE:
            echo(f"{head}: {p.describe}")
            counts["cached"] += 1
        elif p.resolved.unavailable and matrix.on_unavailable == "skip":
            echo(f"{head}: skipped (unavailable here: {p.resolved.unavailable})")
            counts["skipped"] += 1
        else:
            queue.append(p)
    # cells of one training run back to back: a session that ends early leaves every cell of
    # the trainings it finished done (artifacts, unlike rows, may not outlive the machine)
    # (a training already finished here goes first: its cells need no training at all)
    first: dict[str, int] = {}
    for p in planned:
        first.setdefault(p.resolved.train_id, p.cell.index)
    queue.sort(key=lambda p: (p.state != TRAINED, first[p.resolved.train_id], p.cell.index))
    running: dict[int, tuple[Planned, Job, object, int]] = {}
    try:
        with sigterm_interrupts():
            while queue or running:
                _start_ready(queue, running, executor, runtime, heads, counts, echo, warn)
                ended = [i for i, (_, _, handle, _) in running.items() if handle.done()]
                for i in ended:
                    p, job, handle, before = running.pop(i)
                    with own_writes(f"recording cell {i} ({job.run_id})"):
                        status, detail = _record(job, handle.outcome(), before, runs_file)
                    counts[status] += 1
                    echo(f"{heads[i]}: {status}" + (f" ({detail})" if detail else ""))
                if not ended:
                    time.sleep(poll_s)
    finally:
        for _, _, handle, _ in running.values():  # interrupted: nothing outlives the runner
            handle.stop()
    return counts


def _start_ready(queue, running, executor, runtime, heads, counts, echo, warn) -> None:
    """Start queued cells while there is room; a SHARED cell waits for the cell it shares with."""
    results_dir = Path(runtime.results_dir)
    waiting_on = {p.cell.index for p in queue} | set(running)
    for p in list(queue):
        if len(running) >= executor.max_parallel:
            return
        if p.state in (SHARED, SAME_RUN) and p.same_as in waiting_on:
            continue
        queue.remove(p)
        waiting_on.discard(p.cell.index)
        head = heads[p.cell.index]
        if p.state == SAME_RUN and _record_same_run(results_dir / RUNS_FILE, p):
            echo(f"{head}: cached ({p.describe}; recorded under {p.matrix_label})")
            counts["cached"] += 1
            continue
        held, stamp = peek(run_artifacts(results_dir, p.resolved.run_id) / CLAIM)
        if held:
            echo(f"{head}: skipped (held by {stamp or 'another process'})")
            counts["skipped"] += 1
            continue
        if stamp:
            warn(f"warning: cell {p.cell.index} ({p.resolved.run_id}) was claimed by {stamp}, "
                 "which died; taking it over")
        echo(f"{head}: running ({p.describe})")
        job = make_job(p, runtime.model_copy(update={"matrix": p.matrix_label}))
        before = _row_count(results_dir / RUNS_FILE, job.run_id)
        art = run_artifacts(results_dir, job.run_id)
        with own_writes(f"starting cell {p.cell.index} ({art})"):
            handle = executor.submit(job, art)
        running[p.cell.index] = (p, job, handle, before)


def _record(job: Job, outcome, before: int, runs_file: Path) -> tuple[str, str]:
    """(ok / failed / skipped, why) for an ended cell; a failed row if it died without its own."""
    if outcome.returncode == EXIT_SKIPPED:  # claimed (or finished) by another process meanwhile
        lines = outcome.log_tail.strip().splitlines()
        return "skipped", lines[-1] if lines else ""
    if _row_count(runs_file, job.run_id) == before:  # died without writing its row
        why = (f"killed by signal {-outcome.returncode}" if outcome.returncode < 0
               else f"exit code {outcome.returncode}")
        append(runs_file, failed_record(job, f"cell process {why}: "
                                             f"{outcome.log_tail.strip()[-500:]}"))
    if outcome.returncode == 0:
        return STATUS_OK, ""
    return STATUS_FAILED, _last_error(runs_file, job.run_id)


def _record_same_run(runs_file: Path, p: Planned) -> bool:
    """Record a run finished under another group under this cell's group too (a copy of its
    latest ok row with this group's label and axis values); False if it has no ok row."""
    rows = [r for r in load(runs_file).runs
            if r.run_id == p.resolved.run_id and r.status == STATUS_OK]
    if not rows:
        return False
    append(runs_file, rows[-1].model_copy(update={"matrix": p.matrix_label,
                                                   "cell": p.cell.values}))
    return True


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
