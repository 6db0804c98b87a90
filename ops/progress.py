"""A progress bar with a rate and an ETA for long-running jobs (replay, benchmarks, ``recloop eval``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class EventsPerSecond(ProgressColumn):
    """The task's rate, e.g. ``1,234 events/s``."""

    def __init__(self, unit: str = "events") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"– {self.unit}/s", style="cyan")


@contextmanager
def event_progress(*, enabled: bool, console: Console, label: str = "replay",
                   unit: str = "events") -> Iterator[Callable[[int], Callable[[int], None]] | None]:
    """Yield a factory ``total -> advance(n)`` (None when disabled, e.g. not a terminal).

    The bar shows done/total, ``unit`` per second, the time elapsed and the estimated time left.
    """
    if not enabled:
        yield None
        return
    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), EventsPerSecond(unit),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
    with progress:
        def factory(total: int) -> Callable[[int], None]:
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        yield factory
