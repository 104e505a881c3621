"""Build recipes: dataclasses loaded from YAML, unknown keys refused, any key overridable.
Over 400 lines: one job (the recipe's dataclasses, each key documented, and their checks).

A recipe is one YAML file whose top-level keys are the fields of `Recipe` below, e.g.

    dataset: demo
    prompts: {source: data/demo_prompts.jsonl, languages: [en, es, de]}
    models: {generator: ..., policy: ..., reference: ...}

Load one with `load_recipe(path, overrides=["sampling.n=8"])` (read by yamlconf.load, the loader
of every YAML config). Relative paths in RECIPE_PATHS (`prompts.source`, `models.*`, ...) are
resolved against the recipe's folder when they exist there; a relative `store` is relative to the
working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from icr_data.base.registry import (
    PAIRING_RULES,
    REWARD_MODEL_BACKENDS,
    SCORERS,
    RegistryError,
)
from icr_data.base.yamlconf import (  # noqa: F401 - re-exported: apply_override, from_dict, ...
    ConfigError,
    apply_override,
    from_dict,
    load,
    resolve_relative,
)


class RecipeError(ConfigError):
    """A recipe that cannot be run; the message names the file (or the --set override) and the
    key."""


@dataclass
class PromptsConfig:
    source: str = ""
    """JSONL or Parquet file, or a `datasets` folder, with prompt_id, lang, instruction."""
    languages: list[str] = field(default_factory=lambda: ["en", "es", "de", "fr", "ru"])
    """Languages to build pairs for (ISO 639-1). English rows are also the scoring source."""
    limit: int | None = None
    """Keep at most this many prompt_ids (the first ones in source order); None keeps all."""
    missing_english: Literal["error", "skip"] = "error"
    """Cross-lingual mode, a prompt without its English row: refuse the file, or skip and count."""


@dataclass
class ModelsConfig:
    generator: str = ""
    """Samples the responses (iteration 1: the English DPO model)."""
    policy: str = ""
    """pi_dpo of the implicit reward."""
    reference: str = ""
    """pi_ref of the implicit reward."""
    chat_template: str | None = None
    """Jinja chat template (inline, or a file) for models whose tokenizer has none."""


@dataclass
class SamplingConfig:
    backend: Literal["vllm", "transformers"] = "vllm"
    """vllm (offline LLM.generate) or transformers (model.generate; a slow explicit fallback)."""
    n: int = 10
    temperature: float = 0.9
    top_p: float = 1.0
    max_tokens: int = 2400
    seed: int = 0
    """Recipe seed; each prompt's seed is derived from it and (prompt_id, lang)."""
    chunk_prompts: int = 256
    """Prompts handed to the engine at once (progress advances per chunk)."""
    gpu_memory_utilization: float | None = None
    """vLLM memory fraction; None means 0.9 on a GPU and 0.25 (of RAM) on CPU."""
    enforce_eager: bool | None = None
    """vLLM eager mode; None means eager on CPU (fast start), graphs on GPU."""
    max_model_len: int | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism: GPUs per engine (with `--executor ray`, GPUs per actor)."""


@dataclass
class ScoringConfig:
    mode: Literal["cross_lingual", "native", "translate_en"] = "cross_lingual"
    """cross_lingual: x = English instruction + language directive. native: x = own instruction.
    translate_en (the paper's weak baseline): each non-English response is translated to English
    by `translator` and scored as that translation under the English instruction."""
    beta: float = 1.0
    """reward = beta * (logp_policy - logp_ref). 1.0 keeps the research code's scale."""
    count_eot: bool = True
    """Count the chat template's end-of-turn token as a response token."""
    token_budget: int | None = None
    """Padded tokens per scoring batch (rows x longest row; rows are sorted by length).
    None: 4096 on CPU (measured best here, benchmarks/score.py), 16384 on CUDA."""
    max_batch_size: int = 64
    device: str = "auto"
    """auto: cuda if available, else cpu."""
    dtype: str = "auto"
    """auto: bfloat16 weights on CUDA, float32 on CPU. Sums are always accumulated in float32."""
    backend: str = "transformers"
    """How log-probs are computed: a name in registry.SCORERS (transformers: the default, faster on
    CPU and training's own forward; vllm). It enters the work's keys unless it is transformers,
    so one backend's log-probs never resume another's."""
    tensor_parallel_size: int = 1
    """GPUs one scoring engine spans (the vllm backend's tensor parallelism; with `--executor
    ray`, GPUs per scoring actor). Enters the work's keys when > 1."""
    judge: str | None = None
    """reward:MODEL: an explicit reward model (a sequence classifier) also scores every candidate
    under its own instruction (candidates gain `judge_reward`); the pair filter judge_disagrees
    drops pairs whose order it contradicts, and the card reports its agreement per language."""
    translator: str | None = None
    """translate_en: the model that translates responses to English (greedy, through the
    generation stage, with translate.DEFAULT_TEMPLATE); null: the generator."""
    agreement: str | None = None
    """null, or native: cross_lingual builds also score every sample under its own (native)
    instruction (one more policy and reference pass; candidates gain `reward_native`), and the
    manifest, card and build summary report per language the Kendall tau per prompt between the
    two rewards, flagging a language whose tau is not clearly above 0 (agreement.py)."""
    stability_sample: float = 0.02
    """Score stability: the share of candidates rescored by both models in other batches
    (seeded; at least 16, all when fewer; commands/stability.py), whose largest |difference|
    the manifest and card report. 0: not measured."""
    stability_bound: float = 1e-2
    """The largest |difference| in a summed log-prob (nats) the stability check accepts; above
    it the build stops before writing a version (its work kept). float32 on a CPU measured
    3.8e-6 (tiny models) and 7.0e-5 (SmolLM2-135M): 1e-2 leaves room for far longer responses
    and still catches a scorer defect (whole nats). bfloat16 measured 7.8e-3 on the tiny models:
    on a GPU it may need a larger bound (docs/trusting.md)."""


CANDIDATE_FILTERS = ("truncated", "empty", "duplicate", "repetition", "off_target")
"""Checked on each candidate before pairing, in this order (pairs.candidate_drop)."""
PAIR_FILTERS = ("chosen_eq_rejected", "tie", "judge_disagrees")
"""Checked on each selected pair (pairs.make_pairs)."""
FILTERS = CANDIDATE_FILTERS + PAIR_FILTERS
"""Every name pairing.filters / --filters accepts; all of them are on by default."""
DEFAULT_FILTERS = list(FILTERS)
DEVICE_RE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


@dataclass
class PairingConfig:
    rule: str = "max_min"
    """A name in registry.PAIRING_RULES (checked by validate_pairing): max_min: best vs worst (the
    paper's). max_random: best vs a random other. top_bottom: every top-k x bottom-k pair.
    threshold: every pair whose margin is at least `threshold`."""
    k: int = 2
    """top_bottom: how many from each end."""
    threshold: float = 0.0
    """threshold rule: minimum reward margin of a pair."""
    seed: int = 0
    """max_random: the rejected response is drawn with a seed derived from this and the prompt."""
    length_control: bool = True
    """Choose alpha per language so that mean(len(chosen) - len(rejected)) is closest to 0."""
    length_unit: Literal["chars", "tokens"] = "chars"
    alpha_max: float = 1.0
    alpha_step: float = 0.001
    filters: list[str] = field(default_factory=lambda: list(DEFAULT_FILTERS))
    """Candidate filters (truncated, empty, duplicate, repetition, off_target) and pair filters
    (chosen_eq_rejected, tie); each drop is counted by reason in the funnel."""
    tie_epsilon: float = 1e-6
    """tie filter: drop pairs with |margin| below this."""
    min_margin: float | None = None
    """Drop pairs whose margin is below this absolute value."""
    min_margin_quantile: float | None = None
    """Drop pairs whose margin is below this quantile (0..1) of their language's margins."""
    paper_exact: bool = False
    """The research code's selection, exactly: max/min, no candidate or pair filters (a prompt
    whose responses all score alike still yields its argmax/argmin pair), alpha per language in
    characters from the grid 0..1 step 0.001. Requires those settings; recorded as
    "paper-exact pairing" in the manifest and card."""
    repetition_ngram: int = 4
    repetition_max: float = 0.5
    """repetition filter: drop responses whose share of repeated word n-grams exceeds this."""


@dataclass
class RoundConfig:
    index: int = 1
    """Which round of the method this build is: 1 generates with the English DPO model; round k
    generates with the model trained on round k-1's pairs."""
    previous: str | None = None
    """Round > 1: the previous round's training record (training.json, written by the DPO recipe).
    A `models.*` field set to `previous` means the model that record trained; the manifest carries
    the earlier rounds forward."""


@dataclass
class TrainingConfig:
    reference: str | None = None
    """The reference model the DPO trainer will use on this version. None: the generator (DPO
    starts from the model that generated). Recorded in the manifest; `icr-data export --ref-logps`
    checks it against the scoring reference."""


@dataclass
class RayConfig:
    """Resources of `--executor ray` (ray_exec.py); the local executor ignores them. None: a
    default read from the cluster's nodes (their GPUs and CPUs) when a stage starts."""

    num_actors: int | None = None
    """Actors per stage (each holds one engine or one scoring model). None: the cluster's GPUs
    divided by gpus_per_actor, or 1 on a cluster without GPUs; never more than there are batches."""
    gpus_per_actor: float | None = None
    """None: generation takes sampling.tensor_parallel_size GPUs, scoring 1, on a cluster with
    GPUs; 0 without."""
    cpus_per_actor: float | None = None
    """None: 1 on a cluster with GPUs; without, the CPUs of one node shared among the actors
    (torch in an actor uses as many threads as it has CPUs)."""
    batch_size: int = 1
    """Shards per actor call. 1 gives the finest resume: each shard is saved as soon as it is done."""


@dataclass
class Recipe:
    dataset: str = ""
    """Dataset name: versions go to <store>/<dataset>/v<N>."""
    store: str = "icr_store"
    """Folder of the versions. A relative path is relative to the working directory (as --store
    is), not to the recipe's folder; build says where it resolved."""
    shard_prompts: int = 64
    """prompt_ids per shard: the unit of resumable work and of --shard I/N."""
    description: str = ""
    license: str = "other"
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE_PATHS = ("prompts.source", "round.previous", "models.generator", "models.policy",
                "models.reference", "models.chat_template", "training.reference",
                "scoring.translator", "scoring.judge")  # fmt: skip
"""Recipe fields resolved against the recipe's folder when they name something there (`store` is
not: it is relative to the working directory); `train:` and `reward:` keep their prefix."""


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A build recipe (yamlconf.load), its `previous` models read from round.previous's record."""
    recipe = load(path, Recipe, overrides, what="recipe", error=RecipeError, paths=RECIPE_PATHS,
                  keep=("previous",))  # fmt: skip
    for name in ("generator", "policy", "reference", "chat_template"):
        if getattr(recipe.models, name) == "previous":
            setattr(recipe.models, name, previous_model(recipe.round, f"{path}: 'models.{name}'"))
    if recipe.training.reference == "previous":
        recipe.training.reference = previous_model(recipe.round, f"{path}: 'training.reference'")
    validate(recipe, str(path))
    return recipe


def read_training_record(path: str | Path, where: str = "round.previous") -> dict:
    """A training record (training.json written by the DPO recipe), or a RecipeError naming it."""
    import json

    p = Path(path)
    if p.is_dir():
        p = p / "training.json"
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{where}: training record not found: {p}") from None
    except OSError as e:  # a folder, no permission, ...: not "not found"
        raise RecipeError(f"{where}: cannot read training record {p}: {e.strerror or e}") from None
    except ValueError as e:
        raise RecipeError(f"{where}: {p} is not valid JSON: {e}") from None
    if not isinstance(record, dict) or "output" not in record:
        raise RecipeError(f"{where}: {p} is not a training record (no 'output')")
    record["_path"] = str(p.resolve())
    return record


def previous_model(rnd: RoundConfig, where: str) -> str:
    """The model the previous round trained (its output folder), for fields set to `previous`."""
    if not rnd.previous:
        raise RecipeError(f"{where} is 'previous' but 'round.previous' names no training record")
    record = read_training_record(rnd.previous)
    if not record["output"].get("model"):
        raise RecipeError(f"{where} is 'previous', but {record['_path']} trained only a LoRA "
                          "adapter (lora.merge: false), no model to load")  # fmt: skip
    return str((Path(record["_path"]).parent / record["output"]["model"]).resolve())


def validate(recipe: Recipe, where: str = "recipe") -> None:
    from icr_data.base.languages import language_name

    if not recipe.dataset or "/" in recipe.dataset or recipe.dataset.startswith("."):
        raise RecipeError(f"{where}: 'dataset' must be a plain name, got {recipe.dataset!r}")
    if not recipe.prompts.source:
        raise RecipeError(f"{where}: 'prompts.source' is required")
    for name in ("generator", "policy", "reference"):
        if not getattr(recipe.models, name):
            raise RecipeError(f"{where}: 'models.{name}' is required")
    if not recipe.prompts.languages:
        raise RecipeError(f"{where}: 'prompts.languages' is empty")
    for lang in recipe.prompts.languages:
        try:
            language_name(lang)
        except KeyError as e:
            raise RecipeError(f"{where}: 'prompts.languages': {e.args[0]}") from None
    if recipe.prompts.limit is not None and recipe.prompts.limit < 1:
        raise RecipeError(f"{where}: 'prompts.limit' must be >= 1 (or null for all), "
                          f"got {recipe.prompts.limit}")  # fmt: skip
    validate_sampling(recipe.sampling, where)
    r = recipe.ray
    if (r.num_actors is not None and r.num_actors < 1) or r.batch_size < 1:
        raise RecipeError(f"{where}: 'ray.num_actors' and 'ray.batch_size' must be >= 1")
    if (r.gpus_per_actor or 0) < 0 or (r.cpus_per_actor is not None and r.cpus_per_actor <= 0):
        raise RecipeError(f"{where}: 'ray.gpus_per_actor' must be >= 0, 'ray.cpus_per_actor' > 0")
    if recipe.shard_prompts < 1:
        raise RecipeError(f"{where}: 'shard_prompts' must be >= 1")
    if (recipe.scoring.token_budget or 1) < 1 or recipe.scoring.max_batch_size < 1:
        raise RecipeError(
            f"{where}: 'scoring.token_budget' and 'scoring.max_batch_size' must be >= 1"
        )
    validate_scoring(recipe.scoring, where)
    if recipe.round.index < 1:
        raise RecipeError(f"{where}: 'round.index' must be >= 1, got {recipe.round.index}")
    p = recipe.pairing
    if p.alpha_step <= 0 or p.alpha_max < 0:
        raise RecipeError(f"{where}: 'pairing.alpha_step' must be > 0 and alpha_max >= 0")
    validate_pairing(p, where)


def validate_sampling(s: SamplingConfig, where: str, error: type[Exception] = RecipeError) -> None:
    """Sampling values an engine cannot take (build recipes and eval recipes alike), before any
    model loads; NaN and infinities refused."""
    import math

    if s.chunk_prompts < 1:
        raise error(f"{where}: 'sampling.chunk_prompts' must be >= 1, got {s.chunk_prompts}")
    if s.max_model_len is not None and s.max_model_len < 1:
        raise error(f"{where}: 'sampling.max_model_len' must be >= 1, got {s.max_model_len}")
    if s.n < 1:
        raise error(f"{where}: 'sampling.n' must be >= 1, got {s.n}")
    if s.max_tokens < 1:
        raise error(f"{where}: 'sampling.max_tokens' must be >= 1, got {s.max_tokens}")
    if not 0 < s.top_p <= 1:  # also refuses NaN
        raise error(f"{where}: 'sampling.top_p' must be in (0, 1], got {s.top_p}")
    if not (s.temperature >= 0 and math.isfinite(s.temperature)):
        raise error(f"{where}: 'sampling.temperature' must be a finite number >= 0, "
                    f"got {s.temperature}")  # fmt: skip
    if s.tensor_parallel_size < 1:
        raise error(f"{where}: 'sampling.tensor_parallel_size' must be >= 1")
    if s.gpu_memory_utilization is not None and not 0 < s.gpu_memory_utilization <= 1:
        raise error(f"{where}: 'sampling.gpu_memory_utilization' must be in (0, 1], "
                    f"got {s.gpu_memory_utilization}")  # fmt: skip


def validate_scoring(s: ScoringConfig, where: str = "scoring") -> None:
    """Scoring values that make no reward (beta <= 0) or name no device (rescore uses it too)."""
    if not (s.beta > 0 and s.beta != float("inf")):  # also refuses NaN
        raise RecipeError(f"{where}: 'scoring.beta' must be a finite number > 0 (reward = beta * log-ratio), "
                          f"got {s.beta}")  # fmt: skip
    try:
        SCORERS.check(s.backend, where)
    except RegistryError as e:
        raise RecipeError(str(e)) from None
    if s.backend in REWARD_MODEL_BACKENDS:
        raise RecipeError(f"{where}: 'scoring.backend: {s.backend}' scores with a sequence "
                          "classifier, not log-probs; name it as 'scoring.judge: reward:MODEL'")  # fmt: skip
    tp = s.tensor_parallel_size
    if not isinstance(tp, int) or tp < 1:
        raise RecipeError(f"{where}: 'scoring.tensor_parallel_size' must be an integer >= 1, "
                          f"got {tp!r}")  # fmt: skip
    if tp > 1 and s.backend == "transformers":
        raise RecipeError(f"{where}: 'scoring.tensor_parallel_size: {tp}' needs a backend that "
                          "splits a model over GPUs ('scoring.backend: vllm')")  # fmt: skip
    if not DEVICE_RE.match(s.device):
        raise RecipeError(f"{where}: 'scoring.device' must be auto, cpu, cuda, cuda:N, mps, xpu "
                          f"or xpu:N, got {s.device!r}")  # fmt: skip
    if s.agreement not in (None, "native"):
        raise RecipeError(f"{where}: 'scoring.agreement' must be null or native, "
                          f"got {s.agreement!r}")  # fmt: skip
    if s.agreement and s.mode != "cross_lingual":
        raise RecipeError(f"{where}: 'scoring.agreement: native' compares cross_lingual scoring "
                          f"with native scoring; scoring.mode is {s.mode}")  # fmt: skip
    if s.judge is not None and (not s.judge.startswith("reward:") or not s.judge[7:]):
        raise RecipeError(f"{where}: 'scoring.judge' must be reward:MODEL (an explicit reward "
                          f"model), got {s.judge!r}")  # fmt: skip
    if not _number(s.stability_sample) or not 0 <= s.stability_sample <= 1:  # NaN too
        raise RecipeError(f"{where}: 'scoring.stability_sample' must be a fraction in [0, 1] "
                          f"(0: not measured), got {s.stability_sample!r}")  # fmt: skip
    if not _number(s.stability_bound) or not 0 < s.stability_bound < float("inf"):
        raise RecipeError(f"{where}: 'scoring.stability_bound' must be a finite number > 0 "
                          f"(nats), got {s.stability_bound!r}")  # fmt: skip


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_pairing(p: PairingConfig, where: str = "pairing") -> None:
    """Rule names are checked against registry.PAIRING_RULES, read now (so a rule registered
    there is accepted here without another list to keep), filters against FILTERS."""
    try:
        PAIRING_RULES.check(p.rule, where)
    except RegistryError as e:
        raise RecipeError(str(e)) from None
    known = FILTERS
    for f in p.filters:
        if f not in known:
            close = difflib.get_close_matches(f, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(
                f"{where}: unknown filter 'pairing.filters: {f}'{hint}; known: {', '.join(known)}"
            )
    if p.paper_exact:
        exact = {"rule": "max_min", "filters": [], "length_control": True, "length_unit": "chars",
                 "alpha_max": 1.0, "alpha_step": 0.001, "min_margin": None,
                 "min_margin_quantile": None}  # fmt: skip
        for key, want in exact.items():
            if getattr(p, key) != want:
                raise RecipeError(f"{where}: 'pairing.paper_exact' runs the research code's "
                                  f"selection, which needs 'pairing.{key}: {want}' "
                                  f"(got {getattr(p, key)!r})")  # fmt: skip
    if p.k < 1:
        raise RecipeError(f"{where}: 'pairing.k' must be >= 1")
    if p.min_margin_quantile is not None and not 0 <= p.min_margin_quantile <= 1:
        raise RecipeError(f"{where}: 'pairing.min_margin_quantile' must be in [0, 1]")
