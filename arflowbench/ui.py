"""Terminal output helpers: progress bars that can be switched off (tests, CI logs)."""

from __future__ import annotations

from contextlib import contextmanager


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
def count_bar(description: str, total: int, enabled: bool = True):
    """Yields `advance(n)`: a bar counting items done of `total`; a no-op when disabled."""
    if not enabled:
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
