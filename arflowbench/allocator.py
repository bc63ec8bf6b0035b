"""The host allocator of a compute process: keep tensor-sized blocks instead of re-faulting them.

PyTorch's CPU tensors come from the C library's malloc. glibc serves a block above its mmap
threshold with a fresh mapping, unmaps it on free, and returns the top of the heap to the kernel
once more than the trim threshold is free there; both thresholds move as the program runs. A
model allocates and frees the same few megabyte-sized activations every step, so whenever a block
falls on the wrong side of those thresholds, every step touches new pages and takes a minor page
fault per 4 KiB (measured on the 2-core machine, flavor `mini`: one ARFlow-hybrid sampling step took
~5,200 faults, ~20 MiB, and ~10% of its time; SiT's forward none; training steps both).

`tune` fixes the thresholds once per process (glibc `mallopt`): blocks up to glibc's 32 MiB limit
come from the heap, and the heap is never trimmed, so a step reuses the pages of the step before.
Values are unchanged (tensors stay 64-byte aligned by PyTorch's own allocator); memory freed by a
step stays with the process, which a training or sampling process would touch again anyway.

The CLI and every cell process call `tune` first; ``ARFLOWBENCH_MALLOC=default`` leaves glibc as
it is (to measure the difference). `state` names what was done, for the environment stamp.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: environment variable: "default" keeps glibc's own (dynamic) thresholds
ENV = "ARFLOWBENCH_MALLOC"
# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: blocks below this come from the heap: glibc's maximum on 64-bit (larger values are refused)
MMAP_THRESHOLD = 32 * 2**20
#: free heap top kept before any is returned to the kernel (1 GiB: in practice never)
TRIM_THRESHOLD = 2**30
#: extra heap requested from the kernel whenever the heap grows (fewer brk calls)
TOP_PAD = 64 * 2**20

#: how `state` (and so a row's ``env.host_allocator``) starts when the thresholds were set
TUNED_PREFIX = "glibc mallopt"

#: what `tune` did in this process ("not tuned" until it runs)
state = "not tuned"


def tune() -> str:
    """Set glibc's malloc thresholds for tensor-sized blocks (see the module docstring); idempotent.
    Returns and records in `state` what was done, or why nothing was."""
    global state
    if state.startswith(TUNED_PREFIX):
        return state
    if os.environ.get(ENV, "").strip().lower() == "default":
        state = f"default ({ENV}=default)"
        return state
    libc = _glibc()
    if libc is None:
        state = "default (not glibc)"
        return state
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (_M_TOP_PAD, TOP_PAD))
    if not all(libc.mallopt(param, value) == 1 for param, value in settings):
        state = "default (mallopt refused)"
        return state
    state = (f"{TUNED_PREFIX}: mmap threshold {MMAP_THRESHOLD // 2**20} MiB, trim threshold "
             f"{TRIM_THRESHOLD // 2**20} MiB, top pad {TOP_PAD // 2**20} MiB")
    return state


def short(recorded: str | None) -> str:
    """A row's ``env.host_allocator`` in one word for tables: "tuned", or "glibc" for glibc's own
    thresholds (rows written before this module existed record nothing: glibc's own too)."""
    return "tuned" if recorded and recorded.startswith(TUNED_PREFIX) else "glibc"


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has `mallopt` and `gnu_get_libc_version`)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None  # e.g. musl
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
