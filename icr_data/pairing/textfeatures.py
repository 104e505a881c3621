"""What pairing computes from the response texts alone, and the string columns it reads them from.

Per response: the number of words (str.split), whether the share of repeated word n-grams exceeds
repetition_max, the length in characters; per candidate, the first candidate of its prompt with the
same normalised text. One compiled pass over each unit of responses computes words, characters,
a repetition screen and a key of the normalised text (textscan.py); Python confirms what the
screens flag (repeated_ngram_ratio, normalise), so the results are the per-row definitions'.
Texts are a column in memory or still in a version's Parquet files (ParquetTexts), read a unit
(a row group) at a time on threads, so that pairing never holds every response at once.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from icr_data.base.config import PairingConfig
from icr_data.base.files import cores


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def repeated_ngram_ratio(text: str, n: int) -> float:
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


_BATCH_ROWS = 32768


class Texts:
    """A string column of the candidates, read as pairing needs it: in units of consecutive rows,
    and rows by position. In memory (an Arrow column) or still in a version's Parquet files
    (ParquetTexts), so that a re-pairing never holds every response at once."""

    def __init__(self, column: pa.ChunkedArray):
        self.column = column
        self.bounds = np.cumsum([0] + [len(c) for c in column.chunks])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def part(self, k: int) -> pa.Array:
        return self.column.chunk(k)

    def units(self, rows: int):
        """(first row, a function returning the array) of consecutive units of at most `rows`
        rows covering every row in order; the function may run on another thread."""
        for k in range(len(self.bounds) - 1):
            part = self.part(k)
            for lo in range(0, len(part), rows):
                yield int(self.bounds[k]) + lo, lambda part=part, lo=lo: part.slice(lo, rows)

    def take(self, idx: np.ndarray) -> pa.Array:
        """The rows at positions `idx`, in that order; each part holding one is read once (a
        chunked take would first join every chunk into one copy of the column), parts on threads."""
        idx = np.asarray(idx, np.int64)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        which = np.searchsorted(self.bounds, ordered, side="right") - 1
        ks = np.unique(which)
        if not len(ks):
            return pa.array([], self.column.type)
        cuts = np.searchsorted(which, ks, side="left").tolist() + [len(which)]

        def piece(i: int) -> pa.Array:
            local = ordered[cuts[i] : cuts[i + 1]] - self.bounds[ks[i]]
            return self.part(int(ks[i])).take(pa.array(local))

        with ThreadPoolExecutor(min(workers(), len(ks))) as pool:
            pieces = list(pool.map(piece, range(len(ks))))
        joined = pa.concat_arrays(pieces)
        pieces.clear()  # at most two copies of the rows taken are alive at once
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out = joined.take(pa.array(inverse))
        del joined
        pa.default_memory_pool().release_unused()  # hand freed buffers back to the system
        return out


class ParquetTexts(Texts):
    """One string column of Parquet files, read a row group at a time."""

    def __init__(self, files: list, name: str):
        import pyarrow.parquet as pq

        opened, self.name = [pq.ParquetFile(f) for f in files], name
        self.groups = [(Path(f), p.metadata, g) for f, p in zip(files, opened)
                       for g in range(p.num_row_groups)]  # fmt: skip
        sizes = [meta.row_group(g).num_rows for _, meta, g in self.groups]
        self.bounds = np.cumsum([0] + sizes)
        self.column = pa.chunked_array([], opened[0].schema_arrow.field(name).type)

    def part(self, k: int) -> pa.Array:
        """Row group k, through a reader of its own (parts are read on several threads), the file
        memory-mapped (versions are never written again; measured faster than reads into
        buffers: benchmarks/dataplane.py)."""
        import pyarrow.parquet as pq

        path, meta, g = self.groups[k]
        reader = pq.ParquetFile(path, metadata=meta, memory_map=True)
        return reader.read_row_group(g, columns=[self.name]).column(0).combine_chunks()

    def units(self, rows: int):
        """A row group each, read by the function (so on the thread that scans it)."""
        for k in range(len(self.bounds) - 1):
            yield int(self.bounds[k]), lambda k=k: self.part(k)


def _unit_features(lo: int, fetch, cfg: PairingConfig, need_words: bool, check_rep: bool):
    """(first row, words, repetitive, characters, normalised-text key) of one unit of responses
    (textscan.scan; repetition confirmed by repeated_ngram_ratio where the screen flags it)."""
    arr = fetch()
    if not need_words:
        length = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
        zeros = np.zeros(len(arr), np.int64)
        return lo, zeros, np.zeros(len(arr), bool), length, zeros.astype(np.uint64)
    from icr_data.pairing import textscan  # numba: imported when texts are first scanned

    words, length, maybe, key = textscan.scan(arr, cfg.repetition_ngram, cfg.repetition_max)
    rep = np.zeros(len(arr), bool)
    if check_rep:
        maybe = np.flatnonzero(maybe)
        for i, text in zip(maybe, arr.take(pa.array(maybe)).to_pylist()):
            rep[i] = repeated_ngram_ratio(text, cfg.repetition_ngram) > cfg.repetition_max
    return lo, words, rep, length, key


def workers() -> int:
    """Threads for pairing's numpy work: the cores this process may use, at most 4."""
    return max(1, min(4, cores()))


def text_features(responses: Texts, cfg: PairingConfig, need_words: bool, check_rep: bool):
    """Per row: the number of words, whether repeated_ngram_ratio exceeds repetition_max (when
    `check_rep`), the length in characters and a key of the normalised text (equal texts, equal
    keys). Units are read and scanned on threads (the scan and Arrow release the GIL), at most
    a few in flight."""
    count = len(responses)
    nw = np.zeros(count, np.int64)
    rep = np.zeros(count, bool)
    length = np.zeros(count, np.int64)
    key = np.zeros(count, np.uint64)
    threads = workers()
    if need_words:  # compiled (or loaded from numba's cache) here, not by each thread at once
        from icr_data.pairing import textscan

        textscan.scan(pa.array([], pa.string()), cfg.repetition_ngram, cfg.repetition_max)

    def store(result) -> None:
        lo, *values = result
        for out, v in zip((nw, rep, length, key), values):
            out[lo : lo + len(v)] = v

    with ThreadPoolExecutor(threads) as pool:
        pending = []
        for lo, fetch in responses.units(_BATCH_ROWS):
            pending.append(pool.submit(_unit_features, lo, fetch, cfg, need_words, check_rep))
            if len(pending) >= 2 * threads:
                store(pending.pop(0).result())
        for f in pending:
            store(f.result())
    return nw, rep, length, key


def text_classes(responses: Texts, row: np.ndarray, group: np.ndarray, key: np.ndarray):
    """Per candidate (in the order of `row`, its table row): the position of the first candidate
    of its prompt with the same normalised text. Only candidates sharing a prompt and a key of
    their normalised text (textscan) are compared, by a 128-bit digest of that text, a chunk of
    texts at a time."""
    pos = np.arange(len(row))
    frame = pl.DataFrame({"pos": pos, "g": group, "key": key})
    suspects = frame.filter(pl.len().over("g", "key") > 1)["pos"].to_numpy()
    cls = pos.copy()
    if len(suspects):
        suspects = suspects[np.argsort(row[suspects], kind="stable")]  # in file order
        digests = []
        for lo in range(0, len(suspects), _BATCH_ROWS):
            texts = responses.take(row[suspects[lo : lo + _BATCH_ROWS]]).to_pylist()
            digests += [hashlib.blake2b(normalise(t).encode(), digest_size=16).digest()
                        for t in texts]  # fmt: skip
        same = pl.DataFrame({"pos": suspects, "g": group[suspects], "norm": digests})
        cls[suspects] = same.select(pl.col("pos").min().over("g", "norm"))["pos"].to_numpy()
    return cls


FEATURES = ("words", "repetitive", "chars", "same_text")
"""What pairing computes from the response texts alone (given repetition_ngram and
repetition_max): per table row, the number of words, whether repeated_ngram_ratio exceeds
repetition_max, the length in characters; per candidate in pairing order, the position of the
first candidate of its prompt with the same normalised text. Kept by a caller, they spare a
re-pairing of the same candidates its most expensive step."""
