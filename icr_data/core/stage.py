"""The stage contract: every step of every command is a `Stage`, run shard by shard by an executor.

A stage has
- `name`: the folder its outputs are kept in (`<store>/<dataset>/.work/<name>/<key>.parquet`);
- `inputs` / `outputs`: the columns `run` reads and the columns it returns;
- `key(shard)`: a digest of exactly what its output for that shard depends on (the shard's input
  rows, or the key of the work they came from, plus the stage's own settings and model hashes),
  so a re-run skips finished shards and a changed recipe misses exactly the keys it changed;
- `open()` / `run(rows, advance) -> Dataset` / `close()`: load the engine or model once, turn
  one shard's input rows into its output rows, release what `open` loaded;
- `whole_table`: False for a row-wise stage (any cut of the rows into shards gives the same rows
  back); True for a stage that must see every row at once (pairing: length control chooses alpha
  over a whole language), which a plan gives one shard holding the whole table.

Executors (executor.py: in this process; ray_exec.py: Ray actor pools) know keys, markers, progress
and resume, and nothing of a stage's insides; the runner (runner.py) hands a command's plan of
stages to one of them. The stages themselves live a floor up (stages/stages.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from icr_data.store.shards import digest

if TYPE_CHECKING:
    from datasets import Dataset


Advance = Callable[..., None]
"""`advance(k, rate="")`: k more input rows are done; `rate` is shown beside the bar."""


@dataclass(frozen=True)
class Shard:
    """One unit of work for a stage: its index, its input rows and (when the rows are the output of
    earlier keyed work) that work's key, which then stands for the rows in this stage's key."""

    index: int
    rows: Dataset
    upstream: str | None = None


class Stage:
    """The contract (see the module docstring). Subclasses are dataclasses holding their settings,
    so a stage pickles to a Ray actor as it is and opens its resources there."""

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    whole_table: ClassVar[bool] = False

    def identity(self) -> dict:
        """What the output depends on besides the input rows (settings, model hashes)."""
        raise NotImplementedError

    def key(self, shard: Shard) -> str:
        source = (
            {"input": shard.upstream} if shard.upstream else {"rows": self.key_rows(shard.rows)}
        )
        return digest({"stage": self.name, **self.identity(), **source})

    def key_rows(self, rows: Dataset):
        """The input rows as they enter the key (the declared input columns, row by row)."""
        return [list(r) for r in zip(*(rows[c] for c in self.inputs))]

    def made_of(self, shard: Shard) -> dict:
        """What the completion marker records (for a person reading the work folder)."""
        return {"stage": self.name, "shard": shard.index}

    def open(self) -> None:
        """Load models or engines (once per executor or actor, before the first shard)."""

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `open` loaded."""

    def stats(self) -> dict | None:
        """Figures of the last `run` (throughput, ...), summed over shards by `summarize`."""
        return None

    @staticmethod
    def summarize(per_shard: list[dict]) -> dict | None:
        return None

    # Resources, read by the Ray executor only.
    def gpus(self) -> float:
        """GPUs one worker of this stage takes on a cluster with GPUs: one if it runs on one."""
        return 1 if self.requires_gpu() else 0

    def requires_gpu(self) -> bool:
        """True when the stage's `device` (part of its key) is a GPU: a cluster without one cannot
        run it. Stages without a device run on CPUs."""
        return str(getattr(self, "device", "cpu")).startswith("cuda")

    def for_worker(self, gpus: float) -> Stage:
        """The stage as a worker holding `gpus` GPUs runs it (settings outside the key only)."""
        return self
