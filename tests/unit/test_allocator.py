"""The host allocator tuning (arflowbench/allocator.py): a tuned process reuses the pages of freed
tensors where glibc's own thresholds give them back to the kernel and fault them in again; the
opt-out leaves glibc alone; the environment stamp says which ran. Each case runs in a fresh
process: mallopt settings last for the life of the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from arflowbench import allocator

# Three 20 MiB tensors written and freed, eight times, in a process whose glibc starts from small
# fixed thresholds (128 KiB: glibc's initial ones, here not allowed to move), so that without
# tuning every block is a fresh mapping, unmapped on free: every round faults its 60 MiB in anew.
FAULTY_GLIBC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
ROUNDS = """
import json, resource, sys, torch
from arflowbench import allocator
from arflowbench.machine import environment_stamp
allocator.tune()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_round = []
for _ in range(8):
    before = faults()
    blocks = [torch.empty(5 * 2**20).fill_(1.0) for _ in range(3)]  # 3 x 20 MiB, touched
    del blocks
    per_round.append(faults() - before)
print(json.dumps({"faults": per_round, "state": allocator.state,
                  "stamp": environment_stamp("cpu")["host_allocator"]}))
"""
PAGES_PER_ROUND = 3 * 20 * 2**20 // 4096


def _rounds(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ROUNDS], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="needs glibc (mallopt)")


@glibc_only
def test_a_tuned_process_reuses_freed_tensor_pages_instead_of_faulting_them_again() -> None:
    tuned = _rounds(**FAULTY_GLIBC, **{allocator.ENV: ""})
    default = _rounds(**FAULTY_GLIBC, **{allocator.ENV: "default"})
    assert tuned["state"].startswith(allocator.TUNED_PREFIX) and tuned["stamp"] == tuned["state"]
    assert default["state"] == f"default ({allocator.ENV}=default)" == default["stamp"]
    # once the heap has grown to hold a round (new pages either way), a tuned process takes
    # almost no faults ...
    assert max(tuned["faults"][-3:]) < PAGES_PER_ROUND // 100, tuned
    # ... while untuned, the same process faults the 60 MiB in again, round after round
    assert min(default["faults"][-3:]) > PAGES_PER_ROUND * 9 // 10, default


@glibc_only
def test_tune_is_idempotent_and_names_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(allocator.ENV, raising=False)
    first = allocator.tune()
    assert first == allocator.tune() == allocator.state
    assert f"mmap threshold {allocator.MMAP_THRESHOLD // 2**20} MiB" in first
