"""The results store: append-only JSON Lines, one row per run (or per benchmark measurement).

Rows are written whole: one `os.write` of the full line under an exclusive `fcntl` lock, then
fsync. If a crash left a torn last line (no trailing newline), the next append first ends that
line so the new row stays parseable. Readers skip corrupt lines and report them.

Files under a results dir:

- ``runs.jsonl``: one row per matrix cell run (`RUNS_FILE`), see `run_row`.
- ``bench.jsonl``: one row per benchmark measurement (`BENCH_FILE`), ``kind == "bench"``.
- ``artifacts/<run_id>/``: checkpoints, sample grids, loss logs (not committed).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RUNS_FILE = "runs.jsonl"
BENCH_FILE = "bench.jsonl"
ARTIFACTS_DIR = "artifacts"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

_RUN_ID_RE = re.compile(r'"run_id"\s*:\s*"([0-9a-f]+)"')


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON row as a single whole line, flushed and fsynced under a file lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True, allow_nan=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":  # a torn line from a crash: close it off
                line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
    """Read every parseable row; corrupt or truncated lines are collected as problems."""
    result = ReadResult()
    path = Path(path)
    if not path.exists():
        return result
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


def finished_run_ids(path: str | os.PathLike) -> set[str]:
    """run_ids that have a row with status ok."""
    return {
        r["run_id"]
        for r in read_rows(path).rows
        if r.get("status") == STATUS_OK and isinstance(r.get("run_id"), str)
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_stamp(device: str | None = None) -> dict[str, Any]:
    """Machine stamp stored with every row: code version, libraries, hardware."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device or ("cuda" if gpu else "cpu"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
    }
