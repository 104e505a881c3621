"""The pairs browser's text cache: a version's prompt, chosen and rejected texts in an Arrow IPC
file of fixed-size, uncompressed record batches, so any row's texts are one small batch away and
a text search scans the memory-mapped file with nothing to decompress.

    cache = TextCache(version_dir)      # keyed by the pairs files' names (digests of their bytes)
    cache.start()                       # builds the file on a thread, once per version
    cache.get([17, 99_000])             # {row: {prompt, chosen, rejected}}, or None until built
    cache.rows_where(pl.col("chosen").str.contains("x"))   # matching rows, or None until built

Why: a page of pairs sorted by margin has rows in every Parquet row group, and a row group's
texts decode only whole (about 0.2 s per 100 MB group on 2 cores: seconds per page at a million
pairs). The cache is built once by streaming the row groups (never the whole table in memory)
and read by memory-mapping; it lives in icr-data's cache folder (base.files.cache_dir()/view/),
never in the version, and is written to a temporary name and renamed, so a half-built file is
never read. Versions are immutable and their files named by content, so the key never goes stale.
Uncompressed, the file is about the size of the texts (589 MiB for benchmarks/view.py's 1M
pairs; zstd made it 329 MiB, but decoding it took a search 0.8-1.2 s there, no faster than
reading the Parquet files; memory-mapped it takes 0.2-0.4 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from icr_data.base.files import cache_dir
from icr_data.store import store

if TYPE_CHECKING:
    import polars as pl

BATCH = 1024
SCAN = 32
"""Batches per step of a search (rows_where): 32k rows, some 20 MB of text at a time."""
FORMAT = 2  # in the key: 1 was zstd-compressed
TEXTS = ("prompt", "chosen", "rejected")
_building: dict[str, threading.Thread] = {}
_lock = threading.Lock()


class TextCache:
    def __init__(self, version_dir: Path):
        files = store.config_files(version_dir, "pairs")
        self.files = files
        ident = json.dumps([FORMAT, [[f.name, f.stat().st_size] for f in files]])
        self.key = hashlib.sha256(ident.encode()).hexdigest()[:32]
        self.path = cache_dir() / "view" / f"pairs-texts-{self.key}.arrow"

    def ready(self) -> bool:
        return self.path.is_file()

    def start(self) -> None:
        """Build the file on a daemon thread unless it exists or is being built."""
        if self.ready():
            return
        with _lock:
            if self.key in _building and _building[self.key].is_alive():
                return
            thread = threading.Thread(target=self._build_quietly, daemon=True, name="textcache")
            _building[self.key] = thread
            thread.start()

    def _build_quietly(self) -> None:
        import contextlib

        from polars.exceptions import PolarsError

        # a full disk, a damaged file: the pages go on reading the Parquet row groups
        with contextlib.suppress(OSError, ValueError, PolarsError):
            self.build()

    def build(self) -> Path:
        """Write the cache file (temporary name, then renamed into place)."""
        import polars as pl
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        schema = pa.schema([(c, pa.large_string()) for c in TEXTS])
        options = pa.ipc.IpcWriteOptions(compression=None)  # memory-mapped as it is (see above)
        pending: list[pa.RecordBatch] = []
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as w:  # fmt: skip
                for f in self.files:
                    for batch in pq.ParquetFile(f).iter_batches(BATCH, columns=list(TEXTS)):
                        texts = pl.from_arrow(batch).select(
                            pl.col(c).list.last().struct.field("content").alias(c) for c in TEXTS
                        )
                        pending.append(texts.to_arrow().cast(schema).to_batches()[0])
                        if sum(b.num_rows for b in pending) >= BATCH:
                            table = pa.Table.from_batches(pending, schema)
                            whole = table.num_rows // BATCH * BATCH
                            for b in table.slice(0, whole).combine_chunks().to_batches(BATCH):
                                w.write_batch(b)
                            pending = table.slice(whole).to_batches()
                if pending:
                    w.write_table(pa.Table.from_batches(pending, schema).combine_chunks())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return self.path

    def get(self, rows: list[int]) -> dict[int, dict] | None:
        """The texts of `rows`, or None when the cache is not built (or cannot be read)."""
        import pyarrow as pa

        if not self.ready():
            return None
        try:
            with pa.memory_map(str(self.path)) as source:
                reader = pa.ipc.open_file(source)
                out = {}
                by_batch: dict[int, list[int]] = {}
                for r in sorted(set(rows)):
                    by_batch.setdefault(r // BATCH, []).append(r)
                for b, mine in by_batch.items():
                    if b >= reader.num_record_batches:
                        return None
                    batch = reader.get_batch(b)
                    picked = batch.take([r - b * BATCH for r in mine]).to_pylist()
                    out.update(zip(mine, picked))
                return out
        except (OSError, pa.ArrowException):
            return None

    def rows_where(self, hit: pl.Expr) -> pl.Series | None:
        """The rows (ascending, a `row` column as with_row_index makes it) where `hit`, a polars
        expression over the prompt, chosen and rejected columns, is true, read SCAN batches at
        a time from the memory-mapped file; None when the cache is not built or cannot be read."""
        import polars as pl
        import pyarrow as pa

        if not self.ready():
            return None
        found, base = [], 0
        try:
            with pa.memory_map(str(self.path)) as source:
                reader = pa.ipc.open_file(source)
                n = reader.num_record_batches
                for lo in range(0, max(n, 1), SCAN):  # no batches (no pairs): one empty step
                    batches = [reader.get_batch(b) for b in range(lo, min(n, lo + SCAN))]
                    part = pl.from_arrow(pa.Table.from_batches(batches, reader.schema))
                    found.append(part.with_row_index("row", base).filter(hit)["row"])
                    base += part.height
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError):
            return None
        return pl.concat(found)
