"""Pair stage: chosen/rejected pairs from scored candidates, with filters and a drop funnel.
Over 400 lines: one job (the pair stage's whole-table pass: filters, alpha, rules, funnel).

scored candidates Dataset -> pairs Dataset in TRL's conversational explicit-prompt format
(prompt / chosen / rejected as message lists) + prompt_id, lang, chosen_reward, rejected_reward,
margin, chosen_tokens, rejected_tokens, chosen_sample_idx, rejected_sample_idx.

1. Candidate filters, in this order, each a counted reason: truncated (finish_reason "length"),
   empty, duplicate (same normalised text as an earlier kept sample of the prompt), repetition
   (share of repeated word n-grams above `repetition_max`), off_target (language ID disagrees with
   the prompt's language; needs `lid_lang`).
2. Length control: per language, alpha from the grid 0, step, ..., alpha_max such that the mean
   len(chosen) - len(rejected) of the max/min pairs is closest to zero (smallest alpha on ties);
   responses are ranked by reward - alpha * length (characters, or tokens).
3. Rule (registry.PAIRING_RULES): max_min (the paper's), max_random (best vs a seeded random other),
   top_bottom (every top-k x bottom-k pair), threshold (every pair whose reward margin >=
   threshold). A new rule is one function in pairing_rules.py plus one line in base/registry.py.
4. Pair filters: no_separation (the ranking does not separate two responses; always, except
   under `paper_exact`, which keeps every argmax/argmin pair as the research code does),
   chosen_eq_rejected (same normalised text), tie (|margin| < tie_epsilon), below_min_margin,
   below_margin_quantile (per language).
`margin` is chosen_reward - rejected_reward (rewards before length control).

It works on columns, never on rows: the candidates' Arrow table is read column by column, the
responses a unit of rows at a time by one compiled pass over their bytes (textfeatures.py and
textscan.py: words, characters, a repetition screen, a key of the normalised text), alpha by a
compiled loop per prompt (length_control.py), prompts as (prompts, n) matrices of the candidates
they keep, grouped by n; the pairs Dataset is built from Arrow arrays. Text is turned into Python
strings only to confirm what a screen flags (texts of a prompt with equal keys, a possibly
repetitive response), so the result is the one the per-row definitions above give.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, List, Value

from icr_data.base.config import (
    FILTERS,  # noqa: F401 - re-exported here
    PairingConfig,
    RecipeError,
)
from icr_data.base.registry import PAIRING_RULES
from icr_data.pairing.textfeatures import FEATURES, Texts, text_classes, text_features, workers

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


_REASONS = ("truncated", "empty", "duplicate", "repetition", "off_target")
_PAIR_REASONS = ("no_separation", "chosen_eq_rejected", "tie", "judge_disagrees",
                 "below_min_margin")  # fmt: skip


def _alpha_grid(cfg: PairingConfig) -> np.ndarray:
    if not cfg.length_control:
        return np.zeros(1)
    steps = int(round(cfg.alpha_max / cfg.alpha_step))
    return np.arange(steps + 1) * cfg.alpha_step


def _corr(x, y) -> float | None:
    """Pearson's r, or None on fewer than 3 points (two points always give +-1)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _rng(cfg: PairingConfig, lang: str, prompt_id: str) -> random.Random:
    digest = hashlib.sha256(f"{cfg.seed}\x1f{prompt_id}\x1f{lang}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# -------------------------------------------------------------------------- prompts as matrices
def _padded(starts: np.ndarray, sizes: np.ndarray):
    """(size, prompts of that size, (prompts, size) matrix of positions), one per size."""
    for n in np.unique(sizes):
        which = np.flatnonzero(sizes == n)
        yield int(n), which, starts[which][:, None] + np.arange(n)


# ------------------------------------------------------------------------------------- the stage
def _first_counts(reason: np.ndarray, names, k: int | None = None) -> dict[str, int]:
    """{name: count} of the codes 1.. in `reason` (0: none), in order of first occurrence."""
    codes, first, counts = np.unique(reason[reason > 0], return_index=True, return_counts=True)
    return {names[c - 1]: int(n) for f, c, n in sorted(zip(first, codes, counts))}


READS = ("prompt_id", "lang", "instruction", "sample_idx", "response", "reward", "response_tokens",
         "finish_reason", "lid_lang", "judge_reward")  # fmt: skip
"""The candidates' columns make_pairs reads (those present); it never sees the others."""


def _columns(candidates: Dataset) -> pa.Table:
    """The columns the stage reads, as Arrow (an indices mapping applied), nothing copied else."""
    present = [c for c in READS if c in candidates.column_names]
    return candidates.select_columns(present).with_format("arrow")[:]


def _messages(role: str, content: pa.Array) -> pa.Array:
    n = len(content)
    turn = pa.StructArray.from_arrays([pa.repeat(role, n).cast(pa.string()), content.cast(pa.string())],
                                      names=["role", "content"])  # fmt: skip
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), turn)


def _pairs_table(table: pa.Table, texts: dict[str, Texts], chosen: np.ndarray,
                 rejected: np.ndarray, margin: np.ndarray):  # fmt: skip
    c, r = pa.array(chosen, pa.int64()), pa.array(rejected, pa.int64())
    col = {name: table.column(name) for name in table.column_names}
    both = texts["response"].take(np.concatenate([chosen, rejected]))
    cols = {
        "prompt_id": col["prompt_id"].take(c), "lang": col["lang"].take(c),
        "prompt": _messages("user", texts["instruction"].take(chosen)),
        "chosen": _messages("assistant", both.slice(0, len(chosen))),
        "rejected": _messages("assistant", both.slice(len(chosen))),
        "chosen_reward": col["reward"].take(c), "rejected_reward": col["reward"].take(r),
        "margin": pa.array(margin, pa.float64()),
        "chosen_tokens": col["response_tokens"].take(c),
        "rejected_tokens": col["response_tokens"].take(r),
        "chosen_sample_idx": col["sample_idx"].take(c),
        "rejected_sample_idx": col["sample_idx"].take(r),
    }  # fmt: skip
    schema = PAIR_FEATURES.arrow_schema
    return pa.table([cols[f.name].cast(f.type) for f in schema], schema=schema)


def _select(rule, adjusted, reward, starts, sizes, cfg, rng):
    """(prompt, chosen, rejected) of `rule` over every prompt: positions into the flat arrays,
    ordered by prompt, then as the rule orders a prompt's pairs."""
    prompt, chosen, rejected = [], [], []
    if not rule.batched:  # a per-prompt rule: one call each
        for p, (s, n) in enumerate(zip(starts, sizes)):
            picks = rule.select(adjusted[s : s + n], reward[s : s + n], cfg, rng(p))
            prompt += [p] * len(picks)
            chosen += [s + i for i, _ in picks]
            rejected += [s + j for _, j in picks]
        return (np.array(prompt, np.int64), np.array(chosen, np.int64),
                np.array(rejected, np.int64))  # fmt: skip
    for n, which, at in _padded(starts, sizes):
        step = max(1, 2**22 // (n * n))  # threshold and top_bottom look at n x n per prompt
        for lo in range(0, len(which), step):
            part, pos = which[lo : lo + step], at[lo : lo + step]
            p, i, j = rule.select(
                adjusted[pos], reward[pos], cfg, lambda k, part=part: rng(part[k])
            )
            p = np.asarray(p, np.int64)
            prompt.append(part[p])
            chosen.append(pos[p, np.asarray(i, np.int64)])
            rejected.append(pos[p, np.asarray(j, np.int64)])
    if not prompt:
        return (np.zeros(0, np.int64),) * 3
    prompt, chosen, rejected = (np.concatenate(x) for x in (prompt, chosen, rejected))
    order = np.argsort(prompt, kind="stable")
    return prompt[order], chosen[order], rejected[order]


def make_pairs(
    candidates: Dataset, cfg: PairingConfig, texts: dict[str, Texts] | None = None,
    features: dict | None = None,
) -> tuple[Dataset, PairStats]:  # fmt: skip
    """Pairs and their statistics. `texts` may give the response and instruction columns
    (Texts), so that `candidates` need not hold them; the result is the same. `features` (see
    FEATURES): those of an earlier run on the same candidates with the same repetition settings,
    used as they are; or an empty dict, which is filled with every feature."""
    stats = PairStats()
    rule = PAIRING_RULES.load(cfg.rule) if cfg.rule in PAIRING_RULES else None
    if rule is None:
        raise RecipeError(f"unknown pairing rule {cfg.rule!r}; known: {', '.join(PAIRING_RULES)}")
    filters = set(cfg.filters)
    table = _columns(candidates)
    if table.num_rows == 0:
        return _empty_pairs(), stats
    given = texts or {}
    texts = {name: given[name] if name in given else Texts(table.column(name))
             for name in ("response", "instruction")}  # fmt: skip
    null = pa.nulls(table.num_rows, pa.string())
    keys = pl.from_arrow(pa.table({
        "lang": table.column("lang"), "prompt_id": table.column("prompt_id"),
        "sample_idx": table.column("sample_idx"),
        "finish_reason": table.column("finish_reason") if "finish_reason" in table.column_names else null,
        "lid_lang": table.column("lid_lang") if "lid_lang" in table.column_names else null,
    })).with_row_index("row")  # fmt: skip
    langs = keys["lang"].unique(maintain_order=True).to_list()
    # candidates by prompt (in order of first appearance), then sample_idx, then table order
    keys = keys.with_columns(first=pl.col("row").min().over("lang", "prompt_id")).sort(
        "first", "sample_idx", "row"
    )
    keys = keys.with_columns(
        lang_id=pl.col("lang").cast(pl.Enum(langs)).to_physical().cast(pl.Int64),
        truncated=(pl.col("finish_reason") == "length").fill_null(False),
        has_lid=pl.col("lid_lang").is_not_null(),
        off=(pl.col("lid_lang") != pl.col("lang")).fill_null(False),
    )
    row = keys["row"].to_numpy()
    first = keys["first"].to_numpy()
    new = np.r_[True, first[1:] != first[:-1]]
    group = np.cumsum(new) - 1
    g_start = np.flatnonzero(new)
    lang = keys["lang_id"].to_numpy()
    g_lang = lang[g_start]
    responses = texts["response"]

    # 1. candidate filters: the first that applies is the reason
    need_words = bool(filters & {"empty", "duplicate", "repetition", "chosen_eq_rejected"})
    need_cls = bool(filters & {"duplicate", "chosen_eq_rejected"})
    if features and all(len(features.get(k, ())) == len(row) for k in FEATURES):
        nw, rep, chars, cls = (np.asarray(features[k]) for k in FEATURES)
    else:
        fill = features is not None  # an empty dict: compute every feature, for the caller
        nw, rep, chars, key = text_features(responses, cfg, need_words or fill,
                                             "repetition" in filters or fill)  # fmt: skip
        cls = text_classes(responses, row, group, key[row]) if need_cls or fill else None
        if fill:
            features.clear()
            features.update(zip(FEATURES, (nw, rep, chars, cls)))
    nw, rep = nw[row], rep[row]
    trunc = keys["truncated"].to_numpy() & ("truncated" in filters)
    empty = (nw == 0) & ("empty" in filters)
    off = keys["off"].to_numpy() & ("off_target" in filters)
    rep &= "repetition" in filters
    dup = np.zeros(len(row), bool)
    if "duplicate" in filters:
        passes = ~(trunc | empty | rep | off)
        first_pass = np.full(len(row), len(row))
        np.minimum.at(first_pass, cls[passes], np.flatnonzero(passes))
        dup = first_pass[cls] < np.arange(len(row))
    reason = np.select([trunc, empty, dup, rep, off], [1, 2, 3, 4, 5], 0)
    kept = reason == 0
    g_kept = np.bincount(group, weights=kept, minlength=len(g_start)).astype(np.int64)
    has_lid = keys["has_lid"].to_numpy()
    off_any = keys["off"].to_numpy()
    for k, name in enumerate(langs):
        mine = lang == k
        funnel = stats.funnel[name] = empty_funnel()
        funnel["prompts"] = int((g_lang == k).sum())
        funnel["candidates"] = int(mine.sum())
        funnel["dropped_candidates"] = _first_counts(np.where(mine, reason, 0), _REASONS)
        funnel["kept_candidates"] = int((kept & mine).sum())
        few = int(((g_kept < 2) & (g_lang == k)).sum())
        if few:
            funnel["prompts_without_pair"]["fewer_than_two_kept"] = few
        lid = int((has_lid & mine).sum())
        if lid:
            funnel["off_target_rate"] = int((off_any & mine).sum()) / lid

    # 2.-4. per language: alpha, the rule, pair filters
    pos = np.flatnonzero(kept & (g_kept >= 2)[group])  # candidates of prompts that can pair
    reward = table.column("reward").to_numpy()[row[pos]].astype(np.float64)
    if cfg.length_unit == "tokens":
        length = table.column("response_tokens").to_numpy()[row[pos]].astype(np.float64)
    else:
        length = chars[row[pos]].astype(np.float64)
    if "judge_reward" in table.column_names:
        judge = table.column("judge_reward").to_numpy(zero_copy_only=False)[row[pos]]
        judge = np.asarray(judge, dtype=np.float64)  # None -> nan
    else:
        judge = np.full(len(pos), np.nan)
    alphas = _alpha_grid(cfg)
    out_c, out_r, out_m = [], [], []
    prompt_ids = table.column("prompt_id")
    pos_lang = g_lang[group[pos]]
    _, first_of = np.unique(pos_lang, return_index=True)
    order = pos_lang[np.sort(first_of)]  # languages in order of their first prompt that pairs

    def prompts_of(k):
        """A language's candidates (positions into pos) and its prompts' starts and sizes."""
        at = np.flatnonzero(pos_lang == k)
        grp = group[pos[at]]
        starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
        return at, starts, np.diff(np.r_[starts, len(grp)])

    def alpha_of(k):  # the compiled loop releases the GIL: languages run on threads
        at, starts, sizes = prompts_of(k)
        return choose_alpha(reward[at], length[at], starts, sizes, alphas)

    from icr_data.pairing.length_control import choose_alpha  # numba: imported when first needed

    choose_alpha([0.0], [0.0], [0], [1], alphas)  # compiled or loaded once, not on each thread
    with ThreadPoolExecutor(workers()) as pool:
        chosen_alphas = dict(zip(order.tolist(), pool.map(alpha_of, order)))
    for k in order:
        name = langs[k]
        funnel = stats.funnel[name]
        at, starts, sizes = prompts_of(k)
        mine = pos[at]
        r, ln, jr = reward[at], length[at], judge[at]
        best, mean = chosen_alphas[int(k)]
        alpha = float(alphas[best])
        stats.alphas[name] = alpha
        stats.mean_length_diff[name] = {
            "alpha_0": float(mean[0]),
            "chosen_alpha": float(mean[best]),
        }
        before_x, before_y = np.empty(len(starts)), np.empty(len(starts))
        for _, which, at2 in _padded(starts, sizes):
            rr, ll = r[at2], ln[at2]
            rows = np.arange(len(which))
            before_x[which] = ll[rows, rr.argmax(1)] - ll[rows, rr.argmin(1)]
            before_y[which] = rr.max(1) - rr.min(1)
        adjusted = r - alpha * ln
        pids: list[str] = []  # the prompts' ids, read if the rule draws (max_random)

        def rng(p, pids=pids, first_rows=row[mine[starts]], name=name):
            if not pids:
                pids += prompt_ids.take(pa.array(first_rows)).to_pylist()
            return _rng(cfg, name, pids[p])

        p, i, j = _select(rule, adjusted, r, starts, sizes, cfg, rng)
        without = len(starts) - len(np.unique(p))
        if without:
            funnel["prompts_without_pair"]["no_pair_clears_threshold"] = without
        margin = r[i] - r[j]
        separated = (i != j) & ((not rule.ranked) | (adjusted[i] > adjusted[j]))
        both = ~np.isnan(jr[i]) & ~np.isnan(jr[j])
        judged = separated & both
        disagrees = both & (jr[i] < jr[j])
        n_judged = int(judged.sum())
        if n_judged:
            agree = int((judged & ~disagrees).sum())
            stats.judge_agreement[name] = {
                "pairs": n_judged,
                "agree": agree,
                "rate": agree / n_judged,
            }
        same = np.zeros(len(i), bool)
        if "chosen_eq_rejected" in filters:
            same = cls[mine[i]] == cls[mine[j]]
        low = margin < cfg.min_margin if cfg.min_margin is not None else np.zeros(len(i), bool)
        drop = np.select(
            [~separated & (not cfg.paper_exact), same,
             ("tie" in filters) & (np.abs(margin) < cfg.tie_epsilon),
             ("judge_disagrees" in filters) & disagrees, low],
            [1, 2, 3, 4, 5], 0,
        )  # fmt: skip
        funnel["dropped_pairs"] = _first_counts(drop, _PAIR_REASONS)
        ok = drop == 0
        i, j, margin = i[ok], j[ok], margin[ok]
        if cfg.min_margin_quantile is not None and len(margin):
            cut = float(np.quantile(margin, cfg.min_margin_quantile))
            low = int((margin < cut).sum())
            if low:
                funnel["dropped_pairs"]["below_margin_quantile"] = low
            high = margin >= cut
            i, j, margin = i[high], j[high], margin[high]
        stats.length_margin_corr[name] = {
            "before": _corr(before_x, before_y),
            "after": _corr(ln[i] - ln[j], margin),
        }
        funnel["pairs"] = len(i)
        out_c.append(row[mine[i]])
        out_r.append(row[mine[j]])
        out_m.append(margin)
    if not out_c or not sum(len(c) for c in out_c):
        return _empty_pairs(), stats
    chosen, rejected, margin = (np.concatenate(x) for x in (out_c, out_r, out_m))
    out = _pairs_table(table, texts, chosen, rejected, margin)
    # the pairs are these rows of these candidates under this config: a fingerprint for datasets
    # without its default, which pickles the whole table to hash it
    ident = hashlib.sha256(f"{candidates._fingerprint}\x1f{cfg}".encode())
    for x in (chosen, rejected, margin):
        ident.update(x.tobytes())
    return Dataset(out, info=DatasetInfo(features=PAIR_FEATURES),
                   fingerprint=ident.hexdigest()[:16]), stats  # fmt: skip


def _empty_pairs() -> Dataset:
    return Dataset.from_dict({c: [] for c in PAIR_COLUMNS}, features=PAIR_FEATURES)
