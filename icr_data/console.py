"""The rich console every stage reports to: stderr, so stdout stays for results (a version path,
JSON). Rich wraps at 80 columns when it is not writing to a terminal, which cuts the summary
tables in CI logs and pipes; a wider fixed width keeps them whole there."""

from __future__ import annotations

from rich.console import Console


def stderr_console() -> Console:
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 160
    return console
