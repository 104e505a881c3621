"""The rich console every stage reports to: stderr, so stdout stays for results (a version path,
JSON). Rich wraps at 80 columns when it is not writing to a terminal, which cuts the summary
tables in CI logs and pipes; a wider fixed width keeps them whole there. In a narrow terminal,
Fitted draws a table of numbers compact, or split, so that no number is cut."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text


def stderr_console() -> Console:
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 160
    return console


class _ShownWithItsFirstTask(Progress):
    """A Progress whose display starts with its first task: a command refused before any work (a
    model that cannot be loaded) prints its one error line, and no empty progress after it."""

    def add_task(self, *args, **kwargs):
        if not self.live.is_started:
            self.start()
        return super().add_task(*args, **kwargs)


LIVE: list[Console] = []
"""The consoles drawing a progress display now: while an engine starts with this process's file
descriptors pointed at the log file (logs.engine_output_to_file), they keep drawing to the
terminal (keep_on_terminal), so the clock moves while the engine loads."""


@contextmanager
def keep_on_terminal(stream) -> Iterator[None]:
    """The live consoles write to `stream` (the terminal's saved descriptor) meanwhile."""
    kept = [(c, c._file) for c in LIVE]
    try:
        for c, _ in kept:
            c.file = stream
        yield
    finally:
        for c, original in kept:
            c._file = original  # None again for a console that follows sys.stderr


@contextmanager
def progress_bar(console: Console) -> Iterator[Progress]:
    """Progress for long work; tasks carry a `rate` field (e.g. tokens/s)."""
    progress = _ShownWithItsFirstTask(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    LIVE.append(console)
    try:
        yield progress
    finally:
        LIVE.remove(console)
        if progress.live.is_started:
            progress.stop()


TEXT_MIN = 12
"""The narrowest a wrapping (text) column is drawn when a table is fitted to the terminal."""


class Fitted:
    """A table drawn to fit the console's width without ever cutting a number: as it is where it
    fits; else compact (no vertical rules, one space between columns, headers wrapped over lines);
    else, compact, its columns split over several tables, each led by the first (key) column.
    Number columns are the table's no_wrap columns; text columns wrap. Rich alone shrinks every
    column evenly when a table is too wide, and a number then ends in `…`."""

    def __init__(self, table: Table):
        self.table = table

    def __rich_console__(self, console, options):
        width = options.max_width
        if _needed_width(console, options, self.table) <= width:
            yield self.table
            return
        compact = _compact(console, options, self.table)
        if _needed_width(console, options, compact) <= width:
            yield compact
            return
        yield from _split(console, options, compact, width)


def _cell_widths(console, options, column) -> list[int]:
    return [Measurement.get(console, options, cell).maximum for cell in column.cells]


def _needed_width(console, options, table: Table) -> int:
    """The width `table` needs for its no_wrap columns whole (header included, as it wraps) and
    its text columns at TEXT_MIN (or their own width if less). Uses rich's padding and border
    arithmetic (Table._get_padding_width, _extra_width)."""
    total = table._extra_width
    for i, column in enumerate(table.columns):
        header = Measurement.get(console, options, column.header)
        cells = _cell_widths(console, options, column)
        widest = max([header.maximum, *cells])
        if column.no_wrap:
            need = widest
            if isinstance(column.header, Text) and column.header.no_wrap is False:
                need = max([header.minimum, *cells])  # a compact header wraps at its spaces
            if column.max_width is not None:
                need = min(need, column.max_width)
        else:
            need = min(widest, TEXT_MIN)
        total += need + table._get_padding_width(i)
    return total


def _compact(console, options, table: Table) -> Table:
    """`table` with no vertical rules, one space between columns, headers that wrap at their
    spaces, number columns as wide as their widest number (or header word), text columns folding
    words longer than they are wide."""
    import copy
    import dataclasses

    from rich import box

    out = copy.copy(table)
    out.box, out.show_edge, out.padding, out.pad_edge = box.SIMPLE_HEAD, False, (0, 0), False
    columns = []
    for i, column in enumerate(table.columns):
        header = Text(str(column.header), no_wrap=False, overflow="fold", justify=column.justify)
        changes: dict = {"header": header, "_index": i}
        if column.no_wrap:
            words = Measurement.get(console, options, header).minimum
            changes["max_width"] = max([words, *_cell_widths(console, options, column)])
        else:
            changes["overflow"] = "fold"
        columns.append(dataclasses.replace(column, **changes))
    out.columns = columns
    return out


def _split(console, options, table: Table, width: int):
    """`table`'s columns over as few tables as fit `width`, each led by the key column: the title
    on the first, the caption on the last."""
    import copy
    import dataclasses

    def part(indices: list[int]) -> Table:
        t = copy.copy(table)
        t.columns = [dataclasses.replace(table.columns[i], _index=k) for k, i in enumerate(indices)]
        return t

    groups: list[list[int]] = []
    current = [0]
    for i in range(1, len(table.columns)):
        if len(current) > 1 and _needed_width(console, options, part([*current, i])) > width:
            groups.append(current)
            current = [0]
        current.append(i)
    groups.append(current)
    for n, indices in enumerate(groups):
        t = part(indices)
        if n:
            t.title = None
        if n < len(groups) - 1:
            t.caption = None
        yield t
