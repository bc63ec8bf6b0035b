"""Terminal output helpers: progress bars that can be switched off (tests, CI logs).

Bars draw on stdout (a cell's stderr is kept for its failure record). Code deep inside a step
(classifier training, feature extraction) asks `enabled()`: the process-wide setting from
`configure` (the cell sets it from ``--progress/--no-progress``), else whether stdout is a
terminal, so a log file or a pipe never fills with bar redraws.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

_ENABLED: bool | None = None


def configure(enabled: bool | None) -> None:
    """Switch bars on or off for this process (None: on exactly when stdout is a terminal)."""
    global _ENABLED
    _ENABLED = enabled


def enabled() -> bool:
    """Whether bars draw in this process (`configure`, else stdout is a terminal)."""
    return sys.stdout.isatty() if _ENABLED is None else _ENABLED


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    """Yields `update(step, total, loss, images_per_s)` (or None when disabled)."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total, loss=float("nan"), ips=0.0)

        def update(step: int, total: int, loss: float, images_per_s: float) -> None:
            bar.update(task, completed=step, loss=loss, ips=images_per_s)

        yield update


@contextmanager
def sample_bar(description: str, total: int, show: bool = True):
    """Yields `update(done, nfe, images_per_s)`: images sampled of `total`, the network
    evaluations spent per image so far and the rate; a no-op when disabled."""
    if not show:
        yield lambda done, nfe, ips: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("images, NFE {task.fields[nfe]}"),
               TextColumn("{task.fields[ips]:.1f} img/s"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total, nfe=0, ips=0.0)
        yield lambda done, nfe, ips: bar.update(task, completed=done, nfe=nfe, ips=ips)


@contextmanager
def count_bar(description: str, total: int, enabled: bool | None = None):
    """Yields `advance(n)`: a bar counting items done of `total`; a no-op when disabled
    (None: the process-wide `enabled()`)."""
    if not (globals()["enabled"]() if enabled is None else enabled):
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
