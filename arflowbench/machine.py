"""The machine a number was measured on, and the device helpers every measurement shares.

- `environment_stamp`: code version, libraries and hardware, stored with every row.
- `synchronize`: wait for queued GPU work before reading a clock (no-op on CPU).
- `process_peak_memory_mb`: the process's peak memory so far (CUDA allocator peak, else peak RSS).
- `configure_device`: TF32 matmuls and convolutions for CUDA targets (never touched for CPU).
- `torch_threads`: torch's intra-op threads set inside a block and restored after it.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from arflowbench import allocator


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)



@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (None: unchanged) inside the block, and restored
    after it: a function called from a library or a test leaves its caller's setting as it was."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def configure_device(device: str | torch.device) -> None:
    """Settings of a run on `device`: for CUDA targets, TF32 tensor-core matmuls and cuDNN
    convolutions for float32 (as on GPUs by default since Ampere in most training code); CPU
    targets are left alone (CPU numerics never change). `environment_stamp` records it."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def process_peak_memory_mb(device: str | torch.device) -> float:
    """Peak memory of this process so far: CUDA's allocator peak on a GPU, else peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


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
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    cuda_target = gpu is not None and torch.device(device or "cuda").type == "cuda"
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
        # float32 matmuls on TF32 tensor cores (CUDA targets only; `configure_device`)
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda_target else None,
        "platform": platform.platform(),
        # glibc malloc thresholds of this process (`allocator.tune`), or why they are glibc's own
        "host_allocator": allocator.state,
    }
