"""Atomic file writes: a reader sees the old file or the complete new one, never a half.

    atomic_write(path, lambda tmp: table.to_parquet(tmp))      # any writer that takes a path
    atomic_write_text(path, json.dumps(obj))                    # text

The writer fills a temporary file beside the target (same folder, so the rename is atomic on one
filesystem); the file is flushed to disk and renamed over the target. On any failure, KeyboardInterrupt
included, the temporary file is removed and the target is left as it was.

Modes follow the umask, as `open()` would give: a new file gets 0o666 & ~umask (mkstemp's private
0600 is only for the temporary file while it is written), a replaced file keeps its mode, and
`new_dir_mode()` (0o777 & ~umask) is what a new folder gets, so a store shared by a team (umask
002) is readable by its members and a private one (umask 077) stays private.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux), else by the
    usual set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    return 0o666 & ~umask()


def new_dir_mode() -> int:
    return 0o777 & ~umask()


def atomic_write(path: str | Path, write: Callable[[str], object], fsync: bool = True) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        try:  # the target's mode if it exists, else what a plain new file would get
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = new_file_mode()
        os.chmod(tmp, mode)
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


def source_file(module: str) -> Path:
    """The source file of an icr_data module (e.g. 'icr_data.pairing.pairs'), found without
    importing it (so a key over code never loads numba or torch)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"no source for module {module}")
    return Path(spec.origin)


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cache_dir() -> Path:
    """icr-data's cache folder: $ICR_DATA_CACHE, else ~/.cache/icr_data."""
    return Path(os.environ.get("ICR_DATA_CACHE", Path.home() / ".cache" / "icr_data"))
