"""Terminal output helpers: progress bars that can be switched off (tests, CI logs).

Bars draw on stdout (a cell's stderr is kept for its failure record). Code deep inside a step
(classifier training, feature extraction) asks `enabled()`: the process-wide setting from
`configure` (the cell and the commands set it from ``--progress/--no-progress``), else whether
stdout is a terminal, so a log file or a pipe never fills with bar redraws.

Every bar is built by `_bars`: one rich display whose bars show the description, the bar, done
of total, the caller's extra fields, time elapsed and time left. The public helpers below only
choose the extra fields and the shape of the update function they hand out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_ENABLED: bool | None = None

#: `counters`' counter: (description, total, lazy=False) -> advance(n)
Counter = Callable[..., Callable[[int], None]]


def configure(enabled: bool | None) -> None:
    """Switch bars on or off for this process (None: on exactly when stdout is a terminal)."""
    global _ENABLED
    _ENABLED = enabled


def enabled() -> bool:
    """Whether bars draw in this process (`configure`, else stdout is a terminal)."""
    return sys.stdout.isatty() if _ENABLED is None else _ENABLED


def _on(flag: bool | None) -> bool:
    """An explicit switch as given; None: the process-wide `enabled()`."""
    return enabled() if flag is None else flag


def _no_update(**values: Any) -> None:
    return None


@contextmanager
def _bars(show: bool, *fields: str, counted: bool = True) -> Iterator[Callable[..., Any]]:
    """One rich display. Yields `add(description, total, **values) -> update(**kw)`, where
    `update` takes rich's ``completed=``, ``advance=`` and the values of `fields` (rich format
    strings over ``task.fields``). `counted=False`: an open-ended activity (spinner, elapsed
    time, no total). Disabled: `add` hands out no-op updates and nothing is imported or drawn."""
    if not show:
        yield lambda description, total=None, **values: _no_update
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    described = TextColumn("{task.description}", markup=False)  # names from the user, as typed
    if counted:
        columns = (described, BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields),
                   TimeElapsedColumn(), TimeRemainingColumn())
    else:
        columns = (SpinnerColumn(), described, *(TextColumn(f) for f in fields),
                   TimeElapsedColumn())
    with Progress(*columns) as progress:

        def add(description: str, total: int | None = None, **values: Any) -> Callable[..., Any]:
            task = progress.add_task(description, total=total, **values)
            return lambda **kw: progress.update(task, **kw)

        yield add


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    """Yields `update(step, total, loss, images_per_s)` (or None when disabled)."""
    with _bars(enabled, "loss {task.fields[loss]:.4f}", "{task.fields[ips]:.0f} img/s") as add:
        update = add(description, total, loss=float("nan"), ips=0.0)

        def step(step: int, total: int, loss: float, images_per_s: float) -> None:
            update(completed=step, loss=loss, ips=images_per_s)

        yield step if enabled else None


@contextmanager
def sample_bar(description: str, total: int, show: bool = True):
    """Yields `update(done, nfe, images_per_s)`: images sampled of `total`, the network
    evaluations spent per image so far and the rate; a no-op when disabled."""
    with _bars(show, "images, NFE {task.fields[nfe]}", "{task.fields[ips]:.1f} img/s") as add:
        update = add(description, total, nfe=0, ips=0.0)
        yield lambda done, nfe, ips: update(completed=done, nfe=nfe, ips=ips)


@contextmanager
def counters(enabled: bool | None = None) -> Iterator[Counter]:
    """Yields `counter(description, total, lazy=False) -> advance(n)`: counting bars on one
    display. A lazy bar appears when its count first moves, so work that a cache makes
    unnecessary (reference features already computed) draws no bar. No-ops when disabled
    (None: the process-wide `enabled()`)."""
    with _bars(_on(enabled)) as add:

        def counter(description: str, total: int, lazy: bool = False) -> Callable[[int], None]:
            update = None if lazy else add(description, total)

            def advance(n: int) -> None:
                nonlocal update
                if update is None:
                    update = add(description, total)
                update(advance=n)

            return advance

        yield counter


@contextmanager
def count_bar(description: str, total: int, enabled: bool | None = None):
    """Yields `advance(n)`: a bar counting items done of `total`; a no-op when disabled
    (None: the process-wide `enabled()`)."""
    with counters(enabled) as counter:
        yield counter(description, total)


@contextmanager
def activity(description: str, enabled: bool | None = None):
    """A spinner with the time elapsed while a step of unknown length runs (a benchmark that
    reports no counts); lines printed meanwhile appear above it. Nothing when disabled."""
    with _bars(_on(enabled), counted=False) as add:
        add(description)
        yield
