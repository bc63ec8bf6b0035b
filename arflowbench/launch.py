"""How a cell process is started: the installed package only, and never outliving its parent.

- Import path: ``python -m X`` puts the current directory first on ``sys.path``, so a stray
  ``statistics.py`` (or ``torch.py``) where the user stands would shadow the real module. Cells
  start with ``-P`` and ``PYTHONSAFEPATH=1`` (Python >= 3.11; the variable reaches torchrun's
  workers too); on 3.10 through ``-c`` with a boot line that drops that entry before importing
  anything and then runs the module as ``__main__``.
- Lifetime: a cell gets a parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``), set in the child
  between fork and exec, so a runner killed by any signal, SIGKILL included, takes its cell with
  it; the cell sets it again first thing (`die_with_parent`) for launchers that start it in turn
  (torchrun's workers).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1
#: Python >= 3.11 understands -P / PYTHONSAFEPATH (no unsafe path entry at sys.path[0])
HAS_SAFE_PATH = sys.version_info >= (3, 11)
#: 3.10: `python -c BOOT MODULE ARGS...` runs MODULE as __main__ with sys.path[0] ('') removed
BOOT = ("import runpy, sys; del sys.path[0]; m = sys.argv.pop(1); "
        "runpy.run_module(m, run_name='__main__', alter_sys=True)")


def module_argv(module: str, *args: str, safe_flag: bool = HAS_SAFE_PATH) -> list[str]:
    """``python -m module args`` without the current directory on the import path."""
    if safe_flag:
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", BOOT, module, *args]


def torchrun_argv(nproc: int, module: str, *args: str,
                  safe_flag: bool = HAS_SAFE_PATH) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m module args``.

    `--standalone` rendezvous on a free local port (two runs never collide on 29500). Without
    -P (3.10), the workers are started as plain programs through the same boot line."""
    head = ["--standalone", "--nproc-per-node", str(nproc)]
    tail = (["-m", module, *args] if safe_flag
            else ["--no-python", sys.executable, "-c", BOOT, module, *args])
    return module_argv("torch.distributed.run", *head, *tail, safe_flag=safe_flag)


def safe_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a cell: unbuffered output, and no unsafe path in any descendant."""
    out = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    if HAS_SAFE_PATH:
        out["PYTHONSAFEPATH"] = "1"
    return out


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not Linux-like
        return None


def _set_pdeathsig(libc, sig: int, parent: int) -> None:
    if libc is None or not sys.platform.startswith("linux"):
        return
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: nobody will tell us
        os.kill(os.getpid(), sig)


def child_setup(death_signal: int = signal.SIGKILL,
                ignore: Sequence[int] = ()) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `death_signal` when this process dies, and ignores
    `ignore` (dispositions set to ignore survive exec)."""
    libc, parent = _libc(), os.getpid()

    def setup() -> None:
        for sig in ignore:
            signal.signal(sig, signal.SIG_IGN)
        _set_pdeathsig(libc, death_signal, parent)

    return setup


def die_with_parent(death_signal: int = signal.SIGKILL) -> None:
    """Ask for `death_signal` when the parent process dies (first thing in a cell)."""
    _set_pdeathsig(_libc(), death_signal, os.getppid())


def world() -> tuple[int, int]:
    """(rank, world size) from torch's launcher variables (0, 1 when not launched by one)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
