"""Build: run the stages of a recipe, shard by shard, resumably, and write a dataset version.

    icr-data build recipes/demo.yaml [--store DIR]        # everything, then a new version
    icr-data generate RECIPE --shard 0/4                  # one process's part of generation
    icr-data score RECIPE --shard 0/4                     # ... and of scoring
    icr-data merge RECIPE                                 # all parts done -> a new version
    icr-data build RECIPE --executor ray [--address A]    # the same shards on a Ray cluster

A build is a plan of stages run by the runner (core/runner.py): generate (vLLM), then the score
phase (score_phase.py: translations, log-probs under the policy, then the reference, the judge),
then at merge language ID, the candidates assembled (reward = beta * (logp_policy - logp_ref)),
pairs, version + card (versioning.py). plan.py resolves models and prompts and keys the work.
Work is kept in shards under <store>/<dataset>/.work (see store/shards.py): a re-run after a
crash skips every finished shard, and changing the recipe recomputes only the stages whose inputs
changed (beta and pairing recompute nothing).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, concatenate_datasets
from rich.console import Console

from icr_data.base.config import Recipe
from icr_data.base.console import progress_bar, stderr_console
from icr_data.base.logs import log_to
from icr_data.commands.plan import Plan, make_plan
from icr_data.commands.score_phase import ROLES, candidate_columns
from icr_data.commands.stability import not_measured
from icr_data.commands.stability import require as require_stable
from icr_data.commands.versioning import version_manifest, write_paired
from icr_data.core import runner
from icr_data.core.executor import LocalExecutor, Task, writing
from icr_data.core.runner import Step
from icr_data.store import store
from icr_data.store.shards import mine

__all__ = ["MissingWork", "Plan", "Result", "build", "make_plan", "merge"]


class MissingWork(store.StoreError):
    """Merge asked for before every shard was generated and scored."""


@dataclass
class Result:
    path: Path | None
    manifest: dict | None
    report: dict[str, dict[str, int]]
    identical_to: str | None = None
    """The newest earlier version (any, not only the latest) whose pairs, candidates and recipe
    equal this run's."""
    written: bool = True
    """False when --if-changed skipped an identical version (`path` is then the earlier one)."""


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise store.StoreError(f"store is not writable: {folder} ({e.strerror})") from None


def generate_step(plan: Plan, part) -> Step:
    todo = [Task(s.index, plan.gen_keys[s.index], len(plan.rows_of[s.index]),
                 lambda s=s: plan.shard_prompts(s), plan.generate.made_of(plan.stage_shard(s)))
            for s in mine(plan.shards, part)]  # fmt: skip
    return Step(plan.generate, todo, "generate", "generate")


def _need_generation(plan: Plan, shards, then: str) -> None:
    missing = [s.index for s in shards if not plan.generated(s)]
    if missing:
        raise MissingWork(
            f"shard(s) {', '.join(map(str, missing))} of {len(plan.shards)} are not generated yet "
            f"for this recipe; run `icr-data generate` (with the same --shard) before `{then}`"
        )


def score_steps(plan: Plan, part):
    """The score phase over this process's shards (their samples must exist)."""
    shards = mine(plan.shards, part)
    _need_generation(plan, shards, "score")
    yield from plan.phase.steps(plan.work, [plan.samples(s) for s in shards], langid=False)


def assemble(plan: Plan, executor=None) -> tuple[Dataset, dict, dict]:
    """The candidates table of the whole recipe, from finished shards, in shard order; language
    ID is run here (locally, unless `executor` says) for the shards that lack it; and the score
    stability (a StabilityError above scoring.stability_bound, before language ID)."""
    missing = [f"{s.index} (generate)" for s in plan.shards if not plan.generated(s)]
    samples = [plan.samples(s) for s in plan.shards if plan.generated(s)]
    missing += plan.phase.missing(plan.work, samples)
    if missing:
        raise MissingWork(
            f"unfinished shard(s): {', '.join(missing)}; run `icr-data generate` and `icr-data score` for them (or `icr-data build`)"
        )
    stability = plan.phase.stability_facts(plan.work, samples)
    if stability is None:  # scoring.stability_sample: 0
        stability = not_measured(plan.recipe.scoring.stability_bound)
    require_stable(stability)
    executor = executor or LocalExecutor(plan.work)
    report = runner.run(executor, [plan.phase.langid_step(samples)])["langid"]
    parts = [plan.phase.assemble(plan.work, s) for s in samples]
    candidates = concatenate_datasets(parts)
    columns = candidate_columns(candidates.column_names, plan.phase.translated)
    return candidates.select_columns(columns), report, stability


def merge(plan: Plan, version: str | None = None, timings: dict | None = None,
          executor=None, if_changed: bool = False) -> tuple[Path, dict, str | None]:  # fmt: skip
    """Pair the finished shards and write the version; the third value names the latest earlier
    version whose content is identical (then, with `if_changed`, nothing is written and the
    path and manifest are that version's)."""
    recipe = plan.recipe
    timings = dict(timings or {})
    t0 = time.perf_counter()
    candidates, lid, stability = assemble(plan, executor)
    if lid["done"]:
        timings["langid_s"] = round(time.perf_counter() - t0, 2)
        timings["langid"] = lid.get("stats")  # texts, seconds, texts_per_s

    def manifest_for(pairs: Dataset, stats) -> dict:
        return version_manifest(recipe, plan.ids, pairs, stats, candidates, plan.prompts,
                                plan.langs, timings, skipped_english=plan.skipped_english,
                                stability=stability)  # fmt: skip

    dataset_dir = Path(recipe.store) / recipe.dataset
    with writing(dataset_dir):
        return write_paired(dataset_dir, candidates, recipe.pairing, manifest_for, version,
                            if_changed)  # fmt: skip


def build(
    recipe: Recipe,
    console: Console | None = None,
    version: str | None = None,
    part: tuple[int, int] | None = None,
    stages: tuple[str, ...] = ("generate", "score", "merge"),
    executor: str = "local",
    address: str | None = None,
    if_changed: bool = False,
) -> Result:
    """Prepare the recipe's models, then run `stages` (for shards I mod N with `part=(I, N)`)
    through the executor named by `executor` (local, or ray at `address`). A merge whose content
    equals an earlier version's says so; with `if_changed` it writes nothing."""
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    console = console or stderr_console()
    dataset_dir = Path(recipe.store) / recipe.dataset
    store.refuse_inside_version(dataset_dir, "store", "versions and their work ")  # no model yet
    if version is not None:
        store.check_version_name(version)  # before any model: a bad name is the cheap error
    if version is not None and (dataset_dir / version).exists():
        raise store.StoreError(
            f"version {version} already exists at {dataset_dir / version}; versions are immutable"
        )
    # models resolved (a Hub id that cannot be loaded is one line) and prepared, then prompts
    # validated, before anything is written
    plan = make_plan(recipe, console)
    log_to(plan.work.root / "logs" / "third_party.log")  # engine logs, off the terminal
    _check_writable(dataset_dir)
    console.print(
        f"[bold]{recipe.dataset}[/]: {len(plan.prompts)} prompt rows "
        f"({len(set(plan.prompts['prompt_id']))} prompt_ids) in "
        f"{', '.join(plan.langs)}, {len(plan.shards)} shard(s); {recipe.sampling.n} samples each "
        f"with {recipe.sampling.backend}"
    )
    for lang in plan.missing_langs:
        console.print(f"[yellow]warning:[/] no prompts in language '{lang}' in "
                      f"{recipe.prompts.source}: it is in prompts.languages but gets no pairs "
                      "in this version", highlight=False, soft_wrap=True)  # fmt: skip
    if not Path(recipe.store).is_absolute():
        console.print(f"store '{recipe.store}' is relative to the working directory: "
                      f"{dataset_dir.resolve()}", highlight=False, soft_wrap=True)  # fmt: skip
    report: dict[str, dict] = {}
    timings: dict = {}
    with progress_bar(console) as progress:
        ex = runner.make_executor(executor, plan.work, console, progress, address, recipe.ray)
        if "generate" in stages:
            t0 = time.perf_counter()
            report.update(runner.run(ex, [generate_step(plan, part)]))
            timings["generate_s"] = round(time.perf_counter() - t0, 2)
        if "score" in stages:
            t0 = time.perf_counter()
            report.update(runner.run(ex, score_steps(plan, part)))
            timings["score_s"] = round(time.perf_counter() - t0, 2)
        timings["scoring_throughput"] = {r: report[r].get("stats") for r in ROLES if r in report}
        if "merge" not in stages:
            return Result(None, None, report)
        path, manifest, same = merge(plan, version, timings,
                                     LocalExecutor(plan.work, console, progress), if_changed)  # fmt: skip
    if same:
        done = ("nothing written (--if-changed)" if if_changed else
                f"wrote {path.name} anyway (--if-changed skips an unchanged version)")  # fmt: skip
        console.print(f"[yellow]unchanged:[/] the pairs, candidates and recipe are identical to "
                      f"{same}; {done}", highlight=False, soft_wrap=True)  # fmt: skip
    return Result(path, manifest, report, same, written=not (same and if_changed))
