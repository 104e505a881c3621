"""The pairs browser's text cache: a version's prompt, chosen and rejected texts in an Arrow IPC
file of fixed-size, zstd-compressed record batches, so any row's texts are one small batch away.

    cache = TextCache(version_dir)      # keyed by the pairs files' names (digests of their bytes)
    cache.start()                       # builds the file on a thread, once per version
    cache.get([17, 99_000])             # {row: {prompt, chosen, rejected}}, or None until built

Why: a page of pairs sorted by margin has rows in every Parquet row group, and a row group's
texts decode only whole (about 0.2 s per 100 MB group on 2 cores: seconds per page at a million
pairs). The cache is built once by streaming the row groups (never the whole table in memory)
and read by memory-mapping; it lives in icr-data's cache folder (base.files.cache_dir()/view/),
never in the version, and is written to a temporary name and renamed, so a half-built file is
never read. Versions are immutable and their files named by content, so the key never goes stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from icr_data.base.files import cache_dir
from icr_data.store import store

BATCH = 1024
TEXTS = ("prompt", "chosen", "rejected")
_building: dict[str, threading.Thread] = {}
_lock = threading.Lock()


class TextCache:
    def __init__(self, version_dir: Path):
        files = store.config_files(version_dir, "pairs")
        self.files = files
        ident = json.dumps([[f.name, f.stat().st_size] for f in files])
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
        options = pa.ipc.IpcWriteOptions(compression="zstd")
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
