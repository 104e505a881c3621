"""The runner: a command's plan of stages, handed step by step to one executor.

    plan = [Step(stage, tasks, "score (policy)"), ...]      # or a generator of steps
    reports = run(executor, plan)                            # {"score (policy)": {...}, ...}
    rows, report = run_rows(executor, stage, rows, 64)       # one row-wise stage over a table

A plan is data: a list (or a generator, when a step's tasks can only be made once the step before
it has run, as content keys need) of `Step`s. Every command (build, rescore, check-reward,
translate, eval) states its plan in commands/ and hands it here; the runner knows no stage's
insides and no command's purpose. A whole-table stage (Stage.whole_table, e.g. pairing) is given
one task holding every row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icr_data.core.executor import Task
from icr_data.core.stage import Shard, Stage

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass
class Step:
    """One stage over its tasks; `label` names it on the progress bar and in the reports."""

    stage: Stage
    tasks: list[Task]
    label: str
    name: str | None = None
    """The step's name in the reports (default: its label)."""


def run(executor, plan: Iterable[Step]) -> dict[str, dict]:
    """Run every step of `plan` in order through `executor`; the reports by step name."""
    reports: dict[str, dict] = {}
    for step in plan:
        reports[step.name or step.label] = executor.run(step.stage, step.tasks, step.label)
    return reports


def content_task(stage: Stage, index: int, rows: Dataset, made_of: dict | None = None,
                 size: int | None = None) -> Task:  # fmt: skip
    """A task keyed by the content of its input rows (Stage.key with no upstream): any command
    that hands a stage the same rows under the same settings finds the same finished work."""
    shard = Shard(index, rows)
    return Task(index, stage.key(shard), len(rows) if size is None else size, lambda: rows,
                {**stage.made_of(shard), **(made_of or {})})  # fmt: skip


def candidate_shards(rows: Dataset, shard_prompts: int) -> tuple[list[Shard], list[list[int]]]:
    """Rows cut into shards of `shard_prompts` prompt_ids (in order of first appearance), and
    each shard's row positions in `rows` (to put per-shard outputs back in order). A build's
    candidates cut this way give the build's own shards."""
    from icr_data.store.shards import plan_shards

    blocks = plan_shards(rows["prompt_id"], shard_prompts)
    block_of = {pid: b.index for b in blocks for pid in b.prompt_ids}
    positions: list[list[int]] = [[] for _ in blocks]
    for i, pid in enumerate(rows["prompt_id"]):
        positions[block_of[pid]].append(i)
    return [Shard(b.index, rows.select(p)) for b, p in zip(blocks, positions)], positions


def in_order(parts: list[Dataset], positions: list[list[int]], n: int,
             columns: Iterable[str] = ()) -> Dataset:  # fmt: skip
    """Per-shard outputs (one per shard of candidate_shards) put back in the order of the rows."""
    from datasets import Dataset, concatenate_datasets

    if not parts:
        return Dataset.from_dict({c: [] for c in columns})
    back = [0] * n  # position of each input row among the concatenated outputs
    for at, row in enumerate(i for pos in positions for i in pos):
        back[row] = at
    return concatenate_datasets(parts).select(back)


def run_rows(executor, stage: Stage, rows: Dataset, shard_prompts: int, label: str | None = None,
             load: Callable[[Dataset], Dataset] | None = None) -> tuple[Dataset, dict]:  # fmt: skip
    """One row-wise stage over `rows` cut into shards of `shard_prompts` prompt_ids, each task
    keyed by its content, through `executor` (resumable when its work is a WorkDir): the
    output rows in the order of `rows`, and the report. `load(shard rows)` turns a shard's rows
    into the stage's input (same length), when they differ."""
    shards, positions = candidate_shards(rows, shard_prompts)
    todo = [content_task(stage, s.index, load(s.rows) if load else s.rows) for s in shards]
    report = executor.run(stage, todo, label or stage.name)
    out = in_order([executor.load(stage, t) for t in todo], positions, len(rows), stage.outputs)
    return out, report


def make_executor(kind: str, work, console=None, progress=None, address: str | None = None,
                  ray_cfg=None):  # fmt: skip
    """The executor of `--executor`: this process (executor.py), or Ray actor pools
    (ray_exec.py, imported only here: ray is an optional extra)."""
    if kind == "ray":
        from icr_data.core.ray_exec import RayExecutor

        return RayExecutor(work, console, progress, address=address, cfg=ray_cfg)
    if kind != "local":
        raise ValueError(f"executor must be 'local' or 'ray', got {kind!r}")
    from icr_data.core.executor import LocalExecutor

    return LocalExecutor(work, console, progress)
