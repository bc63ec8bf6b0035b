"""Claims: a live holder is named (or waited for), a dead holder's claim is taken over."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arflowbench.locks import Busy, claim

HOLD = """
import sys, time
from pathlib import Path
from arflowbench.locks import claim
with claim(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_claim_is_named_and_waited_for(tmp_path: Path) -> None:
    path = tmp_path / ".claim"
    proc = _holder(path, 1.5)
    try:
        with pytest.raises(Busy, match=f"pid {proc.pid}"), claim(path, wait=False):
            pass
        seen: list[str] = []
        t0 = time.perf_counter()
        with claim(path, on_wait=seen.append, poll_s=0.05):
            waited = time.perf_counter() - t0  # we got it only once the holder let go
        assert seen and f"pid {proc.pid}" in seen[0] and waited > 0.5
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert path.read_text() == ""  # released cleanly: no stale stamp left


def test_a_claim_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / ".claim"
    proc = _holder(path, 60)
    proc.kill()  # dies holding the claim: the kernel drops the lock, the stamp stays
    proc.wait()
    stale: list[str] = []
    with claim(path, wait=False, on_stale=stale.append):
        assert path.read_text().startswith(f"pid {os.getpid()}")
    assert stale == [f"pid {proc.pid} on {os.uname().nodename}"]
