"""The local executor: runs any stage (stages.py) over its shards in this process, resumably.

    ex = LocalExecutor(WorkDir(store / dataset / ".work"), console, progress)
    report = ex.run(stage, tasks)        # {"done": 3, "skipped": 1, "stats": {...}}
    rows = ex.load(stage, task)          # a finished shard's output

It knows keys, completion markers, progress and resume, and nothing of a stage's insides: a task
whose key has a marker is skipped (and announced); the others are run in order, each output saved
under its key as soon as it is done, so a kill loses at most the shard in flight. The stage's
`open` runs once before the first shard and `close` after the last (or on failure). The Ray
executor (ray_exec.py) has the same `run` and the same saving, with actor pools instead of this
loop. `MemoryWork` keeps outputs in memory for one-off runs (check-reward, the training reference
pass) that need no resume.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from icr_data.store.store import StoreError

if TYPE_CHECKING:
    from datasets import Dataset
    from rich.console import Console
    from rich.progress import Progress

    from icr_data.core.stage import Shard, Stage


@dataclass
class Task:
    """One shard of one stage: its key, its size in input rows (for progress), how to read its
    input (only when it runs), and what its marker records."""

    index: int
    key: str
    size: int
    load: Callable[[], Dataset]
    made_of: dict


def tasks(
    stage: Stage, shards: list[Shard], load: Callable[[Shard], Dataset] | None = None
) -> list[Task]:
    """Tasks of `stage` over `shards`; the input is the shard's rows unless `load(shard)` says."""
    out = []
    for s in shards:
        reader = (lambda s=s: load(s)) if load else (lambda s=s: s.rows)
        out.append(Task(s.index, stage.key(s), len(s.rows), reader, stage.made_of(s)))
    return out


class MemoryWork:
    """WorkDir's interface (done/load/save) over a dict: outputs live as long as the object."""

    def __init__(self):
        self._out: dict[tuple[str, str], Dataset] = {}

    def done(self, stage: str, key: str) -> bool:
        return (stage, key) in self._out

    def load(self, stage: str, key: str) -> Dataset:
        return self._out[(stage, key)]

    def save(self, stage: str, key: str, ds: Dataset, made_of: dict) -> None:
        self._out[(stage, key)] = ds


@contextmanager
def writing(where: Path | str):
    """OSError while saving work -> one StoreError naming the folder (and a full disk)."""
    try:
        yield
    except OSError as e:
        hint = " (disk full)" if e.errno == errno.ENOSPC else ""
        raise StoreError(f"cannot write {where}: {e.strerror}{hint}") from None


class LocalExecutor:
    def __init__(self, work, console: Console | None = None, progress: Progress | None = None):
        self.work, self.console, self.progress = work, console, progress

    def pending(self, stage: Stage, todo: list[Task], label: str) -> tuple[list[Task], dict]:
        """The tasks without a marker, and the done/skipped report (skips are announced)."""
        left = [t for t in todo if not self.work.done(stage.name, t.key)]
        report: dict = {"done": len(left), "skipped": len(todo) - len(left)}
        if report["skipped"] and self.console is not None:
            self.console.print(f"{label}: {report['skipped']} shard(s) finished earlier, skipped")
        return left, report

    def load(self, stage: Stage, task: Task) -> Dataset:
        return self.work.load(stage.name, task.key)

    def save(self, stage: Stage, task: Task, out: Dataset) -> None:
        where = getattr(self.work, "root", "work folder")
        with writing(where):
            self.work.save(stage.name, task.key, out, task.made_of)

    @contextmanager
    def bar(self, label: str, total: int):
        """A progress task; `advance(k, rate=...)` moves it. Without a Progress, a quiet no-op."""
        if self.progress is None:
            yield lambda k, rate=None: None
            return
        task = self.progress.add_task(label, total=total, rate="")

        def advance(k: int, rate: str | None = None) -> None:
            self.progress.update(task, advance=k, **({"rate": rate} if rate is not None else {}))

        yield advance

    @contextmanager
    def opening(self, label: str):
        """The current bar reads '<label> (loading the model)' while a stage opens."""
        if self.progress is None or not self.progress.tasks:
            yield
            return
        task = self.progress.tasks[-1].id
        self.progress.update(task, description=f"{label} (loading the model)")
        try:
            yield
        finally:
            self.progress.update(task, description=label)

    def run(self, stage: Stage, todo: list[Task], label: str | None = None) -> dict:
        """Run `stage` on every task not finished earlier; the report: done, skipped, stats."""
        label = label or stage.name
        left, report = self.pending(stage, todo, label)
        if not left:
            return report
        per_shard: list[dict] = []
        with self.bar(label, sum(t.size for t in left)) as advance:
            with self.opening(label):  # the bar says what happens while a model or engine loads
                stage.open()
            try:
                for t in left:
                    out = stage.run(t.load(), advance)
                    self.save(stage, t, out)
                    if (s := stage.stats()) is not None:
                        per_shard.append(s)
            finally:
                stage.close()
        if per_shard:
            report["stats"] = stage.summarize(per_shard)
        return report


def run_once(stage: Stage, shards: list[Shard], console: Console | None = None,
             progress: Progress | None = None) -> tuple[list[Dataset], dict]:  # fmt: skip
    """Run `stage` over `shards` in memory (no resume); the outputs in shard order and the report."""
    ex = LocalExecutor(MemoryWork(), console, progress)
    todo = tasks(stage, shards)
    report = ex.run(stage, todo)
    return [ex.load(stage, t) for t in todo], report
