"""Executors run one matrix cell each, isolated: a crash or an out-of-memory kill fails one cell,
never the matrix.

- `LocalExecutor`: a subprocess per cell (``python -m arflowbench.cell JOB.json``), one at a time.
- `SubmititExecutor`: one Slurm job per cell through submitit (``cluster="local"`` runs the same
  path on this machine: that is how it is tested). Caching and resume are the runner's, so they
  apply unchanged.

A cell writes its own row. If its process dies without one (killed by a signal, OOM), the
executor returns the exit status and the tail of its log, and the runner records the failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arflowbench.results import Job

LOG_NAME = "cell.log"


@dataclass
class CellOutcome:
    returncode: int
    log_tail: str


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def write_job(job: Job, art_dir: Path) -> Path:
    art_dir.mkdir(parents=True, exist_ok=True)
    path = art_dir / "job.json"
    path.write_text(job.model_dump_json(indent=2))
    return path


class LocalExecutor:
    name = "local"

    def run(self, job: Job, art_dir: Path) -> CellOutcome:
        job_file = write_job(job, art_dir)
        log = art_dir / LOG_NAME
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "ab") as err:
            # stdout stays on the terminal (progress bars); stderr is kept for the failure record
            proc = subprocess.run([sys.executable, "-m", "arflowbench.cell", str(job_file)],
                                  stderr=err, env=env)
        return CellOutcome(proc.returncode, _tail(log))


class SubmititExecutor:
    """Submits each cell as a job; `cluster` is "slurm" on a cluster, "local" for tests."""

    name = "submitit"

    def __init__(self, folder: Path, cluster: str | None = None, **slurm_params: Any):
        self.folder, self.cluster, self.params = Path(folder), cluster, slurm_params

    def run(self, job: Job, art_dir: Path) -> CellOutcome:
        import submitit

        from arflowbench.cell import main as cell_main

        job_file = write_job(job, art_dir)
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        if self.params:
            ex.update_parameters(**self.params)
        handle = ex.submit(cell_main, [str(job_file)])
        try:
            rc = int(handle.result())
        except Exception as err:  # noqa: BLE001 - the job died: recorded as that cell's failure
            return CellOutcome(1, f"{type(err).__name__}: {err}"[-2000:])
        return CellOutcome(rc, _tail(Path(handle.paths.stderr)))
