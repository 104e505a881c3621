"""Pairing on hand-made tables: exact pairs, alphas and funnel counts for every strategy and filter."""

from pathlib import Path

import pytest
from datasets import Dataset

from icr_data.base.config import PairingConfig
from icr_data.base.registry import PAIRING_RULES
from icr_data.pairing.pairs import make_pairs
from icr_data.pairing.textfeatures import repeated_ngram_ratio

ROOT = Path(__file__).resolve().parents[1]


def cand(pid, idx, reward, text, lang="en", finish="stop", lid=None, tokens=None):
    return {"prompt_id": pid, "lang": lang, "instruction": f"instr {pid}", "sample_idx": idx,
            "response": text, "reward": reward, "response_tokens": tokens if tokens is not None else len(text) // 2,
            "finish_reason": finish, "lid_lang": lid}  # fmt: skip


def rows(lang, pid, rewards, lengths, texts=None):
    texts = texts or [chr(ord("a") + i) * n for i, n in enumerate(lengths)]
    return [cand(pid, i, r, t, lang) for i, (r, t) in enumerate(zip(rewards, texts))]


def run(table, **cfg):
    return make_pairs(Dataset.from_list(table), PairingConfig(**cfg))


def idx(pairs):
    return [(p["prompt_id"], p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in pairs]


# es/p1: the reward favours the longest response. Crossings of reward - alpha * len:
#   idx1 vs idx2 at alpha 0.03945, idx1 vs idx0 at 0.05, idx2 vs idx0 at 0.06055.
#   len(chosen) - len(rejected): 20 below 0.03945, 10 up to 0.05, -10 up to 0.06055, then -20.
# es/p2: equal lengths, so its length difference is 0 for every alpha.
# Mean over es: 10, 5, -5, -10  -> closest to zero first at the grid point 0.040.
TABLE = (
    rows("es", "p1", [0.0, 1.0, 0.6055], [10, 30, 20])
    + rows("es", "p2", [0.0, 2.0], [10, 10])
    + rows("de", "q1", [0.3, 0.1], [5, 5], texts=["same", "same"])  # one distinct response
    + rows("de", "q2", [1.0, 1.0], [4, 4], texts=["abcd", "efgh"])  # nothing separates them
    + rows("de", "q3", [-1.0, 0.5, 0.2], [3, 3, 3])
)


def test_max_min_with_length_control_and_funnel():
    pairs, stats = run(TABLE)
    assert stats.alphas["es"] == pytest.approx(0.040)
    assert stats.mean_length_diff["es"] == {"alpha_0": 10.0, "chosen_alpha": 5.0}
    assert idx(pairs) == [("p1", 2, 0), ("p2", 1, 0), ("q3", 1, 0)]
    p = {r["prompt_id"]: r for r in pairs}
    assert p["p1"]["margin"] == pytest.approx(0.6055) and p["q3"]["margin"] == pytest.approx(1.5)
    assert p["p1"]["chosen"] == [{"role": "assistant", "content": "c" * 20}]
    assert p["p1"]["rejected"] == [{"role": "assistant", "content": "a" * 10}]
    assert p["p1"]["prompt"] == [{"role": "user", "content": "instr p1"}]
    assert (p["p1"]["chosen_tokens"], p["p1"]["rejected_tokens"]) == (10, 5)
    de = stats.funnel["de"]
    assert (de["prompts"], de["candidates"], de["kept_candidates"], de["pairs"]) == (3, 7, 6, 1)
    assert de["dropped_candidates"] == {"duplicate": 1}
    assert de["prompts_without_pair"] == {"fewer_than_two_kept": 1}
    assert de["dropped_pairs"] == {"no_separation": 1}
    assert stats.funnel["es"]["pairs"] == 2 and stats.funnel["es"]["off_target_rate"] is None
    # before: two alpha-0 pairs (length diff 20, margin 1.0; 0, 2.0): a correlation of two points
    # is always +-1, so none is reported (fewer than 3 pairs)
    assert stats.length_margin_corr["es"] == {"before": None, "after": None}


def test_without_length_control_and_in_tokens():
    pairs, stats = run(TABLE, length_control=False)
    assert stats.alphas == {"es": 0.0, "de": 0.0} and idx(pairs)[0] == ("p1", 1, 0)
    # token lengths are half the characters: crossings double; first grid point past 0.0789
    _, stats = run(TABLE, length_unit="tokens")
    assert stats.alphas["es"] == pytest.approx(0.079)


FIVE = [cand("p", i, r, f"answer number {i}") for i, r in enumerate([0.1, 0.9, 0.5, 0.3, 0.7])]


@pytest.mark.parametrize(
    "cfg, expected",
    [
        ({"rule": "max_min"}, [("p", 1, 0)]),
        ({"rule": "top_bottom", "k": 2}, [("p", 1, 0), ("p", 1, 3), ("p", 4, 0), ("p", 4, 3)]),
        ({"rule": "top_bottom", "k": 1}, [("p", 1, 0)]),
        ({"rule": "threshold", "threshold": 0.45}, [("p", 1, 0), ("p", 1, 3), ("p", 4, 0)]),
        ({"rule": "max_min", "min_margin": 0.85}, []),
        (
            {"rule": "top_bottom", "k": 2, "min_margin": 0.5},
            [("p", 1, 0), ("p", 1, 3), ("p", 4, 0)],
        ),
        (
            {"rule": "top_bottom", "k": 2, "min_margin_quantile": 0.3},
            [("p", 1, 0), ("p", 1, 3), ("p", 4, 0)],
        ),
    ],
)
def test_strategies(cfg, expected):
    pairs, stats = run(FIVE, length_control=False, **cfg)
    assert idx(pairs) == expected
    assert stats.funnel["en"]["pairs"] == len(expected)


def test_margin_filters_are_counted():
    _, stats = run(FIVE, length_control=False, rule="top_bottom", k=2, min_margin=0.5)
    assert stats.funnel["en"]["dropped_pairs"] == {"below_min_margin": 1}
    _, stats = run(FIVE, length_control=False, rule="top_bottom", k=2, min_margin_quantile=0.3)
    assert stats.funnel["en"]["dropped_pairs"] == {"below_margin_quantile": 1}
    _, stats = run(FIVE, length_control=False, rule="threshold", threshold=5.0)
    assert stats.funnel["en"]["prompts_without_pair"] == {"no_pair_clears_threshold": 1}


def test_max_random_is_seeded_per_prompt():
    pairs, _ = run(FIVE, length_control=False, rule="max_random")
    ((pid, chosen, rejected),) = idx(pairs)
    assert chosen == 1 and rejected in {0, 2, 3, 4}
    assert idx(run(FIVE, length_control=False, rule="max_random")[0]) == idx(pairs)  # reproducible
    drawn = {
        idx(run(FIVE, length_control=False, rule="max_random", seed=s)[0])[0][2] for s in range(12)
    }
    assert len(drawn) > 1 and 1 not in drawn


@pytest.mark.parametrize(
    "name, table, cfg, pairs, dropped_candidates, without_pair, dropped_pairs",
    [
        ("N=1", [cand("p", 0, 1.0, "only one")], {}, 0, {}, {"fewer_than_two_kept": 1}, {}),
        (
            "all ties",
            [cand("p", i, 1.0, f"text {i}") for i in range(3)],
            {},
            0,
            {},
            {},
            {"no_separation": 1},
        ),
        (
            "near tie",
            [cand("p", 0, 1.0, "one"), cand("p", 1, 1.0 + 1e-9, "two")],
            {},
            0,
            {},
            {},
            {"tie": 1},
        ),
        (
            "all truncated",
            [cand("p", i, i, f"cut {i}", finish="length") for i in range(3)],
            {},
            0,
            {"truncated": 3},
            {"fewer_than_two_kept": 1},
            {},
        ),
        (
            "truncated kept when not filtered",
            [cand("p", i, i, f"cut {i}", finish="length") for i in range(3)],
            {"filters": ["empty"]},
            1,
            {},
            {},
            {},
        ),
        (
            "all off-target",
            [cand("p", i, i, f"hola {i}", lid="es") for i in range(3)],
            {},
            0,
            {"off_target": 3},
            {"fewer_than_two_kept": 1},
            {},
        ),
        (
            "identical samples",
            [cand("p", i, i, "Same answer.") for i in range(4)],
            {},
            0,
            {"duplicate": 3},
            {"fewer_than_two_kept": 1},
            {},
        ),
        (
            "normalised duplicate",
            [
                cand("p", 0, 0.0, "Same  answer."),
                cand("p", 1, 1.0, "same answer. "),
                cand("p", 2, 2.0, "other"),
            ],
            {},
            1,
            {"duplicate": 1},
            {},
            {},
        ),
        (
            "empty",
            [cand("p", 0, 0.0, "  "), cand("p", 1, 1.0, "x"), cand("p", 2, 2.0, "y")],
            {},
            1,
            {"empty": 1},
            {},
            {},
        ),
        (
            "repetition",
            [
                cand("p", 0, 5.0, "la di da dum " * 10),
                cand("p", 1, 1.0, "a fine answer"),
                cand("p", 2, 0.0, "another fine answer"),
            ],
            {},
            1,
            {"repetition": 1},
            {},
            {},
        ),
        (
            "chosen == rejected after normalising",
            [cand("p", 0, 0.0, "Hello"), cand("p", 1, 1.0, "hello ")],
            {"filters": ["chosen_eq_rejected"]},
            0,
            {},
            {},
            {"chosen_eq_rejected": 1},
        ),
    ],
)
def test_filters(name, table, cfg, pairs, dropped_candidates, without_pair, dropped_pairs):
    out, stats = run(table, length_control=False, **cfg)
    f = stats.funnel["en"]
    assert len(out) == f["pairs"] == pairs
    assert f["dropped_candidates"] == dropped_candidates
    assert f["prompts_without_pair"] == without_pair
    assert f["dropped_pairs"] == dropped_pairs
    assert f["candidates"] == len(table) and f["kept_candidates"] == len(table) - sum(
        dropped_candidates.values()
    )


def test_off_target_rate_counts_every_candidate():
    table = [cand("p", 0, 0.0, "a", lid="en"), cand("p", 1, 1.0, "b", lid="de"),
             cand("p", 2, 2.0, "c", lid="en", finish="length"), cand("p", 3, 3.0, "d", lid="fr")]  # fmt: skip
    _, stats = run(table, length_control=False)
    assert stats.funnel["en"]["off_target_rate"] == pytest.approx(0.5)


def test_repeated_ngram_ratio():
    assert repeated_ngram_ratio("one two three four five six seven eight", 4) == 0.0
    assert repeated_ngram_ratio("a b c d " * 10, 4) == pytest.approx(1 - 4 / 37)
    assert repeated_ngram_ratio("too short", 4) == 0.0


def test_no_pairs_gives_empty_dataset_with_columns():
    pairs, _ = run(TABLE[5:7])
    assert len(pairs) == 0 and pairs.features["margin"].dtype == "float64"


def test_a_rule_is_one_function_plus_one_registry_line(monkeypatch):
    """A rule added to PAIRING_RULES is run by make_pairs and accepted by the recipe check."""
    from icr_data.base.config import validate_pairing
    from icr_data.pairing import pairing_rules

    def second_best(adjusted, reward, cfg, rng):
        """the second best vs the worst"""
        order = sorted(range(len(adjusted)), key=lambda i: -adjusted[i])
        return [(order[1], order[-1])]

    monkeypatch.setitem(PAIRING_RULES._entries, "second_best", pairing_rules.Rule(second_best))
    validate_pairing(PairingConfig(rule="second_best"))
    pairs, stats = run(FIVE, length_control=False, rule="second_best")
    assert idx(pairs) == [("p", 4, 0)] and stats.funnel["en"]["pairs"] == 1
    assert "second_best: the second best vs the worst." in pairing_rules.rules_help()


def test_unknown_rule_is_refused_by_name():
    from icr_data.base.config import RecipeError

    with pytest.raises(RecipeError, match="unknown pairing rule 'best'"):
        run(FIVE, rule="best")


def _research_selection(rows):
    """METHOD.md's description of the research code, written out plainly: per language, for
    each alpha in 0, 0.001, ..., 1, rank each prompt's responses by reward - alpha * len(chars),
    take argmax vs argmin, and keep the alpha whose mean len(chosen) - len(rejected) is closest
    to zero (the first on ties); no filters of any kind."""
    by_lang: dict = {}
    for r in rows:
        by_lang.setdefault(r["lang"], {}).setdefault(r["prompt_id"], []).append(r)
    out = {}
    for lang, prompts in by_lang.items():
        groups = [sorted(g, key=lambda r: r["sample_idx"]) for g in prompts.values()]

        def picks(alpha, groups=groups):
            result = []
            for g in groups:
                score = [r["reward"] - alpha * len(r["response"]) for r in g]
                hi = max(range(len(g)), key=lambda i: (score[i], -i))  # first maximum
                lo = min(range(len(g)), key=lambda i: (score[i], i))  # first minimum
                result.append((g[hi], g[lo]))
            return result

        best = None
        for k in range(1001):
            chosen = picks(k * 0.001)
            mean = sum(len(c["response"]) - len(r["response"]) for c, r in chosen) / len(chosen)
            if best is None or abs(mean) < best[0]:
                best = (abs(mean), chosen)
        for c, r in best[1]:
            out[(lang, c["prompt_id"])] = (c["sample_idx"], r["sample_idx"])
    return out


def test_paper_exact_preset_is_the_research_selection_and_not_the_filtered_default():
    from icr_data.base.config import load_recipe

    texts = {  # (reward, response, finish_reason, lid_lang) per sample
        ("p1", "de"): [(0.9, "Das ist eine sehr lange Antwort ohne Ende", "length", "de"),
                       (0.5, "Kurz.", "stop", "de"), (0.2, "Eine mittlere Antwort.", "stop", "de"),
                       (-0.4, "Kurz.", "stop", "de")],
        ("p2", "de"): [(0.3, "This one is English", "stop", "en"),
                       (0.1, "Eine Antwort hier", "stop", "de"), (0.1, "", "stop", None),
                       (-0.2, "Noch eine ziemlich lange Antwort auf Deutsch", "stop", "de")],
        ("p3", "de"): [(0.7, "Gut gut gut gut gut gut", "stop", "de"),
                       (0.7 + 1e-9, "Gut gut gut gut gut gut!", "stop", "de"),
                       (-0.1, "Nein", "stop", "de")],
        ("p1", "en"): [(0.4, "A fine answer, quite long indeed", "stop", "en"),
                       (0.4, "A fine answer, quite long indeed", "stop", "en"),
                       (0.0, "Short", "stop", "en")],
        ("p2", "en"): [(0.2, "Same words", "stop", "en"), (0.2, "Same words", "stop", "en")],
    }  # fmt: skip
    rows = [{"prompt_id": p, "lang": lang, "instruction": f"{p}-{lang}", "scoring_prompt": "x",
             "sample_idx": i, "response": text, "finish_reason": fin, "response_tokens": len(text),
             "logp_policy": 0.0, "logp_ref": -r, "reward": r, "reward_mean": 0.0, "lid_lang": lid,
             "lid_score": 0.9}
            for (p, lang), samples in texts.items() for i, (r, text, fin, lid) in enumerate(samples)]  # fmt: skip
    cands = Dataset.from_list(rows)
    recipe = load_recipe(ROOT / "recipes" / "paper_round1.yaml")
    assert recipe.pairing.paper_exact and recipe.pairing.filters == []
    exact, stats = make_pairs(cands, recipe.pairing)
    got = {(p["lang"], p["prompt_id"]): (p["chosen_sample_idx"], p["rejected_sample_idx"])
           for p in exact}  # fmt: skip
    assert got == _research_selection(rows)
    assert got[("de", "p1")][0] == 0  # the truncated answer wins, as in the research code
    assert got[("en", "p2")] == (0, 0)  # all alike: argmax and argmin are the first sample
    assert (
        stats.funnel["de"]["dropped_candidates"] == {} and stats.funnel["de"]["dropped_pairs"] == {}
    )
    default, _ = make_pairs(cands, PairingConfig())
    assert {(p["lang"], p["prompt_id"]): (p["chosen_sample_idx"], p["rejected_sample_idx"])
            for p in default} != got  # fmt: skip


def test_paper_exact_refuses_settings_the_research_code_does_not_have(tmp_path):
    from icr_data.base.config import RecipeError, load_recipe

    paper = ROOT / "recipes" / "paper_round1.yaml"
    with pytest.raises(RecipeError, match=r"needs 'pairing.filters: \[\]'"):
        load_recipe(paper, ["pairing.filters=[tie]"])
    with pytest.raises(RecipeError, match="needs 'pairing.length_unit: chars'"):
        load_recipe(paper, ["pairing.length_unit=tokens"])


def test_no_correlation_on_two_pairs():
    from icr_data.pairing.pairs import _corr

    assert _corr([1.0, 2.0], [3.0, 5.0]) is None
    assert _corr([1.0, 2.0, 3.0], [3.0, 5.0, 7.0]) == pytest.approx(1.0)


def test_judge_disagrees_drops_exactly_the_pairs_the_explicit_reward_reverses():
    table = (rows("de", "a", [1.0, 0.0, 0.5], [5, 5, 5]) + rows("de", "b", [1.0, 0.0], [5, 5])
             + rows("de", "c", [0.2, 0.9], [5, 5]) + rows("fr", "d", [0.3, 0.1], [5, 5]))  # fmt: skip
    planted = {("a", 0): 2.0, ("a", 1): 1.0, ("a", 2): 9.0,  # agrees: 2.0 > 1.0
               ("b", 0): -1.0, ("b", 1): 3.0,               # reverses the implicit order
               ("c", 0): 0.0, ("c", 1): 0.0,                # a tie is no contradiction
               ("d", 0): 5.0, ("d", 1): 6.0}  # reverses  # fmt: skip
    for r in table:
        r["judge_reward"] = planted[(r["prompt_id"], r["sample_idx"])]
    pairs, stats = run(table, length_control=False)
    assert idx(pairs) == [("a", 0, 1), ("c", 1, 0)]
    assert stats.funnel["de"]["dropped_pairs"] == {"judge_disagrees": 1}
    assert stats.funnel["fr"]["dropped_pairs"] == {"judge_disagrees": 1}
    assert stats.judge_agreement == {"de": {"pairs": 3, "agree": 2, "rate": 2 / 3},
                                     "fr": {"pairs": 1, "agree": 0, "rate": 0.0}}  # fmt: skip
    kept, _ = run(table, length_control=False, filters=["tie"])  # without the filter: all four
    assert len(kept) == 4
    plain, plain_stats = run([{k: v for k, v in r.items() if k != "judge_reward"} for r in table],
                             length_control=False)  # fmt: skip
    assert len(plain) == 4 and plain_stats.judge_agreement == {}  # no judge: a no-op
