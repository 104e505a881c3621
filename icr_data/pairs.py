"""Pair stage: chosen/rejected pairs from scored candidates, with filters and a drop funnel.

scored candidates Dataset -> pairs Dataset in TRL's conversational explicit-prompt format
(prompt / chosen / rejected as message lists) + prompt_id, lang, chosen_reward, rejected_reward,
margin, chosen_tokens, rejected_tokens, chosen_sample_idx, rejected_sample_idx.

1. Candidate filters, in this order, each a counted reason: truncated (finish_reason "length"),
   empty, duplicate (same normalised text as an earlier sample of the prompt), repetition (share
   of repeated word n-grams above `repetition_max`), off_target (language ID disagrees with the
   prompt's language; needs `lid_lang`).
2. Length control: per language, alpha from the grid 0, step, ..., alpha_max such that the mean
   len(chosen) - len(rejected) of the max/min pairs is closest to zero (smallest alpha on ties);
   responses are ranked by reward - alpha * length (characters, or tokens).
3. Rule (pairing_rules.RULES): max_min (the paper's), max_random (best vs a seeded random other),
   top_bottom (every top-k x bottom-k pair), threshold (every pair whose reward margin >=
   threshold). A new rule is one function plus one registry line in pairing_rules.py.
4. Pair filters: no_separation (the ranking does not separate two responses; always, except
   under `paper_exact`, which keeps every argmax/argmin pair as the research code does),
   chosen_eq_rejected (same normalised text), tie (|margin| < tie_epsilon), below_min_margin,
   below_margin_quantile (per language).
`margin` is chosen_reward - rejected_reward (rewards before length control).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, Features, List, Value

from icr_data.config import PairingConfig, RecipeError
from icr_data.pairing_rules import FILTERS, RULES  # noqa: F401 - the registry, re-exported here

PAIR_COLUMNS = [
    "prompt_id", "lang", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward",
    "margin", "chosen_tokens", "rejected_tokens", "chosen_sample_idx", "rejected_sample_idx",
]  # fmt: skip
_MESSAGES = List({"role": Value("string"), "content": Value("string")})
PAIR_FEATURES = Features(
    {
        "prompt_id": Value("string"), "lang": Value("string"), "prompt": _MESSAGES,
        "chosen": _MESSAGES, "rejected": _MESSAGES, "chosen_reward": Value("float64"),
        "rejected_reward": Value("float64"), "margin": Value("float64"),
        "chosen_tokens": Value("int64"), "rejected_tokens": Value("int64"),
        "chosen_sample_idx": Value("int64"), "rejected_sample_idx": Value("int64"),
    }
)  # fmt: skip


def empty_funnel() -> dict:
    return {"prompts": 0, "candidates": 0, "kept_candidates": 0, "pairs": 0,
            "dropped_candidates": {}, "prompts_without_pair": {}, "dropped_pairs": {},
            "off_target_rate": None}  # fmt: skip


@dataclass
class PairStats:
    alphas: dict[str, float] = field(default_factory=dict)
    mean_length_diff: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per language: mean len(chosen) - len(rejected) of max/min pairs at alpha 0 and chosen alpha."""
    length_margin_corr: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per language: correlation of length difference and margin, before (alpha 0, max/min) and
    after (the final pairs)."""
    funnel: dict[str, dict] = field(default_factory=dict)
    judge_agreement: dict[str, dict] = field(default_factory=dict)
    """Per language, with scoring.judge: of the selected pairs both models rank, how many the
    explicit reward model orders as the implicit reward does."""


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def repeated_ngram_ratio(text: str, n: int) -> float:
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def _count(d: dict, reason: str, k: int = 1) -> None:
    d[reason] = d.get(reason, 0) + k


def candidate_drop(row: dict, seen: set[str], cfg: PairingConfig) -> str | None:
    """The first candidate filter that drops `row`, or None; `seen` holds earlier kept texts."""
    f = cfg.filters
    if "truncated" in f and row.get("finish_reason") == "length":
        return "truncated"
    if "empty" in f and not row["response"].strip():
        return "empty"
    if "duplicate" in f and normalise(row["response"]) in seen:
        return "duplicate"
    if (
        "repetition" in f
        and repeated_ngram_ratio(row["response"], cfg.repetition_ngram) > cfg.repetition_max
    ):
        return "repetition"
    if "off_target" in f and row.get("lid_lang") is not None and row["lid_lang"] != row["lang"]:
        return "off_target"
    return None


def _alpha_grid(cfg: PairingConfig) -> np.ndarray:
    if not cfg.length_control:
        return np.zeros(1)
    steps = int(round(cfg.alpha_max / cfg.alpha_step))
    return np.arange(steps + 1) * cfg.alpha_step


def choose_alpha(groups: list[tuple[np.ndarray, np.ndarray]], alphas: np.ndarray):
    """Index into `alphas` minimising |mean length difference| of max/min pairs, the means."""
    diffs = np.zeros((len(groups), len(alphas)))
    for g, (reward, length) in enumerate(groups):
        adjusted = reward[:, None] - alphas[None, :] * length[:, None]
        diffs[g] = length[adjusted.argmax(axis=0)] - length[adjusted.argmin(axis=0)]
    mean = diffs.mean(axis=0)
    return int(np.argmin(np.abs(mean))), mean


def _corr(x: list[float], y: list[float]) -> float | None:
    """Pearson's r, or None on fewer than 3 points (two points always give +-1)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _judge_prefers_rejected(chosen: dict, rejected: dict) -> bool:
    """The explicit reward model (scoring.judge) ranks the pair the other way round."""
    a, b = chosen.get("judge_reward"), rejected.get("judge_reward")
    return a is not None and b is not None and a < b


def _rng(cfg: PairingConfig, lang: str, prompt_id: str) -> random.Random:
    digest = hashlib.sha256(f"{cfg.seed}\x1f{prompt_id}\x1f{lang}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def select(adjusted: np.ndarray, reward: np.ndarray, cfg: PairingConfig, rng: random.Random):
    """(chosen, rejected) index pairs for one prompt under the rule `cfg.rule` (see RULES)."""
    return RULES[cfg.rule].select(adjusted, reward, cfg, rng)


def make_pairs(candidates: Dataset, cfg: PairingConfig) -> tuple[Dataset, PairStats]:
    stats = PairStats()
    by_prompt: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in candidates:
        by_prompt[(row["lang"], row["prompt_id"])].append(row)

    kept_by_lang: dict[str, list[list[dict]]] = defaultdict(list)
    lid_total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (lang, _), rows in by_prompt.items():
        funnel = stats.funnel.setdefault(lang, empty_funnel())
        funnel["prompts"] += 1
        seen: set[str] = set()
        kept = []
        for r in sorted(rows, key=lambda r: r["sample_idx"]):
            funnel["candidates"] += 1
            if r.get("lid_lang") is not None:
                lid_total[lang][0] += r["lid_lang"] != lang
                lid_total[lang][1] += 1
            reason = candidate_drop(r, seen, cfg)
            if reason:
                _count(funnel["dropped_candidates"], reason)
                continue
            seen.add(normalise(r["response"]))
            kept.append(r)
        funnel["kept_candidates"] += len(kept)
        if len(kept) < 2:
            _count(funnel["prompts_without_pair"], "fewer_than_two_kept")
        else:
            kept_by_lang[lang].append(kept)
    for lang, (off, total) in lid_total.items():
        stats.funnel[lang]["off_target_rate"] = off / total if total else None

    rule = RULES.get(cfg.rule)
    if rule is None:
        raise RecipeError(f"unknown pairing rule {cfg.rule!r}; known: {', '.join(RULES)}")
    alphas = _alpha_grid(cfg)
    unit = "response_tokens" if cfg.length_unit == "tokens" else None
    out: list[dict] = []
    for lang, prompts in kept_by_lang.items():
        funnel = stats.funnel[lang]
        groups = [
            (np.array([r["reward"] for r in rows], dtype=np.float64),
             np.array([r[unit] if unit else len(r["response"]) for r in rows], dtype=np.float64))
            for rows in prompts
        ]  # fmt: skip
        k, mean = choose_alpha(groups, alphas)
        alpha = float(alphas[k])
        stats.alphas[lang] = alpha
        stats.mean_length_diff[lang] = {"alpha_0": float(mean[0]), "chosen_alpha": float(mean[k])}
        before = [(length[reward.argmax()] - length[reward.argmin()], reward.max() - reward.min())
                  for reward, length in groups]  # fmt: skip
        lang_pairs = []
        judged = agreed = 0
        for rows, (reward, length) in zip(prompts, groups):
            adjusted = reward - alpha * length
            chosen = rule.select(adjusted, reward, cfg, _rng(cfg, lang, rows[0]["prompt_id"]))
            if not chosen:
                _count(funnel["prompts_without_pair"], "no_pair_clears_threshold")
            for i, j in chosen:
                c, r = rows[i], rows[j]
                margin = c["reward"] - r["reward"]
                reason = None
                separated = i != j and (not rule.ranked or adjusted[i] > adjusted[j])
                if (
                    separated
                    and c.get("judge_reward") is not None
                    and r.get("judge_reward") is not None
                ):
                    judged += 1
                    agreed += not _judge_prefers_rejected(c, r)
                if not separated and not cfg.paper_exact:  # the research code keeps them all
                    reason = "no_separation"
                elif "chosen_eq_rejected" in cfg.filters and normalise(c["response"]) == normalise(
                    r["response"]
                ):
                    reason = "chosen_eq_rejected"
                elif "tie" in cfg.filters and abs(margin) < cfg.tie_epsilon:
                    reason = "tie"
                elif "judge_disagrees" in cfg.filters and _judge_prefers_rejected(c, r):
                    reason = "judge_disagrees"
                elif cfg.min_margin is not None and margin < cfg.min_margin:
                    reason = "below_min_margin"
                if reason:
                    _count(funnel["dropped_pairs"], reason)
                    continue
                lang_pairs.append((c, r, margin, length[i] - length[j]))
        if cfg.min_margin_quantile is not None and lang_pairs:
            cut = float(np.quantile([p[2] for p in lang_pairs], cfg.min_margin_quantile))
            low = [p for p in lang_pairs if p[2] < cut]
            if low:
                _count(funnel["dropped_pairs"], "below_margin_quantile", len(low))
            lang_pairs = [p for p in lang_pairs if p[2] >= cut]
        if judged:
            stats.judge_agreement[lang] = {"pairs": judged, "agree": agreed,
                                           "rate": agreed / judged}  # fmt: skip
        stats.length_margin_corr[lang] = {
            "before": _corr([b[0] for b in before], [b[1] for b in before]),
            "after": _corr([p[3] for p in lang_pairs], [p[2] for p in lang_pairs]),
        }
        funnel["pairs"] = len(lang_pairs)
        for c, r, margin, _ in lang_pairs:
            out.append(
                {
                    "prompt_id": c["prompt_id"],
                    "lang": lang,
                    "prompt": [{"role": "user", "content": c["instruction"]}],
                    "chosen": [{"role": "assistant", "content": c["response"]}],
                    "rejected": [{"role": "assistant", "content": r["response"]}],
                    "chosen_reward": c["reward"],
                    "rejected_reward": r["reward"],
                    "margin": margin,
                    "chosen_tokens": c["response_tokens"],
                    "rejected_tokens": r["response_tokens"],
                    "chosen_sample_idx": c["sample_idx"],
                    "rejected_sample_idx": r["sample_idx"],
                }
            )
    if not out:
        return Dataset.from_dict({c: [] for c in PAIR_COLUMNS}, features=PAIR_FEATURES), stats
    return Dataset.from_list(out, features=PAIR_FEATURES), stats
