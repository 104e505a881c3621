"""The stages: generation, scoring, language ID, pairing. Each implements the contract of
core/stage.py and is run by an executor as part of a command's plan (commands/).

The stages are thin: the work itself lives in one place each (generate.py: sampling backends;
score.py: log-probs and reward-model scores, one batched forward loop; langid.py; pairs.py).

    GenerateStage   prompts -> samples          (backends: vllm, transformers; generate.open_backend)
    LogprobStage    candidates -> logp          (backends: registry.SCORERS, scoring.backend)
    RewardStage     candidates -> reward        (an explicit reward model: SCORERS' reward_model)
    LangIdStage     candidates -> lid_lang/lid_score
    PairStage       all candidates -> pairs     (rules: registry.PAIRING_RULES; whole table)

docs/extending.md shows how to add a stage or a backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

from icr_data.base.registry import SCORERS
from icr_data.core.stage import Advance, Shard, Stage
from icr_data.store.shards import digest

if TYPE_CHECKING:
    from datasets import Dataset

    from icr_data.base.config import PairingConfig, SamplingConfig
    from icr_data.pairing.pairs import PairStats

SCORING_CONVENTION = (
    "sum of log p over the assistant-turn tokens of the chat template's rendering of "
    "[user: scoring_prompt, assistant: response], prompt and response tokenized separately; "
    "first response token included"
)
GEN_COLUMNS = ("prompt_id", "lang", "instruction", "sample_idx", "response", "finish_reason")
SCORE_INPUTS = ("prompt_id", "lang", "sample_idx", "scoring_prompt", "response")


# ------------------------------------------------------------------------------------ generate
@dataclass
class GenerateStage(Stage):
    """N samples per prompt row, in the row's language, from the generation backend."""

    name: ClassVar[str] = "generate"
    inputs: ClassVar[tuple[str, ...]] = ("prompt_id", "lang", "instruction")
    outputs: ClassVar[tuple[str, ...]] = GEN_COLUMNS

    model: str
    """A loadable folder or Hub id (models.resolve)."""
    model_key: str
    """The model's content hash (or name@revision): what the key records of it."""
    sampling: SamplingConfig
    chat_template: str | None = None
    model_id: dict = field(default_factory=dict)
    _backend: object = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        s = self.sampling
        keyed = {k: getattr(s, k)
                 for k in ("backend", "n", "temperature", "top_p", "max_tokens", "seed", "dtype")}  # fmt: skip
        if s.tensor_parallel_size > 1:  # an engine over several GPUs sums in another order
            keyed["tensor_parallel_size"] = s.tensor_parallel_size
        return {"generator": self.model_key, "sampling": keyed, "chat_template": self.chat_template}

    def made_of(self, shard: Shard) -> dict:
        return {"shard": shard.index, "generator": self.model_id}

    def open(self) -> None:
        from icr_data.stages.generate import open_backend

        self._backend = open_backend(self.model, self.sampling, self.chat_template)

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        from icr_data.stages.generate import sample

        out = sample(self._backend, rows.select_columns(list(self.inputs)), self.sampling, advance)
        return out.select_columns(list(self.outputs))

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def gpus(self) -> float:
        return self.sampling.tensor_parallel_size

    def for_worker(self, gpus: float) -> Stage:
        """A worker holding a fraction of a GPU (several engines per GPU) takes that share of
        vLLM's default 0.9 of the GPU's memory, unless sampling.gpu_memory_utilization says."""
        import dataclasses

        if 0 < gpus < 1 and self.sampling.gpu_memory_utilization is None:
            share = dataclasses.replace(self.sampling, gpu_memory_utilization=round(0.9 * gpus, 4))
            return dataclasses.replace(self, sampling=share)
        return self


# ------------------------------------------------------------------------------------ log-probs
@dataclass
class LogprobStage(Stage):
    """Summed log-probs of each response given its scoring prompt under one model (`role`): one
    half of the dual-logit implicit reward. One model is resident at a time: the policy pass over
    every shard, then the reference pass."""

    name: ClassVar[str] = "logp"
    inputs: ClassVar[tuple[str, ...]] = SCORE_INPUTS
    outputs: ClassVar[tuple[str, ...]] = ("logp", "response_tokens")

    role: str
    model: str
    model_key: str
    tokenizer_from: tuple[str, ...]
    """The models whose shared tokenizer encodes the rows (the reward pair; checked equal)."""
    chat_template: str | None = None
    count_eot: bool = True
    device: str = "cpu"
    dtype: str = "auto"
    token_budget: int | None = None
    max_batch_size: int = 64
    backend: str = "transformers"
    tensor_parallel_size: int = 1
    """GPUs one engine spans (scoring.tensor_parallel_size; the vllm backend)."""
    model_id: dict = field(default_factory=dict)
    _scorer: object = field(default=None, repr=False, compare=False)
    _stats: dict | None = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        from icr_data.stages.models import pick_dtype

        out = {"model": self.model_key, "count_eot": self.count_eot, "device": self.device,
               "dtype": str(pick_dtype(self.dtype, self.device)),
               "chat_template": self.chat_template, "convention": SCORING_CONVENTION}  # fmt: skip
        if self.backend != "transformers":
            out["backend"] = self.backend
            # what else the backend's numbers depend on (vllm: its log-prob mode)
            out.update(getattr(SCORERS.load(self.backend), "keyed", {}))
        if self.tensor_parallel_size > 1:  # an engine over several GPUs sums in another order
            out["tensor_parallel_size"] = self.tensor_parallel_size
        return out

    def key(self, shard: Shard) -> str:
        # the responses enter through the key of the work that made them (or their digest);
        # the scoring prompts are listed, since one generation is scored under several
        from icr_data.stages.score import given_batches

        responses = shard.upstream or digest(self.key_rows(shard.rows))
        batches = given_batches(shard.rows)  # rows scored in batches the caller chose
        return digest({"stage": self.name, "generation": responses,
                       "scoring_prompts": list(shard.rows["scoring_prompt"]), **self.identity(),
                       **({"batches": batches} if batches is not None else {})})  # fmt: skip

    def made_of(self, shard: Shard) -> dict:
        return {"shard": shard.index, "role": self.role, "model": self.model_id}

    def open(self) -> None:
        self._scorer = SCORERS.load(self.backend)(self)

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        from icr_data.stages.score import BATCH_COLUMN

        out, self._stats = self._scorer.score(rows, advance)
        probe = BATCH_COLUMN in rows.column_names  # the stability check's rescoring
        if probe and self._stats is not None:  # counted apart (summarize)
            self._stats = {**self._stats, "probe": True}
        return out

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def stats(self) -> dict | None:
        return self._stats

    def gpus(self) -> float:
        return self.tensor_parallel_size if self.requires_gpu() else 0

    @staticmethod
    def summarize(per_shard: list[dict]) -> dict | None:
        """The passes' throughput summed; the stability check's rescoring (`probe` shards) as
        `stability` beside it, so the figures stay the passes' own and its cost shows."""
        from icr_data.stages.score import ScoreStats

        def total(shards: list[dict]) -> dict:
            out = ScoreStats()
            for s in shards:
                for f in ("rows", "tokens", "padded_tokens", "response_tokens", "batches",
                          "seconds", "duplicates_skipped"):  # fmt: skip
                    setattr(out, f, getattr(out, f) + s[f])
            return out.as_dict()

        probe = [s for s in per_shard if s.get("probe")]
        out = total([s for s in per_shard if not s.get("probe")])
        if probe:
            out["stability"] = total(probe)
        engine = next((s["engine"] for s in per_shard if "engine" in s), None)
        return {**out, "engine": engine} if engine else out


def logprob_stages(
    policy: str, reference: str, ids: dict, scoring, chat_template: str | None, device: str
) -> list[LogprobStage]:
    """The two passes of the dual-logit reward (policy, then reference) under a ScoringConfig."""

    def stage(role: str, path: str) -> LogprobStage:
        ident = ids.get(role, {"name": path})
        return LogprobStage(
            role=role, model=path, model_key=model_key(ident), tokenizer_from=(policy, reference),
            chat_template=chat_template, count_eot=scoring.count_eot, device=device,
            dtype=scoring.dtype, token_budget=scoring.token_budget,
            max_batch_size=scoring.max_batch_size, backend=scoring.backend,
            tensor_parallel_size=scoring.tensor_parallel_size, model_id=ident,
        )  # fmt: skip

    return [stage("policy", policy), stage("reference", reference)]


def model_key(identity: dict) -> str:
    """How a model enters a key: its content hash, else name@revision."""
    return identity.get("sha256") or f"{identity['name']}@{identity.get('revision')}"


# ------------------------------------------------------------------------------------ language ID
@dataclass
class LangIdStage(Stage):
    """The language of each response (lingua, restricted to the languages in play), and its
    confidence to 6 decimals (langid.SCORE_DIGITS: lingua's threads sum in varying order)."""

    name: ClassVar[str] = "langid"
    inputs: ClassVar[tuple[str, ...]] = ("lang", "response")
    outputs: ClassVar[tuple[str, ...]] = ("lid_lang", "lid_score")

    languages: tuple[str, ...] = ()
    _stats: dict | None = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        from importlib.metadata import version

        return {
            "languages": sorted(self.languages),
            "detector": f"lingua {version('lingua-language-detector')}",
            "score_digits": 6,
        }

    def made_of(self, shard: Shard) -> dict:
        return {"shard": shard.index, "languages": list(self.languages)}

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        import time

        from datasets import Dataset

        from icr_data.stages.langid import identify, judged

        t0 = time.perf_counter()
        langs, scores = identify(rows["response"], self.languages)
        langs = judged(langs, rows["lang"], self.languages)
        self._stats = {"texts": len(rows), "seconds": time.perf_counter() - t0}
        if advance:
            advance(len(rows))
        return Dataset.from_dict({"lid_lang": langs, "lid_score": scores})

    def stats(self) -> dict | None:
        return self._stats

    @staticmethod
    def summarize(per_shard: list[dict]) -> dict | None:
        texts = sum(s["texts"] for s in per_shard)
        seconds = sum(s["seconds"] for s in per_shard)
        return {"texts": texts, "seconds": round(seconds, 3),
                "texts_per_s": round(texts / seconds, 1) if seconds else None}  # fmt: skip


# ------------------------------------------------------------------------------------ pairs
@dataclass
class PairStage(Stage):
    """Preference pairs from every scored candidate. It runs on the whole table, never on shards
    (length control chooses alpha over a whole language), and is cheap, so it is not kept as
    work: a plan gives it one shard, the whole table, run in memory (versioning.write_paired).
    `pair_stats` holds the last run's funnel, alphas and correlations."""

    name: ClassVar[str] = "pair"
    whole_table: ClassVar[bool] = True
    inputs: ClassVar[tuple[str, ...]] = ("prompt_id", "lang", "instruction", "sample_idx", "response",
                                         "finish_reason", "response_tokens", "reward", "lid_lang")  # fmt: skip
    outputs: ClassVar[tuple[str, ...]] = ("prompt_id", "lang", "prompt", "chosen", "rejected",
                                          "chosen_reward", "rejected_reward", "margin",
                                          "chosen_tokens", "rejected_tokens", "chosen_sample_idx",
                                          "rejected_sample_idx")  # fmt: skip

    pairing: PairingConfig | None = None
    texts: dict | None = field(default=None, repr=False, compare=False)
    """Response and instruction columns read lazily (textfeatures.Texts) when `rows` lacks
    them."""
    features: dict | None = field(default=None, repr=False, compare=False)
    """Text features kept from an earlier pairing of the same rows, or an empty dict to fill
    (pairs.make_pairs)."""
    pair_stats: PairStats | None = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        return {"pairing": asdict(self.pairing)}

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        from icr_data.pairing.pairs import make_pairs

        pairs, self.pair_stats = make_pairs(rows, self.pairing, self.texts, self.features)
        if advance:
            advance(len(rows))
        return pairs

    def stats(self) -> dict | None:
        return None if self.pair_stats is None else asdict(self.pair_stats)

    @staticmethod
    def summarize(per_shard: list[dict]) -> dict | None:
        return per_shard[0] if per_shard else None


# ------------------------------------------------------------------------------------ reward model
@dataclass
class RewardStage(Stage):
    """An explicit reward model's score of each response under its own instruction: a
    sequence-classification checkpoint (one logit) on the conversation [user: instruction,
    assistant: response] in the model's chat template, batched by score.py's one forward loop
    (the reward_model backend)."""

    name: ClassVar[str] = "reward"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "response")
    outputs: ClassVar[tuple[str, ...]] = ("reward",)

    model: str = ""
    model_key: str = ""
    chat_template: str | None = None
    device: str = "cpu"
    token_budget: int | None = None
    max_batch_size: int = 64
    backend: str = "reward_model"
    _scorer: object = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        return {"model": self.model_key, "chat_template": self.chat_template, "device": self.device}

    def open(self) -> None:
        self._scorer = SCORERS.load(self.backend)(self)

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        out, _ = self._scorer.score(rows, advance)
        return out

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
