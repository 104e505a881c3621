"""Pair stage: one chosen/rejected pair per prompt from scored candidates.

scored candidates Dataset -> pairs Dataset in TRL's conversational explicit-prompt format
(prompt / chosen / rejected as message lists) + prompt_id, lang, chosen_reward, rejected_reward,
margin, chosen_tokens, rejected_tokens, chosen_sample_idx, rejected_sample_idx.

Rule `max_min` (the paper's): per prompt, chosen = argmax and rejected = argmin of
reward - alpha * length, where alpha is chosen per language from the grid 0, step, ..., alpha_max
so that mean(len(chosen) - len(rejected)) over that language's prompts is closest to zero (the
smallest such alpha on ties). Length is in characters (default) or response tokens. Duplicate
responses within a prompt count once (the lowest sample_idx); a prompt with fewer than two
distinct responses, or whose scores do not separate two responses, yields no pair.
`margin` is chosen_reward - rejected_reward (rewards before length control).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, Features, List, Value

from icr_data.config import PairingConfig

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


@dataclass
class PairStats:
    alphas: dict[str, float] = field(default_factory=dict)
    mean_length_diff: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per language: mean len(chosen) - len(rejected) at alpha 0 and at the chosen alpha."""
    drops: dict[str, dict[str, int]] = field(default_factory=dict)


def _alpha_grid(cfg: PairingConfig) -> np.ndarray:
    if not cfg.length_control:
        return np.zeros(1)
    steps = int(round(cfg.alpha_max / cfg.alpha_step))
    return np.arange(steps + 1) * cfg.alpha_step


def _select(groups: list[tuple[np.ndarray, np.ndarray]], alphas: np.ndarray):
    """argmax / argmin index per group and alpha: arrays of shape [groups, alphas]."""
    best = np.empty((len(groups), len(alphas)), dtype=np.int64)
    worst = np.empty_like(best)
    for g, (reward, length) in enumerate(groups):
        adjusted = reward[:, None] - alphas[None, :] * length[:, None]
        best[g] = adjusted.argmax(axis=0)
        worst[g] = adjusted.argmin(axis=0)
    return best, worst


def choose_alpha(groups: list[tuple[np.ndarray, np.ndarray]], alphas: np.ndarray):
    """Index into `alphas` minimising |mean length difference|, and the mean at each alpha."""
    best, worst = _select(groups, alphas)
    diffs = np.stack([length[best[g]] - length[worst[g]] for g, (_, length) in enumerate(groups)])
    mean = diffs.mean(axis=0)
    return int(np.argmin(np.abs(mean))), mean, best, worst


def make_pairs(candidates: Dataset, cfg: PairingConfig) -> tuple[Dataset, PairStats]:
    stats = PairStats()
    by_prompt: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in candidates:
        by_prompt[(row["lang"], row["prompt_id"])].append(row)
    by_lang: dict[str, list[list[dict]]] = defaultdict(list)
    for (lang, _), rows in by_prompt.items():
        stats.drops.setdefault(lang, {"fewer_than_two_distinct": 0, "no_separation": 0})
        rows = sorted(rows, key=lambda r: r["sample_idx"])
        distinct, seen = [], set()
        for r in rows:
            if r["response"] not in seen:
                seen.add(r["response"])
                distinct.append(r)
        if len(distinct) < 2:
            stats.drops[lang]["fewer_than_two_distinct"] += 1
        else:
            by_lang[lang].append(distinct)

    alphas = _alpha_grid(cfg)
    out: list[dict] = []
    for lang, prompts in by_lang.items():
        unit = "response_tokens" if cfg.length_unit == "tokens" else None
        groups = [
            (
                np.array([r["reward"] for r in rows], dtype=np.float64),
                np.array([r[unit] if unit else len(r["response"]) for r in rows], dtype=np.float64),
            )
            for rows in prompts
        ]
        k, mean, best, worst = choose_alpha(groups, alphas)
        stats.alphas[lang] = float(alphas[k])
        stats.mean_length_diff[lang] = {"alpha_0": float(mean[0]), "chosen_alpha": float(mean[k])}
        for g, rows in enumerate(prompts):
            c, r = rows[best[g, k]], rows[worst[g, k]]
            if c is r:
                stats.drops[lang]["no_separation"] += 1
                continue
            out.append(
                {
                    "prompt_id": c["prompt_id"],
                    "lang": lang,
                    "prompt": [{"role": "user", "content": c["instruction"]}],
                    "chosen": [{"role": "assistant", "content": c["response"]}],
                    "rejected": [{"role": "assistant", "content": r["response"]}],
                    "chosen_reward": c["reward"],
                    "rejected_reward": r["reward"],
                    "margin": c["reward"] - r["reward"],
                    "chosen_tokens": c["response_tokens"],
                    "rejected_tokens": r["response_tokens"],
                    "chosen_sample_idx": c["sample_idx"],
                    "rejected_sample_idx": r["sample_idx"],
                }
            )
    if not out:
        return Dataset.from_dict({c: [] for c in PAIR_COLUMNS}, features=PAIR_FEATURES), stats
    return Dataset.from_list(out, features=PAIR_FEATURES), stats
