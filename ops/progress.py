"""A progress bar with events/s for long-running producers (replay, benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text


class EventsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "– events/s", style="cyan")


@contextmanager
def event_progress(*, enabled: bool, console: Console,
                   label: str = "replay") -> Iterator[Callable[[int], Callable[[int], None]] | None]:
    """Yield a factory ``total -> advance(n)`` (None when disabled, e.g. not a terminal)."""
    if not enabled:
        yield None
        return
    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), EventsPerSecond(),
                        TimeElapsedColumn(), console=console)
    with progress:
        def factory(total: int) -> Callable[[int], None]:
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        yield factory
