"""Build: run the stages of a recipe, shard by shard, resumably, and write a dataset version.

    icr-data build recipes/demo.yaml [--store DIR]        # everything, then a new version
    icr-data generate RECIPE --shard 0/4                  # one process's part of generation
    icr-data score RECIPE --shard 0/4                     # ... and of scoring
    icr-data merge RECIPE                                 # all parts done -> a new version
    icr-data build RECIPE --executor ray [--address A]    # the same shards on a Ray cluster

prompts -> generate (vLLM) -> log-probs under the policy, then under the reference -> assemble
candidates (reward = beta * (logp_policy - logp_ref)) -> pairs -> version + card. Work is kept in
shards under <store>/<dataset>/.work (see shards.py): a re-run after a crash skips every finished
shard, and changing the recipe recomputes only the stages whose inputs changed (beta and pairing
recompute nothing).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from datasets import Dataset, concatenate_datasets
from rich.console import Console
from rich.progress import Progress

import icr_data
from icr_data import models, store
from icr_data.card import render_card
from icr_data.config import Recipe
from icr_data.console import progress_bar, stderr_console
from icr_data.languages import DIRECTIVE
from icr_data.pairs import PairStats, empty_funnel, make_pairs
from icr_data.prompts import load_prompts
from icr_data.score import with_rewards
from icr_data.shards import Shard, WorkDir, digest, mine, plan_shards

SCORING_CONVENTION = (
    "sum of log p over the assistant-turn tokens of the chat template's rendering of "
    "[user: scoring_prompt, assistant: response], prompt and response tokenized separately; "
    "first response token included"
)
CANDIDATE_COLUMNS = [
    "prompt_id", "lang", "instruction", "scoring_prompt", "sample_idx", "response",
    "finish_reason", "response_tokens", "logp_policy", "logp_ref", "reward", "reward_mean",
    "lid_lang", "lid_score",
]  # fmt: skip
GEN_COLUMNS = ["prompt_id", "lang", "instruction", "sample_idx", "response", "finish_reason"]
ROLES = ("policy", "reference")


class MissingWork(store.StoreError):
    """Merge asked for before every shard was generated and scored."""


@dataclass
class Plan:
    recipe: Recipe
    resolved: dict[str, str]
    ids: dict[str, dict]
    prompts: Dataset
    langs: list[str]
    shards: list[Shard]
    rows_of: dict[int, list[int]]
    work: WorkDir
    skipped_english: dict[str, int]
    tokenizer: object
    """The reward pair's shared tokenizer (checked in make_plan)."""
    gen_keys: dict[int, str] = field(default_factory=dict)
    logp_keys: dict[str, dict[int, str]] = field(default_factory=dict)

    def shard_prompts(self, shard: Shard) -> Dataset:
        return self.prompts.select(self.rows_of[shard.index])


@dataclass
class Result:
    path: Path | None
    manifest: dict | None
    report: dict[str, dict[str, int]]


def _model_key(identity: dict) -> str:
    return identity.get("sha256") or f"{identity['name']}@{identity.get('revision')}"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise store.StoreError(f"store is not writable: {folder} ({e.strerror})") from None


@contextmanager
def _writing(what: Path):
    try:
        yield
    except OSError as e:
        hint = " (disk full)" if e.errno == errno.ENOSPC else ""
        raise store.StoreError(f"cannot write {what}: {e.strerror}{hint}") from None


def _check_models(recipe: Recipe, resolved: dict[str, str]):
    """Refuse, before any work, a reward pair that cannot be scored together or a missing
    template; return the pair's tokenizer."""
    from icr_data.chat import render_prompt

    template = recipe.models.chat_template
    tok = models.pair_tokenizer(resolved["policy"], resolved["reference"], template)
    for t in (models.load_tokenizer(resolved["generator"], template), tok):
        render_prompt(t, "x")  # raises TemplateError naming the model if it has no template
    return tok


def training_reference(recipe: Recipe, resolved: dict[str, str], ids: dict) -> dict:
    """Identity of the reference the DPO trainer will use on this version (default: generator)."""
    spec = recipe.training.reference
    if not spec:
        return ids["generator"]
    return models.identity(spec, models.resolve(spec, "training.reference"))


def round_history(recipe: Recipe, model_ids: dict) -> list[dict]:
    """Per round: the generator, the reward pair and the training reference; earlier rounds come
    from the previous round's training record, with what that round trained."""
    earlier: list[dict] = []
    if recipe.round.previous:
        from icr_data.config import read_training_record

        record = read_training_record(recipe.round.previous)
        earlier = [dict(r) for r in record.get("rounds") or []]
        if not earlier:
            earlier = [{"round": recipe.round.index - 1}]
        earlier[-1]["trained"] = {k: record.get(k) for k in ("output_model", "start_model",
                                                               "reference", "data", "method")}  # fmt: skip
    current = {
        "round": recipe.round.index,
        "generator": model_ids.get("generator"),
        "reward": {"policy": model_ids.get("policy"), "reference": model_ids.get("reference")},
        "training_reference": model_ids.get("training_reference"),
    }
    return earlier + [current]


def make_plan(recipe: Recipe) -> Plan:
    resolved = {
        role: models.resolve(getattr(recipe.models, role), role)
        for role in ("generator", "policy", "reference")
    }
    ids = {
        role: models.identity(getattr(recipe.models, role), path) for role, path in resolved.items()
    }
    ids["training_reference"] = training_reference(recipe, resolved, ids)
    tokenizer = _check_models(recipe, resolved)
    skipped: dict[str, int] = {}
    prompts = load_prompts(recipe.prompts, recipe.scoring, skipped)
    langs = [lang for lang in recipe.prompts.languages if lang in set(prompts["lang"])]
    shards = plan_shards(prompts["prompt_id"], recipe.shard_prompts)
    shard_of = {pid: s.index for s in shards for pid in s.prompt_ids}
    rows_of: dict[int, list[int]] = {s.index: [] for s in shards}
    for i, pid in enumerate(prompts["prompt_id"]):
        rows_of[shard_of[pid]].append(i)
    work = WorkDir(Path(recipe.store) / recipe.dataset / ".work")
    plan = Plan(recipe, resolved, ids, prompts, langs, shards, rows_of, work, skipped, tokenizer)

    s, sc = recipe.sampling, recipe.scoring
    sampling = {
        k: getattr(s, k)
        for k in ("backend", "n", "temperature", "top_p", "max_tokens", "seed", "dtype")
    }
    if s.tensor_parallel_size > 1:  # an engine over several GPUs sums in another order
        sampling["tensor_parallel_size"] = s.tensor_parallel_size
    device = models.pick_device(sc.device)
    convention = {"count_eot": sc.count_eot, "device": device, "dtype": str(models.pick_dtype(sc.dtype, device)),
                  "chat_template": recipe.models.chat_template, "convention": SCORING_CONVENTION}  # fmt: skip
    plan.logp_keys = {role: {} for role in ROLES}
    for shard in shards:
        rows = plan.shard_prompts(shard)
        plan.gen_keys[shard.index] = digest({
            "stage": "generate", "generator": _model_key(ids["generator"]), "sampling": sampling,
            "chat_template": recipe.models.chat_template,
            "rows": list(zip(rows["prompt_id"], rows["lang"], rows["instruction"])),
        })  # fmt: skip
        for role in ROLES:
            plan.logp_keys[role][shard.index] = digest({
                "stage": "logp", "generation": plan.gen_keys[shard.index], "model": _model_key(ids[role]),
                "scoring_prompts": rows["scoring_prompt"], **convention,
            })  # fmt: skip
    return plan


def pending(plan: Plan, stage: str, keys, shards: list[Shard], console: Console, label: str):
    """The shards whose `stage` output under `keys` is not saved yet, and the done/skipped report
    (finished shards are announced, not redone)."""
    todo = [s for s in shards if not plan.work.done(stage, keys[s.index])]
    report: dict = {"done": len(todo), "skipped": len(shards) - len(todo)}
    if report["skipped"]:
        console.print(f"{label}: {report['skipped']} shard(s) finished earlier, skipped")
    return todo, report


def run_generate(plan: Plan, part, console: Console, progress: Progress) -> dict[str, int]:
    from icr_data.generate import open_backend, sample

    shards = mine(plan.shards, part)
    todo, report = pending(plan, "generate", plan.gen_keys, shards, console, "generate")
    if not todo:
        return report
    task = progress.add_task(
        "generate", total=sum(len(plan.rows_of[s.index]) for s in todo), rate=""
    )
    backend = open_backend(
        plan.resolved["generator"], plan.recipe.sampling, plan.recipe.models.chat_template
    )
    try:
        for shard in todo:
            prompts = plan.shard_prompts(shard).select_columns(["prompt_id", "lang", "instruction"])
            out = sample(
                backend, prompts, plan.recipe.sampling, advance=lambda k: progress.advance(task, k)
            )
            key = plan.gen_keys[shard.index]
            with _writing(plan.work.root):
                plan.work.save("generate", key, out.select_columns(GEN_COLUMNS),
                               {"shard": shard.index, "generator": plan.ids["generator"]})  # fmt: skip
    finally:
        backend.close()
    return report


def _with_scoring_prompt(plan: Plan, shard: Shard, gen: Dataset) -> Dataset:
    rows = plan.shard_prompts(shard)
    sp = {
        (p, lang): x for p, lang, x in zip(rows["prompt_id"], rows["lang"], rows["scoring_prompt"])
    }
    return gen.add_column(
        "scoring_prompt", [sp[(p, lang)] for p, lang in zip(gen["prompt_id"], gen["lang"])]
    )


def _need_generation(plan: Plan, shards: list[Shard], then: str) -> None:
    missing = [s.index for s in shards if not plan.work.done("generate", plan.gen_keys[s.index])]
    if missing:
        raise MissingWork(
            f"shard(s) {', '.join(map(str, missing))} of {len(plan.shards)} are not generated yet "
            f"for this recipe; run `icr-data generate` (with the same --shard) before `{then}`"
        )


def run_score(plan: Plan, part, console: Console, progress: Progress) -> dict[str, dict[str, int]]:
    from icr_data.score import ScoreStats, encode_candidates, sequence_logps

    shards = mine(plan.shards, part)
    _need_generation(plan, shards, "score")
    cfg, tok = plan.recipe.scoring, plan.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = models.pick_device(cfg.device)
    dtype = models.pick_dtype(cfg.dtype, device)
    reports = {}
    for role in ROLES:
        keys = plan.logp_keys[role]
        todo, reports[role] = pending(plan, "logp", keys, shards, console, f"score ({role})")
        if not todo:
            continue
        cands = {
            s.index: _with_scoring_prompt(
                plan, s, plan.work.load("generate", plan.gen_keys[s.index])
            )
            for s in todo
        }
        task = progress.add_task(
            f"score ({role})", total=sum(len(c) for c in cands.values()), rate=""
        )
        stats = ScoreStats()

        def step(k: int, _tokens: int, task=task, stats=stats) -> None:
            progress.update(task, advance=k, rate=f"{stats.tokens_per_s:,.0f} tok/s")

        model = models.load_causal_lm(plan.resolved[role], device, dtype)
        try:
            for shard in todo:
                rows = encode_candidates(cands[shard.index], tok, cfg.count_eot)
                logps = sequence_logps(model, rows, pad_id, device, cfg.token_budget,
                                       cfg.max_batch_size, advance=step, stats=stats)  # fmt: skip
                out = Dataset.from_dict(
                    {"logp": logps, "response_tokens": [len(r.response_ids) for r in rows]}
                )
                with _writing(plan.work.root):
                    plan.work.save(
                        "logp",
                        keys[shard.index],
                        out,
                        {"shard": shard.index, "role": role, "model": plan.ids[role]},
                    )
            reports[role]["throughput"] = stats.as_dict()
        finally:
            del model
    return reports


def assemble(plan: Plan) -> Dataset:
    """The candidates table of the whole recipe, from finished shards, in shard order."""
    missing = []
    for s in plan.shards:
        if not plan.work.done("generate", plan.gen_keys[s.index]):
            missing.append(f"{s.index} (generate)")
        missing += [f"{s.index} (logp/{r})" for r in ROLES
                    if not plan.work.done("logp", plan.logp_keys[r][s.index])]  # fmt: skip
    if missing:
        raise MissingWork(
            f"unfinished shard(s): {', '.join(missing)}; run `icr-data generate` and `icr-data score` for them (or `icr-data build`)"
        )
    parts = []
    for s in plan.shards:
        gen = _with_scoring_prompt(plan, s, plan.work.load("generate", plan.gen_keys[s.index]))
        lp = plan.work.load("logp", plan.logp_keys["policy"][s.index])
        lr = plan.work.load("logp", plan.logp_keys["reference"][s.index])
        beta = plan.recipe.scoring.beta
        parts.append(with_rewards(gen, lp["response_tokens"], lp["logp"], lr["logp"], beta))
    from icr_data.langid import add_lid

    return add_lid(concatenate_datasets(parts), plan.langs).select_columns(CANDIDATE_COLUMNS)


def margin_summary(
    pairs: Dataset, candidates: Dataset, prompts: Dataset, langs: list[str]
) -> tuple[dict, dict]:
    """Per-language counts and margin quantiles, computed with polars."""
    counts, margins = {}, {}
    p_df = pl.from_arrow(prompts.data.table).select("lang")
    c_df = pl.from_arrow(candidates.data.table).select("lang")
    m_df = pl.from_arrow(pairs.data.table).select("lang", "margin") if len(pairs) else None
    for lang in langs:
        counts[lang] = {
            "prompts": p_df.filter(pl.col("lang") == lang).height,
            "candidates": c_df.filter(pl.col("lang") == lang).height,
            "pairs": 0,
        }
        q = {k: None for k in ("mean", "min", "q10", "q25", "median", "q75", "q90", "max")}
        if m_df is not None:
            m = m_df.filter(pl.col("lang") == lang)["margin"]
            counts[lang]["pairs"] = m.len()
            if m.len():
                q = {
                    "mean": m.mean(), "min": m.min(), "q10": m.quantile(0.1, "linear"),
                    "q25": m.quantile(0.25, "linear"), "median": m.median(),
                    "q75": m.quantile(0.75, "linear"), "q90": m.quantile(0.9, "linear"),
                    "max": m.max(),
                }  # fmt: skip
        margins[lang] = q
    return counts, margins


def make_manifest(
    recipe: Recipe,
    model_ids: dict,
    stats: PairStats,
    counts: dict,
    margins: dict,
    timings: dict,
    parent: str | None = None,
    skipped_english: dict[str, int] | None = None,
    rounds: list[dict] | None = None,
) -> dict:
    funnel = {lang: dict(f) for lang, f in stats.funnel.items()}
    for lang, n in (skipped_english or {}).items():
        funnel.setdefault(lang, empty_funnel())["prompts_skipped"] = {"no_english_row": n}
    return {
        "dataset": recipe.dataset,
        "version": None,
        "parent": parent,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "code_version": f"icr-data {icr_data.__version__}",
        "recipe": recipe.to_dict(),
        "models": model_ids,
        "sampling": {
            **recipe.sampling.__dict__,
            "seed_rule": "per prompt: sha256(f'{seed}\\x1f{prompt_id}\\x1f{lang}')[:4] & 0x7fffffff",
        },
        "scoring": {
            "mode": recipe.scoring.mode,
            "beta": recipe.scoring.beta,
            "count_eot": recipe.scoring.count_eot,
            "directive": DIRECTIVE,
            "convention": SCORING_CONVENTION,
            "reward": "beta * (logp_policy - logp_ref)",
        },
        "pairing": {
            "rule": recipe.pairing.rule,
            "length_control": recipe.pairing.length_control,
            "length_unit": recipe.pairing.length_unit,
            "alpha_grid": {
                "min": 0.0,
                "max": recipe.pairing.alpha_max,
                "step": recipe.pairing.alpha_step,
            },
            "alphas": stats.alphas,
            "mean_length_diff": stats.mean_length_diff,
            "length_margin_corr": stats.length_margin_corr,
            "settings": dataclasses.asdict(recipe.pairing),
        },
        "training": {
            "reference": model_ids.get("training_reference"),
            "prompt": "the native-language instruction (the pairs' prompt column)",
        },
        "rounds": rounds if rounds is not None else round_history(recipe, model_ids),
        "counts": counts,
        "totals": {
            k: sum(c[k] for c in counts.values()) for k in ("prompts", "candidates", "pairs")
        },
        "funnel": funnel,
        "margins": margins,
        "timings": timings,
        "hardware": hardware(),
    }


def hardware() -> dict:
    import torch

    out = {"machine": platform.machine(), "python": platform.python_version(),
           "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}  # fmt: skip
    try:
        out["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        out["cpu"] = platform.processor()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def merge(plan: Plan, version: str | None = None, timings: dict | None = None) -> tuple[Path, dict]:
    recipe = plan.recipe
    candidates = assemble(plan)
    pairs, stats = make_pairs(candidates, recipe.pairing)
    counts, margins = margin_summary(pairs, candidates, plan.prompts, plan.langs)
    manifest = make_manifest(recipe, plan.ids, stats, counts, margins, timings or {},
                             skipped_english=plan.skipped_english)  # fmt: skip
    with _writing(Path(recipe.store) / recipe.dataset):
        path = store.write_version(recipe.store, recipe.dataset, {"pairs": pairs, "candidates": candidates},
                                   manifest, render_card, name=version)  # fmt: skip
    return path, manifest


def build(
    recipe: Recipe,
    console: Console | None = None,
    version: str | None = None,
    part: tuple[int, int] | None = None,
    stages: tuple[str, ...] = ("generate", "score", "merge"),
    executor: str = "local",
    address: str | None = None,
) -> Result:
    """Run `stages` of the recipe (for shards I mod N with `part=(I, N)`), in this process or,
    with `executor="ray"`, on the Ray cluster at `address` (ray_exec.py: same shards and keys)."""
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    console = console or stderr_console()
    dataset_dir = Path(recipe.store) / recipe.dataset
    if version is not None and (dataset_dir / version).exists():
        raise store.StoreError(
            f"version {version} already exists at {dataset_dir / version}; versions are immutable"
        )
    plan = make_plan(recipe)  # validates prompts and models before anything is written
    _check_writable(dataset_dir)
    console.print(
        f"[bold]{recipe.dataset}[/]: {len(plan.prompts)} prompts in {', '.join(plan.langs)}, "
        f"{len(plan.shards)} shard(s); {recipe.sampling.n} samples each with {recipe.sampling.backend}"
    )
    report: dict[str, dict[str, int]] = {}
    timings = {}
    run_gen, run_sc = run_generate, run_score
    if executor == "ray":  # imported only here: ray is an optional extra
        from icr_data import ray_exec

        run_gen, run_sc = ray_exec.runners(address)
    with progress_bar(console) as progress:
        if "generate" in stages:
            t0 = time.perf_counter()
            report["generate"] = run_gen(plan, part, console, progress)
            timings["generate_s"] = round(time.perf_counter() - t0, 2)
        if "score" in stages:
            t0 = time.perf_counter()
            report.update(run_sc(plan, part, console, progress))
            timings["score_s"] = round(time.perf_counter() - t0, 2)
    timings["scoring_throughput"] = {r: report[r].get("throughput") for r in ROLES if r in report}
    if "merge" not in stages:
        return Result(None, None, report)
    path, manifest = merge(plan, version, timings)
    return Result(path, manifest, report)
