"""Write a folder of outputs all at once: build it beside its destination, then swap it in.

`arflowbench report` writes several files that only make sense together (report.md, report.tex,
index.html, plots/, samples/). They are written into a staging folder next to the destination
(same file system, so renaming is atomic) and swapped in when complete: with Linux's
``renameat2(RENAME_EXCHANGE)`` where available (the destination always names a whole report),
else with two renames (a kill between them leaves the old report whole under a hidden name). A
failed or killed write leaves the old folder untouched; a staging folder of a process that died
is removed by the next write to the same destination.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from arflowbench.errors import ResultsWriteError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the call is unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    """Staging folders left by processes that died (their pid is in the name)."""
    for cand in parent.glob(f".{name}.*-*-*"):
        try:
            pid = int(cand.name.split("-")[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(cand, ignore_errors=True)


def _check_destination(out_dir: Path, own: Iterable[str]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsWriteError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in set(own))
        if foreign:  # the swap replaces the folder: never take someone's files with it
            raise ResultsWriteError(
                f"{out_dir} holds files that are not part of a report ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): choose an empty or report folder")


@contextmanager
def staged_dir(out_dir: Path, own: Iterable[str]) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error it replaces `out_dir`.

    `own` names the entries a previous output may hold; a destination holding anything else is
    refused (the swap would delete it). Errors creating or swapping raise `ResultsWriteError`.
    """
    out_dir = Path(out_dir)
    own = tuple(own)
    _check_destination(out_dir, own)
    parent, name = out_dir.parent, out_dir.name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(parent, name)
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.new-{os.getpid()}-"))
    except OSError as err:
        raise ResultsWriteError(f"cannot write to {out_dir}: {err.strerror or err}") from None
    try:
        yield stage
        os.chmod(stage, 0o755)  # mkdtemp makes 0700; a report is meant to be read
        _swap_in(stage, out_dir)
    except OSError as err:
        raise ResultsWriteError(f"could not write the report to {out_dir}: "
                                f"{err.strerror or err}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after a swap: the old folder


def _swap_in(stage: Path, out_dir: Path) -> None:
    """Put `stage` at `out_dir`; afterwards `stage` names the old folder (or nothing)."""
    if not out_dir.exists():
        os.rename(stage, out_dir)
        return
    if _exchange(stage, out_dir):
        return
    old = stage.with_name(stage.name.replace(".new-", ".old-", 1))
    os.rename(out_dir, old)
    try:
        os.rename(stage, out_dir)
    except OSError:
        os.rename(old, out_dir)  # put the old report back
        raise
    os.rename(old, stage)
