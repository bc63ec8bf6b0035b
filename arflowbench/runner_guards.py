"""The runner's guards: its own writes failing stop the matrix with one error, and SIGTERM
interrupts it as Ctrl-C does (so the running cells are stopped, `runner.run_matrix`)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from arflowbench.errors import ResultsWriteError


@contextmanager
def own_writes(what: str):
    """The runner's own writes (job files, logs, failed rows) failing, e.g. on a full disk,
    stop the matrix with one error instead of a crash."""
    try:
        yield
    except ResultsWriteError as err:
        raise ResultsWriteError(f"stopped the matrix while {what}: {err}") from None
    except OSError as err:
        raise ResultsWriteError(f"stopped the matrix while {what}: "
                                f"{err.filename or ''} {err.strerror or err}".strip()) from None


@contextmanager
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so running cells are stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
