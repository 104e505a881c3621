"""The judges of an eval: each compares the candidate's answer with the baseline's, per prompt.

A judge is named in the eval recipe as `KIND:MODEL[,MODEL...]` (`judges:`); base/registry.py's
JUDGES maps each kind to its class here, and evaluation.py reaches a judge only through that
registry. A kind is a subclass of `Judge` with:
- `kind` and `models`: its name and the models its spec names (checked when the recipe loads);
- `check()` (optional): refuse models that cannot judge, once they are found, before any answer;
- `judge(run, rows, cand, base)`: one `verdict(...)` per row (the win is the candidate's);
- `prompt_template(cfg)` (optional): the prompt its model is shown, kept in the record.
Adding a kind is one subclass (in this file or another) plus one line in JUDGES.

The kinds shipped:
- `llm:MODEL`: a pairwise LLM judge through the generation stage (greedy), with a shipped,
  editable template (cards/judge_pairwise.txt). It sees every pair in both orders; a verdict that
  cannot be parsed is counted, never guessed; a tie counts 0.5.
- `llm:openai:MODEL@URL`: the same judge, its model on an OpenAI-compatible server (api_judge.py).
- `reward:MODEL`: an explicit reward model (a sequence-classification checkpoint) scoring each
  answer under its own prompt (stages.RewardStage).
- `implicit:POLICY,REFERENCE`: the implicit reward of a build, beta * (log pi - log ref), with
  the native instruction as x (stages.score_candidates).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from icr_data.base.config import SamplingConfig
from icr_data.commands.evaluation import EvalError
from icr_data.commands.winrates import llm_win, parse_verdict

if TYPE_CHECKING:
    from icr_data.commands.evaluation import EvalConfig, EvalRun

VERDICT_KEYS = ("verdict_ab", "verdict_ba", "judge_output_ab", "judge_output_ba", "win",
                "consistent", "candidate_reward", "baseline_reward")  # fmt: skip
"""The columns a judge fills in each record row (in this order); winrates.summarize reads them."""


def verdict(win: float | None, **fields: Any) -> dict:
    """One row's verdict, every VERDICT_KEYS column present (None unless given). `win` is the
    candidate's: 1.0, 0.0, 0.5 for a tie, None when the judge gave no verdict."""
    unknown = sorted(set(fields) - set(VERDICT_KEYS))
    if unknown:
        raise TypeError(f"verdict: unknown columns {unknown}; known: {', '.join(VERDICT_KEYS)}")
    return {**dict.fromkeys(VERDICT_KEYS), **fields, "win": win}


class Judge:
    """A judge of the recipe: its spec, its models' names, and once resolved their paths and
    identities."""

    kind: ClassVar[str] = ""
    models: ClassVar[tuple[str, ...]] = ("MODEL",)
    """What follows `KIND:` in a spec, comma-separated, e.g. ("POLICY", "REFERENCE"); () for a
    judge that needs no model (its spec is the bare kind)."""
    remote: ClassVar[bool] = False
    """True for a judge whose model is a server's (api_judge.py): nothing to find or prepare."""

    def __init__(self, spec: str, names: list[str]):
        self.spec = spec
        self.names = names
        self.paths: list[str] = []
        self.ids: list[dict] = []

    @classmethod
    def usage(cls) -> str:
        return f"{cls.kind}:{','.join(cls.models)}" if cls.models else cls.kind

    def label(self) -> str:
        """The judge as the record names it: its models without this machine's folders."""
        from icr_data.store.store import portable_path

        models = ",".join(portable_path(m) for m in self.names)
        return f"{self.kind}:{models}" if models else self.kind

    def resolve(self) -> None:
        """Find the models (folders, identities) and refuse one that cannot judge (check)."""
        from icr_data.stages import models

        self.paths = [models.resolve(m, "judge") for m in self.names]
        self.check()
        self.ids = [models.identity(n, p) for n, p in zip(self.names, self.paths)]

    def check(self) -> None:
        """Refuse, before any answer is judged, models that cannot judge (none by default)."""

    def prompt_template(self, cfg: EvalConfig) -> str | None:
        """The prompt this judge's model is shown, for the record; None: none."""
        return None

    def judge(self, run: EvalRun, rows: list[dict], cand: list[str], base: list[str]) -> list[dict]:
        """One verdict(...) per row, the candidate's answer `cand[i]` against `base[i]`."""
        raise NotImplementedError


# ------------------------------------------------------------------------------ the LLM judge
def render_judge(template: str, instruction: str, a: str, b: str) -> str:
    # plain replacement: prompts and answers hold braces; {instruction} last of the three fields
    filled = template.replace("{answer_a}", a).replace("{answer_b}", b)
    return filled.replace("{instruction}", instruction)


def judge_template(cfg: EvalConfig) -> str:
    path = Path(cfg.judge_template) if cfg.judge_template else default_template()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalError(f"judge_template {path}: {e.strerror}") from None
    for field_ in ("{instruction}", "{answer_a}", "{answer_b}"):
        if field_ not in text:
            raise EvalError(f"judge_template {path}: has no {field_} placeholder")
    return text


def default_template() -> Path:
    """The shipped pairwise judge prompt (cards/judge_pairwise.txt; copy it to edit it)."""
    from icr_data.store.card import template_dir

    return template_dir() / "judge_pairwise.txt"


class LlmJudge(Judge):
    """`llm:MODEL`: the model reads both answers, in both orders, and names the better one."""

    kind = "llm"

    def prompt_template(self, cfg: EvalConfig) -> str | None:
        return judge_template(cfg)

    def judge(self, run: EvalRun, rows: list[dict], cand: list[str], base: list[str]) -> list[dict]:
        template = judge_template(run.cfg)
        requests = []
        for r, c, b in zip(rows, cand, base):
            for order, (x, y) in (("ab", (c, b)), ("ba", (b, c))):
                requests.append({"prompt_id": f"{r['prompt_id']}#{order}", "lang": r["lang"],
                                 "instruction": render_judge(template, r["instruction"], x, y)})  # fmt: skip
        raw = self.outputs(run, requests)
        out = []
        for i in range(len(rows)):
            ab, ba = raw[2 * i], raw[2 * i + 1]
            v_ab, v_ba = parse_verdict(ab), parse_verdict(ba)
            win, consistent = llm_win(v_ab, v_ba)
            out.append(verdict(win, verdict_ab=v_ab, verdict_ba=v_ba, judge_output_ab=ab,
                               judge_output_ba=ba, consistent=consistent))  # fmt: skip
        return out

    def outputs(self, run: EvalRun, requests: list[dict]) -> list[str]:
        """The judge model's output for each request (its `instruction` is the filled prompt),
        greedy, through the generation stage."""
        cfg = run.cfg
        judge_cfg = SamplingConfig(backend=cfg.sampling.backend, n=1, temperature=0.0,
                                   max_tokens=cfg.judge_max_tokens, seed=cfg.sampling.seed,
                                   dtype=cfg.sampling.dtype, max_model_len=cfg.sampling.max_model_len,
                                   gpu_memory_utilization=cfg.sampling.gpu_memory_utilization)  # fmt: skip
        return run.answers(self.paths[0], self.ids[0], requests, f"judge {self.spec}", judge_cfg)


# --------------------------------------------------------------------------- the reward judges
class ScoringJudge(Judge):
    """A judge that scores each answer under its own prompt; the higher reward wins (equal: a
    tie). A kind implements `rewards(run, data)`."""

    def judge(self, run: EvalRun, rows: list[dict], cand: list[str], base: list[str]) -> list[dict]:
        from datasets import Dataset

        both = rows + rows
        data = Dataset.from_list([
            {"prompt_id": r["prompt_id"], "lang": r["lang"], "instruction": r["instruction"],
             "scoring_prompt": r["instruction"], "sample_idx": i // len(rows), "response": a,
             "finish_reason": "stop"}
            for i, (r, a) in enumerate(zip(both, cand + base))
        ])  # fmt: skip
        rewards = self.rewards(run, data)
        out = []
        for i in range(len(rows)):
            rc, rb = rewards[i], rewards[len(rows) + i]
            winner = "candidate" if rc > rb else "baseline" if rb > rc else "tie"
            out.append(verdict({"candidate": 1.0, "baseline": 0.0}.get(winner, 0.5),
                               verdict_ab=winner, candidate_reward=rc, baseline_reward=rb))  # fmt: skip
        return out

    def rewards(self, run: EvalRun, data) -> list[float]:
        """One reward per row of `data`: the candidate's answers, then the baseline's (native
        prompt as x: `scoring_prompt` is the row's own instruction)."""
        raise NotImplementedError


class RewardJudge(ScoringJudge):
    """`reward:MODEL`: an explicit reward model, a sequence classifier with one label."""

    kind = "reward"

    def check(self) -> None:
        from icr_data.stages.models import ModelError, check_sequence_classifier

        try:
            check_sequence_classifier(self.paths[0], f"judges: reward:{self.names[0]}")
        except ModelError as e:
            raise EvalError(str(e)) from None

    def rewards(self, run: EvalRun, data) -> list[float]:
        from icr_data.core.executor import run_once
        from icr_data.core.stage import Shard
        from icr_data.stages.stages import RewardStage, model_key

        cfg, paths, console, progress = run.cfg, self.paths, run.console, run.progress
        stage = RewardStage(model=paths[0], model_key=model_key(self.ids[0]),
                            chat_template=cfg.chat_template)  # fmt: skip
        outs, _ = run_once(stage, [Shard(0, data)], console, progress)
        return outs[0]["reward"]


class ImplicitJudge(ScoringJudge):
    """`implicit:POLICY,REFERENCE`: beta * (log pi - log ref), beta from the recipe's `beta`."""

    kind = "implicit"
    models = ("POLICY", "REFERENCE")

    def rewards(self, run: EvalRun, data) -> list[float]:
        from icr_data.base.config import ScoringConfig
        from icr_data.commands.score_phase import score_candidates

        cfg, paths, console, progress = run.cfg, self.paths, run.console, run.progress
        ids = dict(zip(("policy", "reference"), self.ids))
        scored = score_candidates(data, paths[0], paths[1], ScoringConfig(mode="native", beta=cfg.beta),
                                  cfg.chat_template, ids, console, progress)  # fmt: skip
        return scored["reward"]
