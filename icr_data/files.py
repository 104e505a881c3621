"""Atomic file writes: a reader sees the old file or the complete new one, never a half.

    atomic_write(path, lambda tmp: table.to_parquet(tmp))      # any writer that takes a path
    atomic_write_text(path, json.dumps(obj))                    # text

The writer fills a temporary file beside the target (same folder, so the rename is atomic on one
filesystem); the file is flushed to disk and renamed over the target. On any failure, KeyboardInterrupt
included, the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], object], fsync: bool = True) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), fsync)
