"""The score phase, composed once: what build and rescore both run over sampled responses.

    phase = ScorePhase(passes, beta, translate=..., agreement=True, judge=..., langid=...)
    reports = runner.run(executor, phase.steps(shards))     # translate, score, judge, language ID
    rows = phase.assemble(work, shard)                       # the shard's scored candidates

`shards` are core.stage.Shard objects whose rows are samples: prompt_id, lang, instruction,
scoring_prompt, sample_idx, response, finish_reason (and response_en when a version already has
its translations). A build gives its shards of generated samples; a rescore gives a version's
candidates cut into the same shards (runner.candidate_shards).

Every task is keyed by the content of its input rows (runner.content_task), never by which
command made them: a rescore finds a build's translations, native passes and reference pass
wherever their inputs and settings are equal, and a build finds a rescore's.

The steps, in order (each a stage of stages/stages.py):
1. translate (scoring.mode translate_en, when the rows have no response_en): each non-English
   response to English (the generation stage, greedy);
2. per role (policy, then reference: one model resident at a time) the log-prob pass over the
   scoring rows (the responses, or their translations), and while the model is loaded, with
   `agreement` the same pass under each sample's own instruction, and with `stability` a seeded
   sample of the scoring rows again in other batches (stability.py; `stability_facts` compares
   the two and is checked before a version is written);
3. judge (scoring.judge): the explicit reward model over (instruction, response);
4. language ID over (lang, response).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from datasets import Dataset

from icr_data.commands.stability import Stability
from icr_data.core.runner import Step, content_task
from icr_data.core.stage import Shard
from icr_data.stages.score import rewards, with_rewards
from icr_data.stages.stages import GenerateStage, LangIdStage, LogprobStage, RewardStage

ROLES = ("policy", "reference")
CANDIDATE_COLUMNS = [
    "prompt_id", "lang", "instruction", "scoring_prompt", "sample_idx", "response",
    "finish_reason", "response_tokens", "logp_policy", "logp_ref", "reward", "reward_mean",
    "lid_lang", "lid_score",
]  # fmt: skip
"""The candidates' columns in their order (README, data format); judge_reward and reward_native
follow when present, response_en comes after response in translate_en."""


def native(rows: Dataset) -> Dataset:
    """`rows` with each row's own instruction as its scoring prompt (native scoring)."""
    return rows.remove_columns("scoring_prompt").add_column("scoring_prompt", rows["instruction"])


def candidate_columns(present: list[str], translated: bool) -> list[str]:
    """The candidates' columns of a version, in order, from the columns a table has."""
    columns = list(CANDIDATE_COLUMNS)
    if translated:
        columns.insert(columns.index("response") + 1, "response_en")
        columns.insert(columns.index("response_tokens") + 1, "response_en_tokens")
    return columns + [c for c in ("judge_reward", "reward_native") if c in present]


@dataclass
class ScorePhase:
    passes: dict[str, LogprobStage]
    """The dual-logit passes by role (policy, reference)."""
    beta: float
    translated: bool = False
    """scoring.mode translate_en: the passes score response_en in place of the response."""
    translate: GenerateStage | None = None
    """The stage that makes response_en (translate_en rows that lack it; None otherwise)."""
    agreement: bool = False
    """scoring.agreement: native: the same passes under each sample's own instruction."""
    judge: RewardStage | None = None
    langid: LangIdStage | None = None
    stability: Stability | None = None
    """scoring.stability_sample > 0: the sample rescored in other batches (stability.py)."""
    _tokenizer: object = field(default=None, repr=False, compare=False)
    """The reward pair's tokenizer, once native_tokens needs it (translate_en)."""

    # ---------------------------------------------------------------- inputs of each stage
    def _requests(self, shard: Shard) -> Dataset:
        from icr_data.commands.translate import english_requests

        return english_requests(shard.rows)

    def _translate_tasks(self, shards: list[Shard]):
        out = []
        for s in shards:
            requests = self._requests(s)
            if len(requests):  # an English-only shard needs no translation
                out.append(content_task(self.translate, s.index, requests))
        return out

    def with_english(self, work, shard: Shard) -> Dataset:
        """The shard's rows with response_en (translate_en): as they came, or with the
        translations the translate step made."""
        if not self.translated or "response_en" in shard.rows.column_names:
            return shard.rows
        from icr_data.commands.translate import with_english

        requests = self._requests(shard)
        if not len(requests):
            return with_english(shard.rows, [])
        task = content_task(self.translate, shard.index, requests)
        return with_english(shard.rows, work.load(self.translate.name, task.key)["response"])

    def scoring_rows(self, work, shard: Shard) -> Dataset:
        """What the log-prob passes score: the samples, or their English translations (as
        `response`) under the English instruction."""
        return self._scored(self.with_english(work, shard))

    def _scored(self, rows: Dataset) -> Dataset:
        """`rows` (with response_en in translate_en) as the log-prob passes read them."""
        if not self.translated:
            return rows
        return rows.remove_columns("response").rename_column("response_en", "response")

    def _logp_tasks(self, work, role: str, shards: list[Shard]) -> list[tuple[str, object]]:
        """(kind, task) of each piece of the role's pass: logp, native logp, stability."""
        stage = self.passes[role]
        scoring = [self.scoring_rows(work, s) for s in shards]
        todo = [("logp", content_task(stage, s.index, x)) for s, x in zip(shards, scoring)]
        if self.agreement:  # the native pass while the same model is loaded
            todo += [("native logp", content_task(stage, s.index, native(s.rows),
                                                  {"scoring_prompt": "native"}))
                     for s in shards]  # fmt: skip
        if self.stability is not None:  # the sample again, in other batches, while it is loaded
            for s, x in zip(shards, scoring):
                if (rows := self.stability.probe(x, self._total(shards))) is not None:
                    todo.append(("stability", content_task(stage, s.index, rows,
                                                           {"check": "stability"})))  # fmt: skip
        return todo

    def _total(self, shards: list[Shard]) -> int:
        """The run's candidates: as the plan counts them, else those of `shards`."""
        return self.stability.total or sum(len(s.rows) for s in shards)

    # ---------------------------------------------------------------- the plan
    def steps(self, work, shards: list[Shard], langid: bool = True) -> Iterator[Step]:
        """The phase's steps over `shards` (a generator: the score tasks are made once the
        translations exist); without `langid`, language ID is left for later (a build runs it
        at merge, over every shard)."""
        if self.translate is not None:
            yield Step(self.translate, self._translate_tasks(shards), "translate (to English)",
                       "translate")  # fmt: skip
        for role in ROLES:
            todo = [t for _, t in self._logp_tasks(work, role, shards)]
            yield Step(self.passes[role], todo, f"score ({role})", role)
        if self.judge is not None:
            todo = [content_task(self.judge, s.index, s.rows) for s in shards]
            yield Step(self.judge, todo, "score (judge)", "judge")
        if langid and self.langid is not None:
            yield self.langid_step(shards)

    def langid_step(self, shards: list[Shard]) -> Step:
        return Step(self.langid, [content_task(self.langid, s.index, s.rows) for s in shards],
                    "language ID", "langid")  # fmt: skip

    def missing(self, work, shards: list[Shard]) -> list[str]:
        """'<shard> (<step>)' for each piece of work assemble needs that is not finished."""
        out = []
        if self.translate is not None:
            out += [f"{t.index} (translate)" for t in self._translate_tasks(shards)
                    if not work.done(self.translate.name, t.key)]  # fmt: skip
            if out:
                return out  # the score keys need the translations
        for role in ROLES:
            for kind, t in self._logp_tasks(work, role, shards):
                if not work.done(self.passes[role].name, t.key):
                    out.append(f"{t.index} ({kind}/{role})")
        if self.judge is not None:
            out += [f"{s.index} (judge)" for s in shards
                    if not work.done(self.judge.name, content_task(self.judge, s.index, s.rows).key)]  # fmt: skip
        return out

    def stability_facts(self, work, shards: list[Shard]) -> dict | None:
        """The manifest's scoring.stability: per role the largest |difference| between the
        sample's rescored log-probs and the main pass's (stability.require checks the bound);
        None without a sample. The work must be finished (`missing` is empty)."""
        if self.stability is None:
            return None
        diffs: dict[str, list[float]] = {r: [] for r in ROLES}
        total = self._total(shards)
        for s in shards:
            scoring = self.scoring_rows(work, s)
            at = self.stability.positions(scoring, total)
            if not at:
                continue
            for role in ROLES:
                stage = self.passes[role]
                main = work.load(stage.name, content_task(stage, s.index, scoring).key)["logp"]
                task = content_task(stage, s.index, self.stability.probe(scoring, total))
                again = work.load(stage.name, task.key)["logp"]
                diffs[role] += [abs(a - main[i]) for a, i in zip(again, at)]
        return self.stability.facts(diffs, total)

    def native_tokens(self, rows: Dataset) -> list[int]:
        """The response tokens of each row's own response, counted as the scorer counts them
        (score.encode_candidates: the reward pair's tokenizer, its end-of-turn policy)."""
        from icr_data.stages.models import pair_tokenizer
        from icr_data.stages.score import encode_candidates

        stage = self.passes["policy"]
        if self._tokenizer is None:  # loaded once, not once per shard
            self._tokenizer = pair_tokenizer(*stage.tokenizer_from, stage.chat_template)
        return [len(e.response_ids)
                for e in encode_candidates(rows, self._tokenizer, stage.count_eot)]  # fmt: skip

    # ---------------------------------------------------------------- the result
    def assemble(self, work, shard: Shard) -> Dataset:
        """The shard's candidates: its rows with response_en (translate_en), response_tokens,
        logp_policy, logp_ref, reward, reward_mean, and where asked lid_lang/lid_score,
        judge_reward and reward_native."""

        def out(stage, rows: Dataset) -> Dataset:
            return work.load(stage.name, content_task(stage, shard.index, rows).key)

        rows = self.with_english(work, shard)  # the translations read once, for both uses
        scoring = self._scored(rows)
        lp, lr = (out(self.passes[r], scoring) for r in ROLES)
        if "response_en_tokens" in rows.column_names:  # a parent's: counted again below
            rows = rows.remove_columns("response_en_tokens")
        scored = with_rewards(rows, lp["response_tokens"], lp["logp"], lr["logp"], self.beta)
        if self.translated:  # the pairs train on the responses: their tokens, not the English's
            scored = scored.rename_column("response_tokens", "response_en_tokens")
            scored = scored.add_column("response_tokens", self.native_tokens(shard.rows))
        if self.langid is not None:
            lid = out(self.langid, shard.rows)
            for c in ("lid_lang", "lid_score"):
                if c in scored.column_names:
                    scored = scored.remove_columns(c)
                scored = scored.add_column(c, lid[c])
        if self.judge is not None:
            if "judge_reward" in scored.column_names:
                scored = scored.remove_columns("judge_reward")
            scored = scored.add_column("judge_reward", out(self.judge, shard.rows)["reward"])
        if "reward_native" in scored.column_names:  # a parent's, under another reward pair
            scored = scored.remove_columns("reward_native")
        if self.agreement:
            lp, lr = (out(self.passes[r], native(shard.rows))["logp"] for r in ROLES)
            scored = scored.add_column("reward_native", rewards(lp, lr, self.beta))
        return scored


def score_phase(policy: str, reference: str, ids: dict, scoring, chat_template: str | None,
                device: str, translator: GenerateStage | None = None,
                judge: RewardStage | None = None,
                languages: tuple[str, ...] | None = None,
                seed: int | None = None) -> ScorePhase:  # fmt: skip
    """The phase of a ScoringConfig: its passes (logprob_stages), and the translator, judge and
    language ID when given; with `seed` (the recipe's: build, rescore) and
    scoring.stability_sample > 0, the stability check (one-off scoring has none)."""
    from icr_data.stages.stages import logprob_stages

    passes = logprob_stages(policy, reference, ids, scoring, chat_template, device)
    stability = None
    if seed is not None and scoring.stability_sample > 0:
        stability = Stability(scoring.stability_sample, scoring.stability_bound, seed)
    return ScorePhase(
        passes={p.role: p for p in passes}, beta=scoring.beta,
        translated=scoring.mode == "translate_en", translate=translator,
        agreement=bool(scoring.agreement), judge=judge,
        langid=None if languages is None else LangIdStage(languages=tuple(languages)),
        stability=stability,
    )  # fmt: skip


def score_candidates(candidates: Dataset, policy: str, reference: str, scoring,
                     chat_template: str | None = None, ids: dict | None = None, console=None,
                     progress=None, shard_prompts: int = 64) -> Dataset:  # fmt: skip
    """`candidates` (+ scoring_prompt) with response_tokens, logp_policy, logp_ref, reward and
    reward_mean under the reward pair (resolved paths), in memory: the score phase's log-prob
    passes over one table, for one-off scoring (check-reward, eval's implicit judge, tests)."""
    import dataclasses

    from icr_data.core import runner
    from icr_data.core.executor import LocalExecutor, MemoryWork
    from icr_data.stages.models import pick_device

    plain = dataclasses.replace(scoring, mode="cross_lingual", agreement=None)  # rows as given
    phase = score_phase(policy, reference, ids or {}, plain, chat_template,
                        pick_device(scoring.device))  # fmt: skip
    work = MemoryWork()
    shards, positions = runner.candidate_shards(candidates, shard_prompts)
    runner.run(LocalExecutor(work, console, progress), phase.steps(work, shards))
    parts = [phase.assemble(work, s) for s in shards]
    return runner.in_order(parts, positions, len(candidates))
