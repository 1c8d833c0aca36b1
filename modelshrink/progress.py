"""Progress for long work: rich bars on a terminal, sparse plain lines in CI logs (never on stdout)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from modelshrink import distributed, escape

T = TypeVar("T")
console = Console(stderr=True, highlight=False, soft_wrap=True)  # CI logs: one line per message


def interactive() -> bool:
    return console.is_terminal and not os.environ.get("CI")


def log(message: str) -> None:
    """A line of progress; messages embed stage and layer names, shown inert (`escape.terminal`)."""
    if distributed.is_main():  # one voice in multi-process runs
        console.print(escape.terminal(message))


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a transient progress bar when a person is watching; silently otherwise. The
    description names a stage: shown as plain text (no markup), like `log`'s lines."""
    if not interactive() or not distributed.is_main():
        yield from items
        return
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(escape.text(description, newlines=False), total=total)
        for item in items:
            yield item
            progress.advance(task)
