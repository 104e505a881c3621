"""The columnar pair stage against a plain reference: random candidate tables, every rule and filter.

`reference_pairs` below is the pair stage as it was written before it went columnar: a Python loop
over rows and prompts, each rule a per-prompt function on numpy arrays. It stays here, and only
here, as the oracle. Each case builds a random table (several languages, tied rewards, duplicates
up to case and spacing, truncated, empty and repetitive responses, off-target language IDs, judge
rewards with gaps, rows in shuffled order) and checks that make_pairs returns the same rows in the
same order and the same stats. Floats are compared to within 1e-12 (relative); everything else,
including the order of the funnel's reasons, exactly.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict

import numpy as np
import pytest
from datasets import Dataset

from icr_data.base.config import PairingConfig
from icr_data.pairing.pairs import PAIR_FEATURES, make_pairs

TOL = 1e-12


# ------------------------------------------------------------------------- the reference (oracle)
def _normalise(text):
    return " ".join(text.lower().split())


def _repeated_ngram_ratio(text, n):
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def _candidate_drop(row, seen, cfg):
    f = cfg.filters
    if "truncated" in f and row.get("finish_reason") == "length":
        return "truncated"
    if "empty" in f and not row["response"].strip():
        return "empty"
    if "duplicate" in f and _normalise(row["response"]) in seen:
        return "duplicate"
    if (
        "repetition" in f
        and _repeated_ngram_ratio(row["response"], cfg.repetition_ngram) > cfg.repetition_max
    ):
        return "repetition"
    if "off_target" in f and row.get("lid_lang") is not None and row["lid_lang"] != row["lang"]:
        return "off_target"
    return None


def _max_min(adjusted, reward, cfg, rng):
    return [(int(adjusted.argmax()), int(adjusted.argmin()))]


def _max_random(adjusted, reward, cfg, rng):
    best = int(adjusted.argmax())
    others = [i for i in range(len(adjusted)) if i != best]
    return [(best, rng.choice(others))] if others else [(best, best)]


def _top_bottom(adjusted, reward, cfg, rng):
    order = sorted(range(len(adjusted)), key=lambda i: (-adjusted[i], i))
    top, bottom = order[: cfg.k], order[::-1][: cfg.k]
    out = [(i, j) for i in top for j in bottom if i != j and adjusted[i] > adjusted[j]]
    return out or _max_min(adjusted, reward, cfg, rng)


def _threshold(adjusted, reward, cfg, rng):
    n = len(reward)
    return [(i, j) for i in range(n) for j in range(n)
            if i != j and reward[i] - reward[j] >= cfg.threshold and reward[i] > reward[j]]  # fmt: skip


REFERENCE_RULES = {"max_min": (_max_min, True), "max_random": (_max_random, True),
                   "top_bottom": (_top_bottom, True), "threshold": (_threshold, False)}  # fmt: skip


def _count(d, reason, k=1):
    d[reason] = d.get(reason, 0) + k


def _choose_alpha(groups, alphas):
    diffs = np.zeros((len(groups), len(alphas)))
    for g, (reward, length) in enumerate(groups):
        adjusted = reward[:, None] - alphas[None, :] * length[:, None]
        diffs[g] = length[adjusted.argmax(axis=0)] - length[adjusted.argmin(axis=0)]
    mean = diffs.mean(axis=0)
    return int(np.argmin(np.abs(mean))), mean


def _corr(x, y):
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _judge_prefers_rejected(chosen, rejected):
    a, b = chosen.get("judge_reward"), rejected.get("judge_reward")
    return a is not None and b is not None and a < b


def _rng(cfg, lang, prompt_id):
    digest = hashlib.sha256(f"{cfg.seed}\x1f{prompt_id}\x1f{lang}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _funnel():
    return {"prompts": 0, "candidates": 0, "kept_candidates": 0, "pairs": 0,
            "dropped_candidates": {}, "prompts_without_pair": {}, "dropped_pairs": {},
            "off_target_rate": None}  # fmt: skip


def reference_pairs(rows_in, cfg):
    """(pair rows as dicts, stats as a dict): the loop-based pair stage."""
    stats = {"alphas": {}, "mean_length_diff": {}, "length_margin_corr": {}, "funnel": {},
             "judge_agreement": {}}  # fmt: skip
    by_prompt = defaultdict(list)
    for row in rows_in:
        by_prompt[(row["lang"], row["prompt_id"])].append(row)
    kept_by_lang = defaultdict(list)
    lid_total = defaultdict(lambda: [0, 0])
    for (lang, _), rows in by_prompt.items():
        funnel = stats["funnel"].setdefault(lang, _funnel())
        funnel["prompts"] += 1
        seen = set()
        kept = []
        for r in sorted(rows, key=lambda r: r["sample_idx"]):
            funnel["candidates"] += 1
            if r.get("lid_lang") is not None:
                lid_total[lang][0] += r["lid_lang"] != lang
                lid_total[lang][1] += 1
            reason = _candidate_drop(r, seen, cfg)
            if reason:
                _count(funnel["dropped_candidates"], reason)
                continue
            seen.add(_normalise(r["response"]))
            kept.append(r)
        funnel["kept_candidates"] += len(kept)
        if len(kept) < 2:
            _count(funnel["prompts_without_pair"], "fewer_than_two_kept")
        else:
            kept_by_lang[lang].append(kept)
    for lang, (off, total) in lid_total.items():
        stats["funnel"][lang]["off_target_rate"] = off / total if total else None

    select, ranked = REFERENCE_RULES[cfg.rule]
    if cfg.length_control:
        alphas = np.arange(int(round(cfg.alpha_max / cfg.alpha_step)) + 1) * cfg.alpha_step
    else:
        alphas = np.zeros(1)
    unit = "response_tokens" if cfg.length_unit == "tokens" else None
    out = []
    for lang, prompts in kept_by_lang.items():
        funnel = stats["funnel"][lang]
        groups = [
            (np.array([r["reward"] for r in rows], dtype=np.float64),
             np.array([r[unit] if unit else len(r["response"]) for r in rows], dtype=np.float64))
            for rows in prompts
        ]  # fmt: skip
        k, mean = _choose_alpha(groups, alphas)
        alpha = float(alphas[k])
        stats["alphas"][lang] = alpha
        stats["mean_length_diff"][lang] = {"alpha_0": float(mean[0]),
                                           "chosen_alpha": float(mean[k])}  # fmt: skip
        before = [(length[reward.argmax()] - length[reward.argmin()], reward.max() - reward.min())
                  for reward, length in groups]  # fmt: skip
        lang_pairs = []
        judged = agreed = 0
        for rows, (reward, length) in zip(prompts, groups):
            adjusted = reward - alpha * length
            chosen = select(adjusted, reward, cfg, _rng(cfg, lang, rows[0]["prompt_id"]))
            if not chosen:
                _count(funnel["prompts_without_pair"], "no_pair_clears_threshold")
            for i, j in chosen:
                c, r = rows[i], rows[j]
                margin = c["reward"] - r["reward"]
                reason = None
                separated = i != j and (not ranked or adjusted[i] > adjusted[j])
                if (
                    separated
                    and c.get("judge_reward") is not None
                    and r.get("judge_reward") is not None
                ):
                    judged += 1
                    agreed += not _judge_prefers_rejected(c, r)
                if not separated and not cfg.paper_exact:
                    reason = "no_separation"
                elif "chosen_eq_rejected" in cfg.filters and _normalise(
                    c["response"]
                ) == _normalise(r["response"]):
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
            stats["judge_agreement"][lang] = {"pairs": judged, "agree": agreed,
                                              "rate": agreed / judged}  # fmt: skip
        stats["length_margin_corr"][lang] = {
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
    return out, stats


# ------------------------------------------------------------------------------ random tables
WORDS = ["the", "water", "is", "good", "Das", "Wasser", "ist", "gut", "вода", "ΣΟΦΙΑ", "ÄRGER",
         "día", "l'eau", "x"]  # fmt: skip
SPACES = [" ", " ", " ", "  ", "\n", "\t", "\u00a0", "\u3000", "\x1c"]


def _text(rng: random.Random, pool: list[str]) -> str:
    kind = rng.random()
    if kind < 0.08:
        return rng.choice(["", " ", "\n\t ", "\u2003"])
    if kind < 0.3 and pool:  # a duplicate, maybe up to case and spacing
        base = rng.choice(pool)
        if rng.random() < 0.5:
            base = base.upper() if rng.random() < 0.5 else "  " + base.replace(" ", "\n ") + " "
        return base
    if kind < 0.42:  # repetitive: a short loop of words
        loop = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
        return " ".join(loop * rng.randint(2, 12))
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
    out = words[0]
    for w in words[1:]:
        out += rng.choice(SPACES) + w
    return out


def random_table(seed: int, judge: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    langs = ["en", "de", "ru"][: rng.randint(1, 3)]
    for p in range(rng.randint(2, 12)):
        for lang in langs:
            if rng.random() < 0.15:
                continue
            pool: list[str] = []
            n = rng.choice([1, 2, 3, 4, 5, 6, 8])
            idxs = list(range(n))
            if rng.random() < 0.1 and n > 1:
                idxs[-1] = idxs[0]  # a repeated sample_idx: kept in table order
            for i in idxs:
                text = _text(rng, pool)
                pool.append(text)
                reward = rng.choice([0.0, 0.5, 1.0, -1.0, 1.0 + 1e-9, 0.25]) if rng.random() < 0.5 \
                    else round(rng.gauss(0, 1), rng.choice([1, 3, 12]))  # fmt: skip
                lid = rng.choice([None, lang, lang, lang, lang, lang, "en", "fr"])
                row = {"prompt_id": f"p{p}", "lang": lang, "instruction": f"instr {p} {lang} {i}",
                       "sample_idx": i, "response": text, "reward": reward,
                       "response_tokens": rng.randint(0, 40),
                       "finish_reason": "length" if rng.random() < 0.1 else "stop",
                       "lid_lang": lid}  # fmt: skip
                if judge:
                    row["judge_reward"] = (
                        None if rng.random() < 0.2 else rng.choice([0.0, 1.0, rng.random()])
                    )
                rows.append(row)
    rng.shuffle(rows)
    return rows


# ------------------------------------------------------------------------------------ compare
def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


def assert_same(table: list[dict], cfg: PairingConfig) -> None:
    want_rows, want = reference_pairs(table, cfg)
    got_rows, got = make_pairs(Dataset.from_list(table), cfg)
    assert got_rows.features == PAIR_FEATURES
    got_list = got_rows.to_list()
    assert len(got_list) == len(want_rows)
    for g, w in zip(got_list, want_rows):
        for key in ("chosen_reward", "rejected_reward", "margin"):
            assert _close(g.pop(key), w.pop(key)), key
        assert g == w
    assert got.alphas.keys() == want["alphas"].keys()
    for lang, alpha in want["alphas"].items():
        assert _close(got.alphas[lang], alpha)
        for key, value in want["mean_length_diff"][lang].items():
            assert _close(got.mean_length_diff[lang][key], value)
        for key, value in want["length_margin_corr"][lang].items():
            assert _close(got.length_margin_corr[lang][key], value), (lang, key)
    assert got.mean_length_diff.keys() == want["mean_length_diff"].keys()
    assert got.length_margin_corr.keys() == want["length_margin_corr"].keys()
    assert list(got.funnel) == list(want["funnel"])
    for lang, f in want["funnel"].items():
        g = got.funnel[lang]
        assert _close(g.pop("off_target_rate"), f.pop("off_target_rate"))
        assert g == f
        for key in ("dropped_candidates", "prompts_without_pair", "dropped_pairs"):
            assert list(g[key].items()) == list(f[key].items()), (lang, key)
    assert got.judge_agreement.keys() == want["judge_agreement"].keys()
    for lang, j in want["judge_agreement"].items():
        g = got.judge_agreement[lang]
        assert (g["pairs"], g["agree"]) == (j["pairs"], j["agree"]) and _close(g["rate"], j["rate"])


ALL_FILTERS = ["truncated", "empty", "duplicate", "repetition", "off_target", "chosen_eq_rejected",
               "tie", "judge_disagrees"]  # fmt: skip
CONFIGS = {
    "default": {},
    "no filters": {"filters": []},
    "paper exact": {"filters": [], "paper_exact": True},
    "duplicates and pairs only": {"filters": ["duplicate", "chosen_eq_rejected", "tie"]},
    "repetition strict": {"filters": ["repetition"], "repetition_ngram": 2, "repetition_max": 0.2},
    "no empty filter": {"filters": [f for f in ALL_FILTERS if f != "empty"]},
    "min margin": {"min_margin": 0.3},
    "quantile": {"min_margin_quantile": 0.4},
    "both margins, tokens": {
        "min_margin": 0.0,
        "min_margin_quantile": 0.25,
        "length_unit": "tokens",
    },
    "no length control": {"length_control": False},
    "coarse grid": {"alpha_max": 0.5, "alpha_step": 0.05},
    "tokens": {"length_unit": "tokens"},
}
RULE_CONFIGS = {
    "max_min": [{}],
    "max_random": [{"seed": 0}, {"seed": 7}],
    "top_bottom": [{"k": 1}, {"k": 2}, {"k": 3}],
    "threshold": [{"threshold": 0.0}, {"threshold": 0.5}, {"threshold": -1.0}],
}


@pytest.mark.parametrize("rule", list(RULE_CONFIGS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_pairs_and_stats_as_the_reference(rule, name):
    for seed in range(8):
        table = random_table(1000 * seed + len(name), judge=seed % 3 != 0)
        for extra in RULE_CONFIGS[rule]:
            assert_same(table, PairingConfig(rule=rule, **extra, **CONFIGS[name]))


@pytest.mark.parametrize("rule", list(RULE_CONFIGS))
def test_crossings_on_the_grid_match_the_reference(rule):
    """Rewards and lengths whose reward - alpha * length cross exactly at grid points (0.05 = 50 *
    0.001 and the like), where floating-point rounding decides the ranking."""
    rng = random.Random(3)
    table = []
    for p in range(40):
        for i in range(rng.randint(2, 6)):
            length = rng.choice([10, 20, 30, 40, 7])
            reward = rng.choice([0.0, 0.5, 1.0]) + rng.choice([0.05, 0.1, 0.001, 0.0]) * length
            table.append({"prompt_id": f"q{p}", "lang": "es", "instruction": "i", "sample_idx": i,
                          "response": "ab" * (length // 2) + "c" * (length % 2), "reward": reward,
                          "response_tokens": length, "finish_reason": "stop", "lid_lang": None})  # fmt: skip
    for cfg in ({}, {"length_unit": "tokens"}, {"alpha_step": 0.01}, {"k": 2, "threshold": 0.1}):
        assert_same(table, PairingConfig(rule=rule, **cfg))


def test_empty_and_all_dropped_tables():
    assert_same([], PairingConfig())
    one = random_table(5)[:1]
    assert_same(one, PairingConfig())
    truncated = [dict(r, finish_reason="length") for r in random_table(6)]
    assert_same(truncated, PairingConfig())


def test_reads_a_dataset_with_an_indices_mapping():
    """A selected or shuffled Dataset (an indices mapping over its table) pairs as its rows do."""
    table = random_table(11)
    ds = Dataset.from_list(table).shuffle(seed=1).select(range(len(table) // 2))
    want, _ = reference_pairs(ds.to_list(), PairingConfig())
    got, _ = make_pairs(ds, PairingConfig())
    assert got.to_list() == want


def test_texts_read_from_parquet_row_groups_pair_as_in_memory(tmp_path):
    """A re-pairing reads responses and instructions from the version's files a row group at a
    time (ParquetTexts); the pairs and stats are those of the whole table in memory."""
    import pyarrow.parquet as pq

    from icr_data.pairing.textfeatures import ParquetTexts, Texts

    table = random_table(21)
    ds = Dataset.from_list(table)
    half = len(ds) // 2
    files = []
    for k, part in enumerate((ds.data.table.slice(0, half), ds.data.table.slice(half))):
        files.append(tmp_path / f"part-{k}.parquet")
        pq.write_table(part, files[-1], row_group_size=7)
    lazy = {c: ParquetTexts(files, c) for c in ("response", "instruction")}
    assert len(lazy["response"].bounds) > 4  # several row groups in each file
    idx = np.array([len(ds) - 1, 0, 8, 8, half + 1, 7])
    assert lazy["response"].take(idx).to_pylist() == [table[i]["response"] for i in idx]
    assert Texts(ds.data.table.column("response")).take(idx).to_pylist() == [
        table[i]["response"] for i in idx
    ]
    for cfg in (PairingConfig(), PairingConfig(rule="threshold", threshold=0.5)):
        want, want_stats = make_pairs(ds, cfg)
        got, stats = make_pairs(ds.remove_columns(["response", "instruction"]), cfg, lazy)
        assert got.to_list() == want.to_list() and len(want)
        assert stats == want_stats


def _alpha_as_every_alpha_evaluated(reward, length, sizes, alphas):
    """The compiled choice of alpha (candidates pruned, the grid evaluated per stretch between
    crossings) against the whole (candidates x alphas) matrix: the same index and means."""
    from icr_data.pairing.length_control import choose_alpha

    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    groups = [(reward[s : s + n], length[s : s + n]) for s, n in zip(starts, sizes)]
    want_k, want_mean = _choose_alpha(groups, alphas)
    k, mean = choose_alpha(reward, length, starts, sizes, alphas)
    assert k == want_k
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=0)  # sums of whole numbers


@pytest.mark.parametrize("step", [0.001, 0.25])
def test_alpha_choice_matches_every_alpha_evaluated_at_exact_ties(step):
    """Small whole rewards and lengths, whose adjusted rewards tie exactly at many alphas of the
    grid: the first best and first worst must be the same ones."""
    rng = np.random.default_rng(3)
    alphas = np.arange(int(round(1 / step)) + 1) * step
    for _ in range(30):
        sizes = rng.integers(1, 9, rng.integers(1, 40))
        reward = rng.integers(-4, 5, sizes.sum()).astype(float)
        length = rng.integers(0, 9, sizes.sum()).astype(float)
        _alpha_as_every_alpha_evaluated(reward, length, sizes, alphas)


@pytest.mark.parametrize("step", [0.001, 0.01, 0.1])
def test_alpha_choice_matches_every_alpha_evaluated_on_random_prompts(step):
    """Rewards with a length trend and rounded rewards (many near and exact crossings), prompts of
    1 to 10 candidates."""
    rng = np.random.default_rng(11)
    alphas = np.arange(int(round(1 / step)) + 1) * step
    for trial in range(100):
        sizes = rng.integers(1, 11, rng.integers(1, 30))
        length = rng.integers(0, 2000 if trial % 2 else 40, sizes.sum()).astype(float)
        noise = rng.normal(0, 1, sizes.sum())
        reward = noise + 0.0004 * length if trial % 2 else np.round(3 * noise, 2)
        _alpha_as_every_alpha_evaluated(reward, length, sizes, alphas)
