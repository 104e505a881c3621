"""Planning a run: a recipe's models resolved and checked, its prompts read, its shards cut, its
stages made and the generation keyed, before any work (commands/build.py runs what this plans).

    plan = make_plan(recipe)         # models resolved and prepared (prepare.resolve_models),
                                     # bad models, prompts and contexts refused in one line each
    plan.generate, plan.gen_keys     # the generation stage and its key per shard
    plan.phase                       # the score phase (score_phase.ScorePhase)
    plan.samples(shard)              # a shard's generated samples with their scoring prompts
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from icr_data.base.config import Recipe
from icr_data.commands.prepare import resolve_models
from icr_data.commands.score_phase import ScorePhase, score_phase
from icr_data.core.stage import Shard as StageShard
from icr_data.stages import models
from icr_data.stages.prompts import load_prompts
from icr_data.stages.stages import GenerateStage, RewardStage, model_key
from icr_data.store.shards import Shard, WorkDir, plan_shards


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
    gen_keys: dict[int, str] = field(default_factory=dict)
    phase: ScorePhase | None = None
    """Everything after generation: translations, log-prob passes, judge, language ID."""
    missing_langs: list[str] = field(default_factory=list)
    """Languages of prompts.languages without a single prompt row (warned about, not built)."""

    def shard_prompts(self, shard: Shard) -> Dataset:
        return self.prompts.select(self.rows_of[shard.index])

    def stage_shard(self, shard: Shard) -> StageShard:
        return StageShard(shard.index, self.shard_prompts(shard))

    def generated(self, shard: Shard) -> bool:
        return self.work.done(self.generate.name, self.gen_keys[shard.index])

    def samples(self, shard: Shard) -> StageShard:
        """A shard's generated samples, each with the scoring prompt of its (prompt_id, lang):
        the score phase's input."""
        gen = self.work.load(self.generate.name, self.gen_keys[shard.index])
        rows = self.shard_prompts(shard)
        sp = {(p, lang): x
              for p, lang, x in zip(rows["prompt_id"], rows["lang"], rows["scoring_prompt"])}  # fmt: skip
        x = [sp[(p, lang)] for p, lang in zip(gen["prompt_id"], gen["lang"])]
        return StageShard(shard.index, gen.add_column("scoring_prompt", x))


def _check_models(recipe: Recipe, resolved: dict[str, str]):
    """Refuse, before any work, a reward pair that cannot be scored together or a missing
    template; return the pair's tokenizer."""
    from icr_data.stages.architecture import check_causal_lm
    from icr_data.stages.chat import render_prompt

    for role in ("generator", "policy", "reference"):  # each generates or gives token log-probs
        check_causal_lm(resolved[role], f"models.{role}: model {getattr(recipe.models, role)}")
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


def model_specs(recipe: Recipe) -> dict[str, str]:
    """Every model string the recipe names, by its recipe key (what a build resolves, and
    prepares, first): models.*, scoring.judge and scoring.translator where scoring uses them,
    training.reference where set."""
    specs = {f"models.{role}": getattr(recipe.models, role)
             for role in ("generator", "policy", "reference")}  # fmt: skip
    if recipe.scoring.judge:
        specs["scoring.judge"] = recipe.scoring.judge.removeprefix("reward:")
    if recipe.scoring.mode == "translate_en":  # the translator: the generator unless named
        specs["scoring.translator"] = recipe.scoring.translator or recipe.models.generator
    if recipe.training.reference:
        specs["training.reference"] = recipe.training.reference
    return specs


def make_plan(recipe: Recipe, console=None) -> Plan:
    """Resolve (and prepare) the models, read the prompts, cut the shards, make every stage and
    key the generation."""
    specs = model_specs(recipe)
    found = resolve_models(specs, console)  # one line for a model that cannot be loaded
    resolved = {key.removeprefix("models.").removeprefix("scoring."): path
                for key, path in found.items() if key != "training.reference"}  # fmt: skip
    ids = {role: models.identity(specs[key], found[key])
           for key, role in (("models.generator", "generator"), ("models.policy", "policy"),
                             ("models.reference", "reference"))}  # fmt: skip
    # the reference the DPO trainer will use on this version (default: the generator)
    ids["training_reference"] = (
        models.identity(specs["training.reference"], found["training.reference"])
        if "training.reference" in found
        else ids["generator"]
    )
    if "judge" in resolved:  # an explicit reward model, checked before any work
        models.check_sequence_classifier(
            resolved["judge"], f"scoring.judge: {recipe.scoring.judge}"
        )
        ids["judge"] = models.identity(specs["scoring.judge"], resolved["judge"])
    if "translator" in resolved:
        ids["translator"] = models.identity(specs["scoring.translator"], resolved["translator"])
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
    judge = translator = None
    if "judge" in resolved:
        judge = RewardStage(model=resolved["judge"], model_key=model_key(ids["judge"]),
                            chat_template=recipe.models.chat_template, device=device)  # fmt: skip
    if "translator" in resolved:
        from icr_data.commands.translate import response_translator

        translator = response_translator(resolved["translator"], ids["translator"],
                                         recipe.sampling, recipe.models.chat_template)  # fmt: skip
    plan.phase = score_phase(resolved["policy"], resolved["reference"], ids, recipe.scoring,
                             recipe.models.chat_template, device, translator, judge,
                             tuple(langs), seed=recipe.sampling.seed)  # fmt: skip
    if plan.phase.stability is not None:  # every shard's share of the sample, whoever scores it
        plan.phase.stability.total = len(prompts) * recipe.sampling.n
    for shard in shards:
        plan.gen_keys[shard.index] = plan.generate.key(plan.stage_shard(shard))
    return plan
