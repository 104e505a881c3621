"""Resumable work: stage output in shards, each with a completion marker keyed by its inputs.

A shard is a fixed block of prompt_ids (in source order, `shard_prompts` per block) with all their
languages. Every finished piece of work is a Parquet file plus a `.done` marker under

    <store>/<dataset>/.work/<stage>/<key>.parquet   (+ <key>.done: what the key was made of)

where `key` is a digest of everything the output depends on: for generation the shard's prompt
rows, the generator's content hash and the sampling settings; for log-probs the generation key,
the shard's scoring prompts, the model's content hash and the scoring convention. The Parquet file
is renamed into place before its marker is written, so a process killed at any moment (even
SIGKILL) leaves either a finished piece of work or nothing that counts. A re-run skips every
piece whose marker exists, and a changed recipe misses exactly the keys it changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset


@dataclass(frozen=True)
class Shard:
    index: int
    prompt_ids: tuple[str, ...]


def plan_shards(prompt_ids_in_order: list[str], shard_prompts: int) -> list[Shard]:
    """Blocks of `shard_prompts` prompt_ids, in order of first appearance."""
    unique = list(dict.fromkeys(prompt_ids_in_order))
    return [
        Shard(i // shard_prompts, tuple(unique[i : i + shard_prompts]))
        for i in range(0, len(unique), shard_prompts)
    ]


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N): this process does the shards whose index is I modulo N."""
    if spec is None:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= I < N")
    return i, n


def mine(shards: list[Shard], part: tuple[int, int] | None) -> list[Shard]:
    return shards if part is None else [s for s in shards if s.index % part[1] == part[0]]


def _plain(obj):
    """JSON for what json cannot write: a column (datasets' Column, a numpy or Arrow array) as
    the list of all its values, anything else (a path) as its str. str() of a column is a
    preview of its first values, so a key made from it would not see the rest."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, dict)):
        return list(obj)
    return str(obj)


def digest(obj) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_plain).encode()
    return hashlib.sha256(blob).hexdigest()


class WorkDir:
    def __init__(self, root: str | Path):
        from icr_data.store.store import refuse_inside_version

        refuse_inside_version(root, "the work folder", "work ")  # versions are immutable
        self.root = Path(root)

    def _paths(self, stage: str, key: str) -> tuple[Path, Path]:
        base = self.root / stage / key
        return base.with_suffix(".parquet"), base.with_suffix(".done")

    def done(self, stage: str, key: str) -> bool:
        """Whether the piece is finished: its marker exists and its Parquet file is whole (its
        footer reads). A file damaged after its marker (truncated, overwritten) is removed with
        a warning, so the piece counts as not done and is computed again."""
        data, marker = self._paths(stage, key)
        if not marker.is_file():
            return False
        problem = self.verify(data)
        if problem is None:
            return True
        _warn(f"work file {data} is damaged ({problem}); it is removed and computed again")
        marker.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        return False

    @staticmethod
    def verify(data: Path) -> str | None:
        """None if `data` is a readable Parquet file (footer and schema), else what is wrong."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not data.is_file():
            return "missing"
        try:
            pq.read_metadata(data)  # the footer: a truncated file has lost it
        except (OSError, pa.ArrowException) as e:
            return (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None

    def load(self, stage: str, key: str) -> Dataset:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from icr_data.store.store import StoreError

        data = self._paths(stage, key)[0]
        try:
            # named by its key: datasets would otherwise pickle the table to fingerprint it
            return Dataset(pq.read_table(data), fingerprint=key[:16])
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"work file {data} cannot be read ({e}); delete it and its .done "
                             "marker, then run again") from None  # fmt: skip

    def save(self, stage: str, key: str, ds: Dataset, made_of: dict) -> None:
        """The output, then its marker, each written atomically: a marker only ever follows a
        complete output."""
        import pyarrow.parquet as pq

        from icr_data.base.files import atomic_write, atomic_write_text

        data, marker = self._paths(stage, key)
        atomic_write(data, lambda tmp: pq.write_table(ds.data.table, tmp))
        atomic_write_text(marker, json.dumps(made_of, indent=1, default=str))


def _warn(message: str) -> None:
    from icr_data.base.console import stderr_console

    stderr_console().print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
