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

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, concatenate_datasets
from rich.console import Console

from icr_data.stages import models

from icr_data.store import store
from icr_data.stages.agreement import candidate_agreement
from icr_data.store.card import render_card
from icr_data.base.config import Recipe
from icr_data.base.console import progress_bar, stderr_console
from icr_data.core.executor import LocalExecutor, Task, writing
from icr_data.base.logs import log_to
from icr_data.store.manifest import make_manifest, margin_summary
from icr_data.stages.prompts import load_prompts
from icr_data.stages.score import with_rewards
from icr_data.store.shards import Shard, WorkDir, digest, mine, plan_shards
from icr_data.stages.stages import (
    GenerateStage,
    LangIdStage,
    LogprobStage,
    PairStage,
    RewardStage,
    logprob_stages,
    model_key,
)
from icr_data.stages.stages import Shard as StageShard

CANDIDATE_COLUMNS = [
    "prompt_id", "lang", "instruction", "scoring_prompt", "sample_idx", "response",
    "finish_reason", "response_tokens", "logp_policy", "logp_ref", "reward", "reward_mean",
    "lid_lang", "lid_score",
]  # fmt: skip
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
    generate: GenerateStage | None = None
    logp: dict[str, LogprobStage] = field(default_factory=dict)
    langid: LangIdStage | None = None
    judge: RewardStage | None = None
    """scoring.judge: the explicit reward model's stage (None without one)."""
    gen_keys: dict[int, str] = field(default_factory=dict)
    logp_keys: dict[str, dict[int, str]] = field(default_factory=dict)
    lid_keys: dict[int, str] = field(default_factory=dict)
    judge_keys: dict[int, str] = field(default_factory=dict)
    translate: GenerateStage | None = None
    """scoring.mode translate_en: the stage translating non-English responses to English."""
    translate_keys: dict[int, str] = field(default_factory=dict)
    """translate_en: per shard with non-English rows, the key of its translations."""
    native_keys: dict[str, dict[int, str]] = field(default_factory=dict)
    """scoring.agreement: native: per role, the keys of the log-prob passes over the same samples
    under their own instruction (empty without it)."""
    missing_langs: list[str] = field(default_factory=list)
    """Languages of prompts.languages without a single prompt row (warned about, not built)."""

    def shard_prompts(self, shard: Shard) -> Dataset:
        return self.prompts.select(self.rows_of[shard.index])

    def stage_shard(self, shard: Shard, upstream: str | None = None) -> StageShard:
        return StageShard(shard.index, self.shard_prompts(shard), upstream)


@dataclass
class Result:
    path: Path | None
    manifest: dict | None
    report: dict[str, dict[str, int]]
    identical_to: str | None = None
    """The latest earlier version, when this run's pairs, candidates and recipe equal its own."""
    written: bool = True
    """False when --if-changed skipped an identical version (`path` is then the earlier one)."""


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise store.StoreError(f"store is not writable: {folder} ({e.strerror})") from None


def _check_models(recipe: Recipe, resolved: dict[str, str]):
    """Refuse, before any work, a reward pair that cannot be scored together or a missing
    template; return the pair's tokenizer."""
    from icr_data.stages.chat import render_prompt

    template = recipe.models.chat_template
    tok = models.pair_tokenizer(resolved["policy"], resolved["reference"], template)
    gen_tok = models.load_tokenizer(resolved["generator"], template)
    for t in (gen_tok, tok):
        render_prompt(t, "x")  # raises TemplateError naming the model if it has no template
    return gen_tok, tok


def _check_context(recipe: Recipe, resolved: dict[str, str], prompts: Dataset, gen_tok,
                   pair_tok) -> None:  # fmt: skip
    """Refuse, before any engine starts, a prompt row whose chat-rendered instruction does not
    fit the generator's context (sampling.max_model_len, else the config's), or whose scoring
    prompt does not fit the policy's: one PromptError naming the row."""
    from icr_data.stages.chat import render_prompt
    from icr_data.stages.prompts import PromptError

    limit = recipe.sampling.max_model_len
    checks = [
        ("instruction", gen_tok, limit or models.context_length(resolved["generator"]),
         "sampling.max_model_len" if limit else f"the generator's config ({recipe.models.generator})"),
        ("scoring_prompt", pair_tok, models.context_length(resolved["policy"]),
         f"the policy's config ({recipe.models.policy})"),
    ]  # fmt: skip
    for column, tok, ctx, source in checks:
        if ctx is None:
            continue
        texts = list(dict.fromkeys(prompts[column]))
        # A token of the instruction covers at least one of its bytes: only texts whose bytes
        # plus the template's own tokens (and a margin) reach the context need counting.
        frame = len(tok(render_prompt(tok, "x"), add_special_tokens=False)["input_ids"]) + 16
        long = [t for t in texts if len(t.encode()) + frame >= ctx]
        if not long:
            continue
        rendered = [render_prompt(tok, t) for t in long]
        sizes = dict(zip(long, map(len, tok(rendered, add_special_tokens=False)["input_ids"])))
        for pid, lang, text in zip(prompts["prompt_id"], prompts["lang"], prompts[column]):
            if sizes.get(text, 0) >= ctx:
                what = "instruction" if column == "instruction" else "scoring prompt (x)"
                raise PromptError(
                    f"{recipe.prompts.source}: prompt_id {pid} ({lang}): the {what} is "
                    f"{sizes[text]} tokens with the chat template, but the context is {ctx} "
                    f"tokens ({source}), leaving no room for a response; shorten or drop the row"
                )


def training_reference(recipe: Recipe, resolved: dict[str, str], ids: dict) -> dict:
    """Identity of the reference the DPO trainer will use on this version (default: generator)."""
    spec = recipe.training.reference
    if not spec:
        return ids["generator"]
    return models.identity(spec, models.resolve(spec, "training.reference"))


def model_specs(recipe: Recipe) -> list[str]:
    """Every model string the recipe names (what `prepare` readies before a build)."""
    specs = [recipe.models.generator, recipe.models.policy, recipe.models.reference]
    if recipe.scoring.judge:
        specs.append(recipe.scoring.judge.removeprefix("reward:"))
    if recipe.scoring.mode == "translate_en" and recipe.scoring.translator:
        specs.append(recipe.scoring.translator)
    return specs + ([recipe.training.reference] if recipe.training.reference else [])


def make_plan(recipe: Recipe) -> Plan:
    """Resolve the (prepared) models, read the prompts, cut the shards and key every stage's work."""
    resolved = {
        role: models.resolve(getattr(recipe.models, role), role)
        for role in ("generator", "policy", "reference")
    }
    for role, path in resolved.items():
        models.check_reachable(getattr(recipe.models, role), path, f"models.{role}")
    ids = {
        role: models.identity(getattr(recipe.models, role), path) for role, path in resolved.items()
    }
    ids["training_reference"] = training_reference(recipe, resolved, ids)
    if recipe.scoring.judge:  # an explicit reward model, checked before any work
        spec = recipe.scoring.judge.removeprefix("reward:")
        resolved["judge"] = models.resolve(spec, "scoring.judge")
        models.check_sequence_classifier(
            resolved["judge"], f"scoring.judge: {recipe.scoring.judge}"
        )
        ids["judge"] = models.identity(spec, resolved["judge"])
    if recipe.scoring.mode == "translate_en":  # the translator: the generator unless named
        spec = recipe.scoring.translator or recipe.models.generator
        resolved["translator"] = models.resolve(spec, "scoring.translator")
        models.check_reachable(spec, resolved["translator"], "scoring.translator")
        ids["translator"] = models.identity(spec, resolved["translator"])
    gen_tok, tokenizer = _check_models(recipe, resolved)
    skipped: dict[str, int] = {}
    prompts = load_prompts(recipe.prompts, recipe.scoring, skipped)
    _check_context(recipe, resolved, prompts, gen_tok, tokenizer)
    present = set(prompts["lang"])
    langs = [lang for lang in recipe.prompts.languages if lang in present]
    shards = plan_shards(prompts["prompt_id"], recipe.shard_prompts)
    shard_of = {pid: s.index for s in shards for pid in s.prompt_ids}
    rows_of: dict[int, list[int]] = {s.index: [] for s in shards}
    for i, pid in enumerate(prompts["prompt_id"]):
        rows_of[shard_of[pid]].append(i)
    work = WorkDir(Path(recipe.store) / recipe.dataset / ".work")
    plan = Plan(recipe, resolved, ids, prompts, langs, shards, rows_of, work, skipped, tokenizer)
    plan.missing_langs = [lang for lang in recipe.prompts.languages if lang not in present]

    plan.generate = GenerateStage(model=resolved["generator"], model_key=model_key(ids["generator"]),
                                  sampling=recipe.sampling, chat_template=recipe.models.chat_template,
                                  model_id=ids["generator"])  # fmt: skip
    device = models.pick_device(recipe.scoring.device, "scoring.device")
    passes = logprob_stages(resolved["policy"], resolved["reference"], ids, recipe.scoring,
                            recipe.models.chat_template, device)  # fmt: skip
    plan.logp = {stage.role: stage for stage in passes}
    plan.langid = LangIdStage(languages=tuple(langs))
    if "judge" in resolved:
        plan.judge = RewardStage(model=resolved["judge"], model_key=model_key(ids["judge"]),
                                 chat_template=recipe.models.chat_template, device=device)  # fmt: skip
    if "translator" in resolved:
        from icr_data.commands.translate import DEFAULT_TEMPLATE, response_translator

        plan.translate = response_translator(resolved["translator"], ids["translator"],
                                             recipe.sampling, recipe.models.chat_template)  # fmt: skip
    plan.logp_keys = {role: {} for role in ROLES}
    for shard in shards:
        prompt_rows = plan.stage_shard(shard)  # one selection per shard for every key
        gen_key = plan.generate.key(prompt_rows)
        plan.gen_keys[shard.index] = gen_key
        samples = StageShard(shard.index, prompt_rows.rows, gen_key)  # the samples of those rows
        scored = samples  # what the log-prob passes read: the samples, or their translations
        if plan.translate is not None:
            if set(prompt_rows.rows["lang"]) - {"en"}:
                requests = StageShard(shard.index, prompt_rows.rows,
                                      digest([gen_key, DEFAULT_TEMPLATE]))  # fmt: skip
                plan.translate_keys[shard.index] = plan.translate.key(requests)
            upstream = digest([gen_key, plan.translate_keys.get(shard.index)])
            scored = StageShard(shard.index, prompt_rows.rows, upstream)
        for role in ROLES:
            plan.logp_keys[role][shard.index] = plan.logp[role].key(scored)
        plan.lid_keys[shard.index] = plan.langid.key(samples)
        if plan.judge is not None:
            plan.judge_keys[shard.index] = plan.judge.key(samples)
        if recipe.scoring.agreement:  # the same stages, keyed by the native scoring prompts
            native = StageShard(shard.index, _native(prompt_rows.rows), gen_key)
            for role in ROLES:
                plan.native_keys.setdefault(role, {})[shard.index] = plan.logp[role].key(native)
    return plan


def _native(rows: Dataset) -> Dataset:
    """`rows` with each row's own instruction as its scoring prompt (native scoring)."""
    return rows.remove_columns("scoring_prompt").add_column("scoring_prompt", rows["instruction"])


def _generated(plan: Plan, shard: Shard, native: bool = False) -> Dataset:
    """A shard's samples, with the scoring prompt of each sample's (prompt_id, lang), or with
    `native`, its own instruction (scoring.agreement)."""
    gen = plan.work.load("generate", plan.gen_keys[shard.index])
    if native:
        return gen.add_column("scoring_prompt", gen["instruction"])
    rows = plan.shard_prompts(shard)
    sp = {
        (p, lang): x for p, lang, x in zip(rows["prompt_id"], rows["lang"], rows["scoring_prompt"])
    }
    return gen.add_column(
        "scoring_prompt", [sp[(p, lang)] for p, lang in zip(gen["prompt_id"], gen["lang"])]
    )


def _with_english(plan: Plan, shard: Shard) -> Dataset:
    """translate_en: a shard's samples (see _generated) + response_en."""
    from icr_data.commands.translate import with_english

    gen = _generated(plan, shard)
    key = plan.translate_keys.get(shard.index)
    return with_english(gen, plan.work.load("generate", key)["response"] if key else [])


def _scoring_rows(plan: Plan, shard: Shard) -> Dataset:
    """What the log-prob passes score: the samples, or in translate_en mode their English
    translations (as `response`) under the English instruction."""
    if plan.translate is None:
        return _generated(plan, shard)
    rows = _with_english(plan, shard).remove_columns("response")
    return rows.rename_column("response_en", "response")


def _translation_requests(plan: Plan, shard: Shard) -> Dataset:
    from icr_data.commands.translate import english_requests

    return english_requests(_generated(plan, shard))


def generate_tasks(plan: Plan, shards: list[Shard]) -> list[Task]:
    stage = plan.generate
    return [Task(s.index, plan.gen_keys[s.index], len(plan.rows_of[s.index]),
                 lambda s=s: plan.shard_prompts(s), stage.made_of(plan.stage_shard(s)))
            for s in shards]  # fmt: skip


def sample_tasks(plan: Plan, stage, keys: dict[int, str], shards: list[Shard],
                 native: bool = False, load=None) -> list[Task]:  # fmt: skip
    """Tasks of a stage whose input is a shard's samples (log-probs, language ID); with `native`,
    under their own instruction (see _generated); `load(plan, shard)` reads another input.
    Shards without a key (no work for the stage) are left out."""
    n = plan.recipe.sampling.n
    extra = {"scoring_prompt": "native"} if native else {}
    load = load or (lambda plan, s: _generated(plan, s, native))
    return [Task(s.index, keys[s.index], n * len(plan.rows_of[s.index]),
                 lambda s=s: load(plan, s),
                 {**stage.made_of(plan.stage_shard(s)), **extra})
            for s in shards if s.index in keys]  # fmt: skip


def _need_generation(plan: Plan, shards: list[Shard], then: str) -> None:
    missing = [s.index for s in shards if not plan.work.done("generate", plan.gen_keys[s.index])]
    if missing:
        raise MissingWork(
            f"shard(s) {', '.join(map(str, missing))} of {len(plan.shards)} are not generated yet "
            f"for this recipe; run `icr-data generate` (with the same --shard) before `{then}`"
        )


def run_generate(plan: Plan, part, executor) -> dict:
    return executor.run(plan.generate, generate_tasks(plan, mine(plan.shards, part)))


def run_score(plan: Plan, part, executor) -> dict[str, dict]:
    shards = mine(plan.shards, part)
    _need_generation(plan, shards, "score")
    reports = {}
    if plan.translate is not None:  # translate_en: the responses to English first
        todo = sample_tasks(plan, plan.translate, plan.translate_keys, shards,
                            load=_translation_requests)  # fmt: skip
        for t in todo:  # the bar counts the responses to translate: those not in English
            t.size = plan.recipe.sampling.n * sum(
                lang != "en" for lang in plan.prompts.select(plan.rows_of[t.index])["lang"]
            )
        reports["translate"] = executor.run(plan.translate, todo, "translate (to English)")
    for role in ROLES:
        todo = sample_tasks(plan, plan.logp[role], plan.logp_keys[role], shards,
                            load=_scoring_rows)  # fmt: skip
        if plan.native_keys:  # scoring.agreement: the native pass while the same model is loaded
            todo += sample_tasks(plan, plan.logp[role], plan.native_keys[role], shards, True)
        reports[role] = executor.run(plan.logp[role], todo, f"score ({role})")
    if plan.judge is not None:  # the second opinion: one more model over the same samples
        todo = sample_tasks(plan, plan.judge, plan.judge_keys, shards)
        reports["judge"] = executor.run(plan.judge, todo, "score (judge)")
    return reports


def assemble(plan: Plan, executor=None) -> tuple[Dataset, dict]:
    """The candidates table of the whole recipe, from finished shards, in shard order; language
    ID is run here (locally, unless `executor` says) for the shards that lack it."""
    missing = []
    for s in plan.shards:
        if not plan.work.done("generate", plan.gen_keys[s.index]):
            missing.append(f"{s.index} (generate)")
        missing += [f"{s.index} (logp/{r})" for r in ROLES
                    if not plan.work.done("logp", plan.logp_keys[r][s.index])]  # fmt: skip
        if plan.judge is not None and not plan.work.done("reward", plan.judge_keys[s.index]):
            missing.append(f"{s.index} (judge)")
        key = plan.translate_keys.get(s.index)
        if key and not plan.work.done("generate", key):
            missing.append(f"{s.index} (translate)")
        missing += [f"{s.index} (native logp/{r})" for r, keys in plan.native_keys.items()
                    if not plan.work.done("logp", keys[s.index])]  # fmt: skip
    if missing:
        raise MissingWork(
            f"unfinished shard(s): {', '.join(missing)}; run `icr-data generate` and `icr-data score` for them (or `icr-data build`)"
        )
    executor = executor or LocalExecutor(plan.work)
    report = executor.run(plan.langid, sample_tasks(plan, plan.langid, plan.lid_keys, plan.shards),
                          "language ID")  # fmt: skip
    parts = []
    for s in plan.shards:
        gen = _generated(plan, s) if plan.translate is None else _with_english(plan, s)
        lp = plan.work.load("logp", plan.logp_keys["policy"][s.index])
        lr = plan.work.load("logp", plan.logp_keys["reference"][s.index])
        lid = plan.work.load("langid", plan.lid_keys[s.index])
        scored = with_rewards(
            gen, lp["response_tokens"], lp["logp"], lr["logp"], plan.recipe.scoring.beta
        )
        scored = scored.add_column("lid_lang", lid["lid_lang"])
        scored = scored.add_column("lid_score", lid["lid_score"])
        if plan.judge is not None:
            judged = plan.work.load("reward", plan.judge_keys[s.index])["reward"]
            scored = scored.add_column("judge_reward", judged)
        if plan.native_keys:
            lp, lr = (plan.work.load("logp", plan.native_keys[r][s.index])["logp"] for r in ROLES)
            scored = scored.add_column(
                "reward_native", native_rewards(lp, lr, plan.recipe.scoring.beta)
            )
        parts.append(scored)
    columns = CANDIDATE_COLUMNS + (["judge_reward"] if plan.judge is not None else [])
    columns += ["reward_native"] if plan.native_keys else []
    if plan.translate is not None:  # the English translation beside the response
        columns.insert(columns.index("response") + 1, "response_en")
    return concatenate_datasets(parts).select_columns(columns), report


def native_rewards(logp_policy: list[float], logp_ref: list[float], beta: float) -> list[float]:
    """reward_native: the implicit reward under the native scoring prompt, as `reward` is made."""
    return [beta * (p - r) for p, r in zip(logp_policy, logp_ref)]


def identical_version(dataset_dir: Path, tables: dict[str, Dataset | list[Path]],
                      manifest: dict) -> str | None:  # fmt: skip
    """The latest version of the dataset if its pairs and candidates hold the same rows as
    `tables` and its recipe (but for `store`) and models are this manifest's; else None."""
    import pyarrow as pa

    found = store.versions(dataset_dir)
    if not found:
        return None
    latest = dataset_dir / found[-1]

    def how(m: dict) -> tuple:
        return ({k: v for k, v in (m.get("recipe") or {}).items() if k != "store"},
                m.get("models"))  # fmt: skip

    try:
        if how(store.read_manifest(latest)) != how(manifest):
            return None
        for config, ds in tables.items():
            if isinstance(ds, list):  # files reused whole: their names are digests of their bytes
                if [f.name for f in ds] != [f.name for f in store.config_files(latest, config)]:
                    return None
            elif not store.read_table(latest, config).data.table.equals(ds.data.table):
                return None
    except (OSError, ValueError, pa.ArrowException, store.StoreError):
        return None  # an unreadable latest version is not "the same"
    return found[-1]


def merge(plan: Plan, version: str | None = None, timings: dict | None = None,
          executor=None, if_changed: bool = False) -> tuple[Path, dict, str | None]:  # fmt: skip
    """Pair the finished shards and write the version; the third value names the latest earlier
    version whose content is identical (then, with `if_changed`, nothing is written and the
    path and manifest are that version's)."""
    recipe = plan.recipe
    timings = dict(timings or {})
    t0 = time.perf_counter()
    candidates, lid = assemble(plan, executor)
    if lid["done"]:
        timings["langid_s"] = round(time.perf_counter() - t0, 2)
        timings["langid"] = lid.get("stats")  # texts, seconds, texts_per_s

    def manifest_for(pairs: Dataset, stats) -> dict:
        counts, margins = margin_summary(pairs, candidates, plan.prompts, plan.langs)
        return make_manifest(recipe, plan.ids, stats, counts, margins, timings,
                             skipped_english=plan.skipped_english,
                             mode_agreement=candidate_agreement(candidates))  # fmt: skip

    dataset_dir = Path(recipe.store) / recipe.dataset
    with writing(dataset_dir):
        return write_paired(dataset_dir, candidates, recipe.pairing, manifest_for, version,
                            if_changed)  # fmt: skip


def write_paired(dataset_dir: Path, candidates: Dataset, pairing, manifest_for, name: str | None,
                 if_changed: bool, candidate_files: list[Path] | None = None,
                 ) -> tuple[Path, dict, str | None]:  # fmt: skip
    """Pair `candidates` (PairStage) and write both as a new version of `dataset_dir`, with the
    manifest `manifest_for(pairs, pair_stats)` gives: (path, manifest, the latest earlier version
    holding the same content or None). With `if_changed` and such a version, nothing is written
    and the path and manifest are that version's. With `candidate_files` (another version's
    candidates, unchanged) those files are the version's candidates (linked or copied), and `candidates`
    need hold only the columns pairing and the manifest read: responses and instructions are
    read from the files a row group at a time. build.merge and derive's new versions share it."""
    from icr_data.pairing.textfeatures import ParquetTexts

    texts, features, kept = None, {}, None
    if candidate_files:
        texts = {c: ParquetTexts(candidate_files, c) for c in ("response", "instruction")}
        kept = load_text_features(dataset_dir, candidate_files, pairing)
        features = kept or {}
    stage = PairStage(pairing=pairing, texts=texts, features=features)
    pairs = stage.run(candidates)
    manifest = manifest_for(pairs, stage.pair_stats)
    tables = {"pairs": pairs, "candidates": candidate_files or candidates}
    same = identical_version(dataset_dir, tables, manifest)
    if same and if_changed:
        return dataset_dir / same, store.read_manifest(dataset_dir / same), same
    path = store.write_version(dataset_dir.parent, dataset_dir.name, tables, manifest, render_card,
                               name=name)  # fmt: skip
    if features and not kept:  # for the next pairing of these candidates
        save_text_features(dataset_dir, store.config_files(path, "candidates"), pairing, features)
    return path, manifest, same


def _text_features_key(candidate_files: list[Path], pairing) -> str:
    """The candidates' files are named by digests of their bytes: with the repetition settings
    and the code that computes them (textfeatures.py, textscan.py; pairs.py orders the
    candidates), they are what the text features depend on. The files are read, not imported
    (numba stays unloaded)."""
    from icr_data.base.files import source_file

    code = b"".join(source_file(f"icr_data.pairing.{name}").read_bytes()
                    for name in ("pairs", "textfeatures", "textscan"))  # fmt: skip
    return digest({"stage": "textfeatures", "candidates": [f.name for f in candidate_files],
                   "repetition": [pairing.repetition_ngram, pairing.repetition_max],
                   "code": hashlib.sha256(code).hexdigest()})  # fmt: skip


def load_text_features(dataset_dir: Path, candidate_files: list[Path], pairing) -> dict | None:
    """The text features (textfeatures.FEATURES) an earlier pairing of these candidates kept, or
    None."""
    work, key = WorkDir(dataset_dir / ".work"), _text_features_key(candidate_files, pairing)
    if not work.done("textfeatures", key):
        return None
    table = work.load("textfeatures", key).data.table
    return {c: table.column(c).to_numpy() for c in table.column_names}


def save_text_features(dataset_dir: Path, candidate_files: list[Path], pairing, features: dict):
    """Keep a pairing's text features in the dataset's work folder; a failure to write them only
    costs the next pairing the time to compute them again."""
    import pyarrow as pa

    work, key = WorkDir(dataset_dir / ".work"), _text_features_key(candidate_files, pairing)
    try:
        table = pa.table({k: np.asarray(v) for k, v in features.items()})
        work.save("textfeatures", key, Dataset(table, fingerprint=key[:16]),
                  {"stage": "textfeatures", "candidates": [f.name for f in candidate_files]})  # fmt: skip
    except OSError as e:
        stderr_console().print(f"[yellow]warning:[/] could not keep the text features for the "
                               f"next pairing ({e.strerror or e})", highlight=False)  # fmt: skip


def make_executor(kind: str, work, console: Console, progress, address: str | None, ray_cfg):
    """The executor of `--executor`: this process, or Ray actor pools (ray_exec.py)."""
    if kind == "ray":  # imported only here: ray is an optional extra
        from icr_data.core.ray_exec import RayExecutor

        return RayExecutor(work, console, progress, address=address, cfg=ray_cfg)
    return LocalExecutor(work, console, progress)


def prepare_models(specs: list[str], console: Console) -> None:
    """The explicit preparation step: train `train:CONFIG` models and build `builtin:` ones that
    are not cached yet, each announced with its own progress, before anything else runs."""
    from icr_data.commands import prepare

    steps = [s for s in prepare.plan(specs) if not s.done]
    if steps:
        console.print("prepare: " + "; ".join(f"{s.what} {s.spec}" for s in steps))
        prepare.run(steps, console)


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
    equals the latest version's says so; with `if_changed` it writes nothing."""
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    console = console or stderr_console()
    dataset_dir = Path(recipe.store) / recipe.dataset
    if version is not None and (dataset_dir / version).exists():
        raise store.StoreError(
            f"version {version} already exists at {dataset_dir / version}; versions are immutable"
        )
    prepare_models(model_specs(recipe), console)
    plan = make_plan(recipe)  # validates prompts and models before anything is written
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
        ex = make_executor(executor, plan.work, console, progress, address, recipe.ray)
        if "generate" in stages:
            t0 = time.perf_counter()
            report["generate"] = run_generate(plan, part, ex)
            timings["generate_s"] = round(time.perf_counter() - t0, 2)
        if "score" in stages:
            t0 = time.perf_counter()
            report.update(run_score(plan, part, ex))
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
