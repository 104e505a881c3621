"""Pairing on hand-made tables: the known argmax/argmin and the per-language alpha."""

import pytest
from datasets import Dataset

from icr_data.config import PairingConfig
from icr_data.pairs import make_pairs


def rows(lang, pid, rewards, lengths, texts=None):
    texts = texts or [chr(ord("a") + i) * n for i, n in enumerate(lengths)]
    return [
        {"prompt_id": pid, "lang": lang, "instruction": f"instr {pid}", "sample_idx": i,
         "response": t, "reward": r, "response_tokens": n // 2}
        for i, (r, n, t) in enumerate(zip(rewards, lengths, texts))
    ]  # fmt: skip


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


def by_prompt(pairs):
    return {r["prompt_id"]: r for r in pairs}


def test_max_min_with_length_control():
    pairs, stats = make_pairs(Dataset.from_list(TABLE), PairingConfig())
    assert stats.alphas["es"] == pytest.approx(0.040)
    assert stats.mean_length_diff["es"] == {"alpha_0": 10.0, "chosen_alpha": 5.0}
    p = by_prompt(pairs)
    assert (p["p1"]["chosen_sample_idx"], p["p1"]["rejected_sample_idx"]) == (2, 0)
    assert (p["p2"]["chosen_sample_idx"], p["p2"]["rejected_sample_idx"]) == (1, 0)
    assert (p["q3"]["chosen_sample_idx"], p["q3"]["rejected_sample_idx"]) == (1, 0)
    assert p["p1"]["margin"] == pytest.approx(0.6055)
    assert p["q3"]["margin"] == pytest.approx(1.5)
    assert p["p1"]["chosen"] == [{"role": "assistant", "content": "c" * 20}]
    assert p["p1"]["rejected"] == [{"role": "assistant", "content": "a" * 10}]
    assert p["p1"]["prompt"] == [{"role": "user", "content": "instr p1"}]
    assert (p["p1"]["chosen_tokens"], p["p1"]["rejected_tokens"]) == (10, 5)
    assert stats.drops["de"] == {"fewer_than_two_distinct": 1, "no_separation": 1}
    assert stats.drops["es"] == {"fewer_than_two_distinct": 0, "no_separation": 0}
    assert len(pairs) == 3


def test_without_length_control_is_plain_argmax_argmin():
    pairs, stats = make_pairs(Dataset.from_list(TABLE), PairingConfig(length_control=False))
    assert stats.alphas == {"es": 0.0, "de": 0.0}
    p = by_prompt(pairs)
    assert (p["p1"]["chosen_sample_idx"], p["p1"]["rejected_sample_idx"]) == (1, 0)
    assert p["p1"]["margin"] == pytest.approx(1.0)


def test_length_in_tokens():
    # token lengths are half the character lengths: the crossing points double, so the
    # first grid point with mean difference 5 (in tokens: 2.5 of 5/10) is 0.079
    pairs, stats = make_pairs(Dataset.from_list(TABLE), PairingConfig(length_unit="tokens"))
    assert stats.alphas["es"] == pytest.approx(0.079)


def test_no_pairs_gives_empty_dataset_with_columns():
    pairs, stats = make_pairs(Dataset.from_list(TABLE[5:7]), PairingConfig())
    assert len(pairs) == 0 and pairs.features["margin"].dtype == "float64"
    assert stats.drops["de"]["fewer_than_two_distinct"] == 1
