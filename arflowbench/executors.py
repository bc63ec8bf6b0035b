"""Executors run one matrix cell each, isolated: a crash or an out-of-memory kill fails one cell,
never the matrix.

- `LocalExecutor`: a subprocess per cell (``python -P -m arflowbench.cell JOB.json``, or under
  torch's launcher with ``nproc_per_node`` > 1), one at a time: throughput is measured without
  contention.
- `SubmititExecutor` (`arflowbench.slurm`): one Slurm job per cell, up to `max_parallel` at
  once; ``cluster="local"`` runs the same path on this machine (that is how it is tested).

An executor's `submit` starts a cell and returns a `Running` handle the runner polls (`done`),
reads (`outcome`) or stops (`stop`, when the runner itself is interrupted). Caching, claims and
resume belong to the runner and the cell, so they apply to every executor unchanged.

A cell writes its own row. If its process dies without one (killed by a signal, OOM), the
executor returns the exit status and the tail of its log, and the runner records the failure.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from arflowbench.launch import child_setup, module_argv, safe_env, torchrun_argv

if TYPE_CHECKING:
    from arflowbench.results import Job

LOG_NAME = "cell.log"
CELL_MODULE = "arflowbench.cell"
#: seconds a stopped cell gets between SIGTERM and SIGKILL
STOP_GRACE_S = 5.0


@dataclass
class CellOutcome:
    returncode: int
    log_tail: str


class Running(Protocol):
    """A started cell."""

    def done(self) -> bool: ...

    def outcome(self) -> CellOutcome: ...

    def stop(self) -> None: ...


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def write_job(job: Job, art_dir: Path) -> Path:
    art_dir.mkdir(parents=True, exist_ok=True)
    path = art_dir / "job.json"
    path.write_text(job.model_dump_json(indent=2))
    return path


def cell_argv(job_file: Path, nproc_per_node: int = 1) -> list[str]:
    """The command of one cell: the installed package only (`launch`), under torchrun for N > 1."""
    if nproc_per_node > 1:
        return torchrun_argv(nproc_per_node, CELL_MODULE, str(job_file))
    return module_argv(CELL_MODULE, str(job_file))


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, a grace period, then SIGKILL; waits until the process is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalProcess:
    """A cell running as a child of this process."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log

    def done(self) -> bool:
        return self.proc.poll() is not None

    def outcome(self) -> CellOutcome:
        return CellOutcome(self.proc.wait(), tail(self.log))

    def stop(self) -> None:
        stop_process(self.proc)


class LocalExecutor:
    """One cell at a time in a child process, which dies with this one (parent-death signal).

    With `nproc_per_node` > 1 the cell runs under ``torch.distributed.run``; the launcher gets
    SIGTERM when this process dies, so it can stop its workers (they also die with it)."""

    name = "local"
    max_parallel = 1

    def __init__(self, nproc_per_node: int = 1):
        self.nproc_per_node = nproc_per_node

    def submit(self, job: Job, art_dir: Path) -> LocalProcess:
        job_file = write_job(job, art_dir)
        log = art_dir / LOG_NAME
        death = signal.SIGTERM if self.nproc_per_node > 1 else signal.SIGKILL
        with open(log, "ab") as err:
            # stdout stays on the terminal (progress bars); stderr is kept for the failure record
            proc = subprocess.Popen(cell_argv(job_file, self.nproc_per_node), stderr=err,
                                    env=safe_env(), preexec_fn=child_setup(death))
        return LocalProcess(proc, log)

    def run(self, job: Job, art_dir: Path) -> CellOutcome:
        """Run one cell to its end (stopped if this process is interrupted meanwhile)."""
        running = self.submit(job, art_dir)
        try:
            return running.outcome()
        finally:
            running.stop()
