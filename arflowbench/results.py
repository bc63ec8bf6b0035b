"""The results contract: typed records and the append-only JSON Lines store they live in.

Producers (the cell, the runner's failed-row path, the benchmarks) build a `RunRecord` or a
`BenchRecord` and `append` it; consumers (report, `validate`, tests, users' scripts) read them
back with `load`. Nothing else writes or parses rows, so the schema lives
here once. `Job` is what the runner hands an executor (one cell to run).

Rows are written whole: one `os.write` of the full line under an exclusive `fcntl` lock, then
fsync. If a crash left a torn last line (no trailing newline), the next append first ends that
line so the new row stays parseable. Readers skip corrupt lines and report them.

Schema history: 1 = flat dict rows (committed rows under results/ still load: `upgrade_v1`);
2 = these records (train_id, evaluation curve, typed plugins, bench values nested).

Files under a results dir: ``runs.jsonl`` (`RUNS_FILE`), ``bench.jsonl`` (`BENCH_FILE`),
``artifacts/<run_id>/`` (samples, logs) and ``artifacts/train/<train_id>/`` (shared training
stage: checkpoint, loss log, EMA snapshots); artifacts are not committed.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from arflowbench.config import RunSpec, RuntimeOptions
from arflowbench.errors import ConfigError, ResultsWriteError
from arflowbench.machine import environment_stamp

SCHEMA_VERSION = 2
RUNS_FILE = "runs.jsonl"
BENCH_FILE = "bench.jsonl"
ARTIFACTS_DIR = "artifacts"
TRAIN_DIR = "train"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
Status = Literal["ok", "failed"]
#: run_id and train_id: hashes, 12 hex digits; any lowercase alphanumeric id is accepted (safe
#: as a folder name: no dots, no slashes), anything else is rejected as untrusted
ID_PATTERN = r"^[0-9a-z]{1,64}$"

_ID_RE = re.compile(ID_PATTERN)
_RUN_ID_RE = re.compile(r'"run_id"\s*:\s*"([0-9a-f]+)"')

__all__ = ["BenchRecord", "EvalPoint", "Job", "PluginRef", "RunRecord", "append", "append_row",
           "environment_stamp", "load", "now_iso", "read_rows"]


def is_id(value: Any) -> bool:
    """Whether `value` is a well-formed run_id / train_id (`ID_PATTERN`)."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def path_inside(results_dir: str | os.PathLike, rel: Any) -> Path | None:
    """`results_dir / rel` resolved (symbolic links followed), only if it stays inside
    `results_dir`; None for anything else (absolute paths, ``..``, links out, non-strings)."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return None
    root = Path(results_dir).resolve()
    path = (root / rel).resolve()
    return path if path.is_relative_to(root) and path != root else None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Job(_Record):
    """One cell handed to an executor: what to run, where, and which shared training it uses."""

    run_id: str = Field(pattern=ID_PATTERN)
    train_id: str = Field(pattern=ID_PATTERN)
    spec: RunSpec
    runtime: RuntimeOptions
    #: the axis values that define the cell (dotted spec path -> value)
    cell: dict[str, Any] = Field(default_factory=dict)
    #: training steps at which the shared training stage keeps EMA snapshots: the union of the
    #: evaluation points of every cell sharing this train_id (so siblings find theirs)
    snapshot_steps: list[int] = Field(default_factory=list)


class PluginRef(_Record):
    """Which plugin ran, at which version, through which implementation."""

    name: str
    version: int | None = None
    implementation: str = ""


class EvalPoint(_Record):
    """Quality of the EMA weights at one point of training."""

    images_seen: int
    step: int
    num_samples: int
    metrics: dict[str, Any] = Field(default_factory=dict)


class RunRecord(_Record):
    """One row of runs.jsonl: one matrix cell run (ok or failed)."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    kind: Literal["run"] = "run"
    run_id: str = Field(pattern=ID_PATTERN)
    #: the shared training stage this run sampled from (None in schema-1 rows)
    train_id: str | None = Field(None, pattern=ID_PATTERN)
    status: Status
    matrix: str = ""
    cell: dict[str, Any] = Field(default_factory=dict)
    #: the normalised RunSpec as JSON (kept raw: old rows predate today's spec fields)
    spec: dict[str, Any] = Field(default_factory=dict)
    plugins: dict[str, PluginRef] = Field(default_factory=dict)
    #: what the dataset says identifies its data beyond the spec (e.g. the VAE and latent cache)
    data_info: dict[str, Any] = Field(default_factory=dict)
    #: flat scalars: final quality metrics, throughput, memory, provenance
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: training loss, [[step, loss], ...] downsampled
    loss_curve: list[list[float]] = Field(default_factory=list)
    #: quality vs images seen (eval.at points)
    eval_curve: list[EvalPoint] = Field(default_factory=list)
    #: "trained" here, "resumed" from a checkpoint, or "shared" (reused a finished training)
    train_stage: Literal["trained", "resumed", "shared"] | None = None
    artifacts: dict[str, str] = Field(default_factory=dict)
    env: dict[str, Any] = Field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    error: str | None = None
    traceback: str | None = None

    def setting(self, dotted: str) -> Any:
        """A spec value by dotted path ("sample.cfg_scale"), None when absent."""
        node: Any = self.spec
        for part in dotted.split("."):
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    def artifact(self, name: str, results_dir: Path) -> Path | None:
        """An artifact's path, only if it resolves inside `results_dir` (rows are untrusted)."""
        return path_inside(results_dir, self.artifacts.get(name))


_BENCH_HEADER = ("schema", "kind", "bench", "status", "timestamp", "reason", "env")


class BenchRecord(_Record):
    """One row of bench.jsonl: one benchmark measurement. `values` holds the configuration and
    the numbers (keys differ per benchmark: attention, sampling, metrics-sanity, ...)."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    kind: Literal["bench"] = "bench"
    bench: str
    status: str = STATUS_OK
    timestamp: str = Field(default_factory=now_iso)
    #: why a configuration was skipped or failed
    reason: str | None = None
    env: dict[str, Any] = Field(default_factory=dict)
    values: dict[str, Any] = Field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """bench, status, timestamp, reason and every value in one dict (for tables)."""
        return {"bench": self.bench, "status": self.status, "timestamp": self.timestamp,
                "reason": self.reason, **self.values}


# ------------------------------------------------------------------------------ old rows
def upgrade_v1(row: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 row (flat dict) as the fields of today's record."""
    if row.get("kind", "run") == "bench":
        head = {k: row[k] for k in _BENCH_HEADER if k in row and k != "schema"}
        return {**head, "schema": 1, "kind": "bench",
                "values": {k: v for k, v in row.items() if k not in _BENCH_HEADER}}
    out = {k: v for k, v in row.items() if k in RunRecord.model_fields and k != "schema_"}
    out["schema"] = 1
    out.setdefault("kind", "run")
    out["loss_curve"] = (row.get("curves") or {}).get("loss") or []
    out["plugins"] = {k: v for k, v in (row.get("plugins") or {}).items() if isinstance(v, dict)}
    return out


def parse_record(row: dict[str, Any]) -> RunRecord | BenchRecord:
    """A raw row (any schema) as its record; raises ValueError when it is not one."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if row.get("schema", 1) == 1:
        row = upgrade_v1(row)
    kind = row.get("kind", "run")
    try:
        if kind == "bench":
            return BenchRecord.model_validate(row)
        if kind == "run":
            return RunRecord.model_validate(row)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(row)"
        raise ValueError(f"{where}: {first['msg']}") from None
    raise ValueError(f"unknown row kind {kind!r}")


# ------------------------------------------------------------------------------ the store
def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON row as a single whole line, flushed and fsynced under a file lock.
    Raises `ResultsWriteError` (and leaves the file as it was) when the line cannot be written."""
    path = Path(path)
    line = (json.dumps(row, sort_keys=True, allow_nan=True, default=str) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as err:
        raise ResultsWriteError(f"could not append a row to {path}: "
                                f"{err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":  # a torn line from a crash: close it off
                line = b"\n" + line
        _write_all(fd, line, size, path)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_all(fd: int, data: bytes, old_size: int, path: Path) -> None:
    """Write all of `data` and fsync; on any failure (a short write that stops making progress,
    ENOSPC, EIO) cut the file back to `old_size` so no torn row is left, and raise."""
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            if n <= 0:  # no progress: a full disk that does not say so
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote "
                                            f"{len(data) - len(view)} of {len(data)} bytes)")
            view = view[n:]
        os.fsync(fd)
    except OSError as err:
        try:
            os.ftruncate(fd, old_size)
        except OSError:  # pragma: no cover - the row may stay torn; readers skip it
            pass
        raise ResultsWriteError(f"could not append a row to {path}: "
                                f"{err.strerror or err}") from None


def append(path: str | os.PathLike, record: RunRecord | BenchRecord) -> None:
    """Append a record (the only way producers write rows)."""
    append_row(path, record.model_dump(mode="json", by_alias=True))


@dataclass
class ReadResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: (line number, reason, run_id mentioned in the broken line or None)
    problems: list[tuple[int, str, str | None]] = field(default_factory=list)

    def describe_problems(self, path: str | os.PathLike) -> list[str]:
        out = []
        for lineno, reason, run_id in self.problems:
            who = f" (mentions run_id {run_id})" if run_id else ""
            out.append(f"warning: {path}:{lineno}: skipped corrupt row: {reason}{who}")
        return out


def read_rows(path: str | os.PathLike) -> ReadResult:
    """Every parseable JSON object row, raw; corrupt or truncated lines are collected as problems."""
    result = ReadResult()
    path = Path(path)
    if not path.exists():
        return result
    if not path.is_file():
        raise ConfigError(f"{path} is not a file (a results store is a JSON Lines file)")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                row = json.loads(text)
                if not isinstance(row, dict):
                    raise ValueError("row is not a JSON object")
            except ValueError as exc:
                m = _RUN_ID_RE.search(text)
                result.problems.append((lineno, str(exc)[:120], m.group(1) if m else None))
                continue
            result.rows.append(row)
    return result


@dataclass
class Loaded:
    """Records read from one or more files, and one warning line per skipped row."""

    runs: list[RunRecord] = field(default_factory=list)
    bench: list[BenchRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: run_ids mentioned by rows that could not be read (they will run again)
    broken_run_ids: set[str] = field(default_factory=set)


def load(*paths: str | os.PathLike) -> Loaded:
    """Read and parse every row of `paths` (missing files are empty)."""
    out = Loaded()
    for path in paths:
        read = read_rows(path)
        out.problems += read.describe_problems(path)
        out.broken_run_ids |= {rid for _, _, rid in read.problems if rid}
        for i, row in enumerate(read.rows, start=1):
            try:
                rec = parse_record(row)
            except ValueError as err:
                out.problems.append(f"warning: {path}: skipped row {i}: {err}")
                rid = row.get("run_id") if isinstance(row, dict) else None
                if isinstance(rid, str):
                    out.broken_run_ids.add(rid)
                continue
            (out.bench if isinstance(rec, BenchRecord) else out.runs).append(rec)
    return out


def finished_run_ids(path: str | os.PathLike) -> set[str]:
    """run_ids that have a row with status ok."""
    return {r.run_id for r in load(path).runs if r.status == STATUS_OK}


def run_artifacts(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / ARTIFACTS_DIR / run_id


def train_artifacts(results_dir: Path, train_id: str) -> Path:
    return Path(results_dir) / ARTIFACTS_DIR / TRAIN_DIR / train_id
