"""The rich console every stage reports to: stderr, so stdout stays for results (a version path,
JSON). Rich wraps at 80 columns when it is not writing to a terminal, which cuts the summary
tables in CI logs and pipes; a wider fixed width keeps them whole there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def stderr_console() -> Console:
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 160
    return console


@contextmanager
def progress_bar(console: Console) -> Iterator[Progress]:
    """Progress for long work; tasks carry a `rate` field (e.g. tokens/s)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        yield progress
