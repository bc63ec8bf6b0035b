"""Claims: an exclusive lock held by a running process, stamped with who holds it.

A claim is an advisory `fcntl.flock` on a small file that also holds the holder's pid and host.
The kernel drops the lock when its process dies, however it dies, so a claim can never outlive
its holder; the stamp only lets the next process say who holds a live claim, or that it is
taking over the claim of a process that died holding it (its stamp was never cleared).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _stamp() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 256).decode(errors="replace").strip()


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
    os.fsync(fd)


class Busy(Exception):
    """The claim is held by another live process (`holder` says which)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.holder = holder


@contextmanager
def claim(path: Path, *, wait: bool = True, on_wait: Callable[[str], None] | None = None,
          on_stale: Callable[[str], None] | None = None,
          poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive claim on `path` for the block.

    Held by a live process: with `wait`, `on_wait(holder)` is called once and the call blocks
    until the claim is free; without, `Busy` is raised. A stamp left by a process that died
    while holding the claim is reported through `on_stale(old holder)` and taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            if not wait:
                raise Busy(path, holder) from None
            if on_wait:
                on_wait(holder)
            while True:  # poll rather than block: a signal can still stop us
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll_s)
        old = _read(fd)
        if old and on_stale:
            on_stale(old)
        _write(fd, _stamp())
        try:
            yield
        finally:
            _write(fd, "")  # released cleanly: no stale stamp
    finally:
        os.close(fd)  # closing drops the lock


def peek(path: Path) -> tuple[bool, str]:
    """(held by a live process, stamp) without taking the claim for longer than a check.

    Not held with a stamp means a process died holding it (`claim` will take it over)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False, ""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read(fd)
        return False, _read(fd)
    finally:
        os.close(fd)
