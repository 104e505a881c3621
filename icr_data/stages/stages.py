"""The stage contract: every step of a build is a `Stage`, run shard by shard by an executor.

A stage has
- `name`: the folder its outputs are kept in (`<store>/<dataset>/.work/<name>/<key>.parquet`);
- `inputs` / `outputs`: the columns `run` reads and the columns it returns;
- `key(shard)`: a digest of exactly what its output for that shard depends on (the shard's input
  rows, or the key of the work they came from, plus the stage's own settings and model hashes),
  so a re-run skips finished shards and a changed recipe misses exactly the keys it changed;
- `open()` / `run(rows, advance) -> Dataset` / `close()`: load the engine or model once, turn
  one shard's input rows into its output rows, release what `open` loaded.

Executors (executor.py: in this process; ray_exec.py: Ray actor pools) know keys, markers, progress
and resume, and nothing of a stage's insides. The stages here are thin: the work itself lives in
one place each (generate.py: sampling backends; score.py: log-probs; langid.py; pairs.py).

    GenerateStage   prompts -> samples          (backends: vllm, transformers; generate.open_backend)
    LogprobStage    candidates -> logp          (backends: transformers; score.SCORERS)
    LangIdStage     candidates -> lid_lang/lid_score
    RewardStage     candidates -> reward        (an explicit reward model: a sequence classifier)
    PairStage       all candidates -> pairs     (rules: pairing_rules.RULES; run on the whole table)

Build, rescore, check-reward, translate and evaluation are lists of these stages handed to an
executor. docs/extending.md shows how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

from icr_data.store.shards import digest

if TYPE_CHECKING:
    from datasets import Dataset

    from icr_data.base.config import PairingConfig, SamplingConfig
    from icr_data.pairing.pairs import PairStats

Advance = Callable[..., None]
"""`advance(k, rate="")`: k more input rows are done; `rate` is shown beside the bar."""

SCORING_CONVENTION = (
    "sum of log p over the assistant-turn tokens of the chat template's rendering of "
    "[user: scoring_prompt, assistant: response], prompt and response tokenized separately; "
    "first response token included"
)
GEN_COLUMNS = ("prompt_id", "lang", "instruction", "sample_idx", "response", "finish_reason")
SCORE_INPUTS = ("prompt_id", "lang", "sample_idx", "scoring_prompt", "response")


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
        return out

    def key(self, shard: Shard) -> str:
        # the responses enter through the key of the work that made them (or their digest);
        # the scoring prompts are listed, since one generation is scored under several
        responses = shard.upstream or digest(self.key_rows(shard.rows))
        return digest({"stage": self.name, "generation": responses,
                       "scoring_prompts": list(shard.rows["scoring_prompt"]), **self.identity()})  # fmt: skip

    def made_of(self, shard: Shard) -> dict:
        return {"shard": shard.index, "role": self.role, "model": self.model_id}

    def open(self) -> None:
        from icr_data.stages.score import SCORERS

        self._scorer = SCORERS[self.backend](self)

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        out, self._stats = self._scorer.score(rows, advance)
        return out

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def stats(self) -> dict | None:
        return self._stats

    @staticmethod
    def summarize(per_shard: list[dict]) -> dict | None:
        from icr_data.stages.score import ScoreStats

        total = ScoreStats()
        for s in per_shard:
            for f in ("rows", "tokens", "padded_tokens", "response_tokens", "batches",
                      "seconds", "duplicates_skipped"):  # fmt: skip
                setattr(total, f, getattr(total, f) + s[f])
        return total.as_dict()


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
            max_batch_size=scoring.max_batch_size, model_id=ident,
        )  # fmt: skip

    return [stage("policy", policy), stage("reference", reference)]


def model_key(identity: dict) -> str:
    """How a model enters a key: its content hash, else name@revision."""
    return identity.get("sha256") or f"{identity['name']}@{identity.get('revision')}"


# ------------------------------------------------------------------------------------ language ID
@dataclass
class LangIdStage(Stage):
    """The language of each response (lingua, restricted to the languages in play). lingua sums
    confidences in threads, so `lid_score` may differ in its last bits between runs."""

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
    work: callers run it directly (build.write_paired). `pair_stats` holds the last run's funnel,
    alphas and correlations."""

    name: ClassVar[str] = "pair"
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


# ------------------------------------------------------------------------------------ composed
def candidate_shards(
    candidates: Dataset, shard_prompts: int
) -> tuple[list[Shard], list[list[int]]]:
    """Candidates cut into shards of `shard_prompts` prompt_ids (in order of first appearance),
    and each shard's row positions in `candidates` (to put per-shard outputs back in order)."""
    from icr_data.store.shards import plan_shards

    blocks = plan_shards(candidates["prompt_id"], shard_prompts)
    block_of = {pid: b.index for b in blocks for pid in b.prompt_ids}
    positions: list[list[int]] = [[] for _ in blocks]
    for i, pid in enumerate(candidates["prompt_id"]):
        positions[block_of[pid]].append(i)
    return [Shard(b.index, candidates.select(p)) for b, p in zip(blocks, positions)], positions


def run_in_order(executor, stage: Stage, rows: Dataset, shard_prompts: int,
                 label: str | None = None) -> tuple[Dataset, dict]:  # fmt: skip
    """Run a row-for-row stage over `rows` cut into shards of `shard_prompts` prompt_ids, through
    `executor` (resumable when its work is a WorkDir): the output rows in the order of `rows`,
    and the report."""
    from datasets import Dataset, concatenate_datasets

    from icr_data.core.executor import tasks

    shards, positions = candidate_shards(rows, shard_prompts)
    todo = tasks(stage, shards)
    report = executor.run(stage, todo, label)
    if not todo:
        return Dataset.from_dict({c: [] for c in stage.outputs}), report
    back = [0] * len(rows)  # position of each input row among the concatenated outputs
    for at, row in enumerate(i for pos in positions for i in pos):
        back[row] = at
    return concatenate_datasets([executor.load(stage, t) for t in todo]).select(back), report


def dual_logit(executor, passes: list[LogprobStage], candidates: Dataset,
               shard_prompts: int) -> tuple[dict[str, list[float]], list[int], dict]:  # fmt: skip
    """Run each log-prob pass over the candidates (see run_in_order); per role the log-probs in
    candidate order, the response token counts, and the reports."""
    logps: dict[str, list[float]] = {}
    reports: dict[str, dict] = {}
    for stage in passes:
        out, reports[stage.role] = run_in_order(executor, stage, candidates, shard_prompts,
                                                f"score ({stage.role})")  # fmt: skip
        logps[stage.role] = list(out["logp"])
    return logps, list(out["response_tokens"]), reports


def score_candidates(candidates: Dataset, policy: str, reference: str, scoring,
                     chat_template: str | None = None, ids: dict | None = None, console=None,
                     progress=None, shard_prompts: int = 64) -> Dataset:  # fmt: skip
    """`candidates` (+ scoring_prompt) with response_tokens, logp_policy, logp_ref, reward and
    reward_mean under the reward pair (resolved paths), in memory: the dual-logit passes of a
    build, for one-off scoring (check-reward, tests)."""
    from icr_data.core.executor import LocalExecutor, MemoryWork
    from icr_data.stages.models import pick_device
    from icr_data.stages.score import with_rewards

    passes = logprob_stages(
        policy, reference, ids or {}, scoring, chat_template, pick_device(scoring.device)
    )
    ex = LocalExecutor(MemoryWork(), console, progress)
    logps, tokens, _ = dual_logit(ex, passes, candidates, shard_prompts)
    return with_rewards(candidates, tokens, logps["policy"], logps["reference"], scoring.beta)


# ------------------------------------------------------------------------------------ reward model
@dataclass
class RewardStage(Stage):
    """An explicit reward model's score of each response under its own instruction: a
    sequence-classification checkpoint (one logit) through transformers, on the conversation
    [user: instruction, assistant: response] in the model's chat template."""

    name: ClassVar[str] = "reward"
    inputs: ClassVar[tuple[str, ...]] = ("instruction", "response")
    outputs: ClassVar[tuple[str, ...]] = ("reward",)

    model: str = ""
    model_key: str = ""
    chat_template: str | None = None
    device: str = "cpu"
    _model: object = field(default=None, repr=False, compare=False)
    _tok: object = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        return {"model": self.model_key, "chat_template": self.chat_template, "device": self.device}

    def open(self) -> None:
        from transformers import AutoModelForSequenceClassification

        from icr_data.base.hf import quiet_transformers
        from icr_data.stages.models import load_tokenizer

        quiet_transformers()
        self._tok = load_tokenizer(self.model, self.chat_template)
        net = AutoModelForSequenceClassification.from_pretrained(self.model)
        self._model = net.to(self.device).eval()

    def run(self, rows: Dataset, advance: Advance | None = None) -> Dataset:
        import torch
        from datasets import Dataset

        scores = []
        for x, y in zip(rows["instruction"], rows["response"]):
            text = self._tok.apply_chat_template(
                [{"role": "user", "content": x}, {"role": "assistant", "content": y}],
                tokenize=False,
            )
            ids = self._tok(text, return_tensors="pt", add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                scores.append(float(self._model(**ids).logits[0, 0]))
            if advance:
                advance(1)
        return Dataset.from_dict({"reward": scores})

    def close(self) -> None:
        self._model = self._tok = None
