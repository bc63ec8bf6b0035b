"""Slurm through submitit: a matrix's ``[slurm]`` table, the job a cell runs in, the executor.

Matrix file::

    [slurm]                  # every key optional; CLI `--slurm KEY=VALUE` overrides
    partition = "gpu"
    nodes = 1
    gpus_per_node = 8
    tasks_per_node = 8       # one task per rank: submitit's distributed environment
    cpus_per_task = 10
    timeout_min = 240
    account = "my-account"
    qos = "normal"

Each pending cell is one job (`CellTask`) that starts the cell as a child process (installed
package only, dying with the task, deaf to the preemption signal, which the task handles). On a
time limit or preemption submitit calls `CellTask.checkpoint`: the job is requeued and the cell
resumes from its last training checkpoint (the trainer is deterministic per (seed, step)).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from arflowbench.errors import ConfigError
from arflowbench.executors import LOG_NAME, CellOutcome, cell_argv, tail, write_job
from arflowbench.launch import HAS_SAFE_PATH, child_setup, safe_env

if TYPE_CHECKING:
    from arflowbench.results import Job

#: the local cluster's own default limit is 2 minutes: far too short for a cell
LOCAL_TIMEOUT_MIN = 24 * 60


class SlurmSpec(BaseModel):
    """Resources of each cell's job (unset: submitit's and the cluster's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None
    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    #: tasks per node; > 1 launches one rank per task (MASTER_ADDR, RANK, WORLD_SIZE exported)
    tasks_per_node: int | None = Field(None, ge=1)
    cpus_per_task: int | None = Field(None, ge=1)
    #: wall-clock limit of one attempt; a job that reaches it is requeued and resumes
    timeout_min: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None

    def submitit_parameters(self) -> dict[str, Any]:
        """The keyword arguments of `submitit.AutoExecutor.update_parameters`."""
        slurm_only = {"partition", "account", "qos", "constraint"}
        return {(f"slurm_{k}" if k in slurm_only else k): v
                for k, v in self.model_dump(exclude_none=True).items()}

    def merged(self, overrides: list[str]) -> SlurmSpec:
        """This table with ``KEY=VALUE`` overrides (CLI flags), validated alike."""
        values = self.model_dump(exclude_none=True)
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--slurm expects KEY=VALUE, got {item!r}")
            values[key.strip()] = value.strip()
        return slurm_spec(values, "--slurm")


def slurm_spec(values: dict[str, Any], where: str) -> SlurmSpec:
    """Validate a ``[slurm]`` table: an unknown key or a bad value is one `ConfigError`."""
    try:
        return SlurmSpec.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(x) for x in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown [slurm] key {key!r} (known: "
                              f"{', '.join(SlurmSpec.model_fields)})") from None
        raise ConfigError(f"{where}: [slurm] {key}: {first['msg']}") from None


def _preemption_signal() -> int:
    # submitit's convention (JobEnvironment.USR_SIG): USR2 unless SUBMITIT_PREEMPT_SIGNAL says
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class CellTask:
    """What a job runs: one cell as a child process; checkpointable (requeue and resume)."""

    def __call__(self, job_file: str) -> int:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:  # one rank per task
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        log = Path(job_file).parent / LOG_NAME
        # the task handles the preemption signal (requeue) and Slurm's SIGTERM; the cell only
        # dies with the task, and keeps nothing in memory that a checkpoint does not hold
        setup = child_setup(signal.SIGKILL, ignore=(_preemption_signal(), signal.SIGTERM))
        with open(log, "ab") as err:
            proc = subprocess.Popen(cell_argv(Path(job_file)), stderr=err, env=safe_env(),
                                    preexec_fn=setup)
        try:
            return proc.wait()
        finally:  # requeued (SystemExit from the signal handler) or failed: stop the cell now
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def checkpoint(self, job_file: str):
        """Called by submitit on a time limit or preemption: run the same cell again, which
        resumes from its last checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(CellTask(), job_file)


class SubmittedCell:
    """A cell's job: polled by the runner, cancelled if the runner is interrupted."""

    def __init__(self, job, art_dir: Path):
        self.job, self.art_dir = job, art_dir

    def done(self) -> bool:
        return self.job.done()

    def outcome(self) -> CellOutcome:
        try:
            return CellOutcome(int(self.job.results()[0]), tail(self.art_dir / LOG_NAME))
        except Exception as err:  # noqa: BLE001 - the job died: recorded as that cell's failure
            return CellOutcome(1, f"{type(err).__name__}: {err}\n"
                                  f"{tail(Path(self.job.paths.stderr))}"[-2000:])

    def stop(self) -> None:
        self.job.cancel(check=False)


class SubmititExecutor:
    """Submits each cell as a job, at most `max_parallel` at once (None: all).

    `cluster` is "slurm" (needs Slurm here) or "local" (the same code path on this machine).
    Everything is checked when it is built, so bad input stops before any submission."""

    name = "submitit"

    def __init__(self, folder: Path, cluster: str = "slurm", slurm: SlurmSpec | None = None,
                 max_parallel: int | None = None):
        try:
            import submitit
        except ImportError as err:
            raise ConfigError(f"--executor submitit needs submitit ({err}): "
                              "pip install submitit") from None
        if cluster not in ("slurm", "local"):
            raise ConfigError(f"--submitit-cluster must be 'slurm' or 'local', got {cluster!r}")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--executor submitit: no Slurm on this machine (sbatch not found); "
                              "add --submitit-cluster local to run the Slurm path here")
        self.folder, self.cluster = Path(folder), cluster
        self.max_parallel = max_parallel or sys.maxsize
        python = {f"{cluster}_python": f"{shlex.quote(sys.executable)} -P"} if HAS_SAFE_PATH else {}
        self.executor = submitit.AutoExecutor(folder=self.folder, cluster=cluster, **python)
        params = (slurm or SlurmSpec()).submitit_parameters()
        if cluster == "local":
            params.setdefault("timeout_min", LOCAL_TIMEOUT_MIN)
        try:
            self.executor.update_parameters(**params)
        except (AssertionError, NameError, ValueError, TypeError) as err:
            raise ConfigError(f"[slurm] rejected by submitit: {str(err).splitlines()[0]}") from None

    def submit(self, job: Job, art_dir: Path) -> SubmittedCell:
        job_file = write_job(job, art_dir)
        return SubmittedCell(self.executor.submit(CellTask(), str(job_file)), art_dir)
