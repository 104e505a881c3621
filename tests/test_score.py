"""The scorer equals a naive one-example full-forward computation, row by row."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from icr_data.base.config import ScoringConfig
from icr_data.commands.score_phase import score_candidates as score
from icr_data.stages.chat import ChatEncoder
from icr_data.stages.models import ModelError
from icr_data.stages.score import sequence_logps

RESPONSES = [
    "",  # empty: only the end-of-turn token (or nothing) is scored
    "a",  # one token
    "Paris is the capital of France.",
    "Der schnelle braune Fuchs springt über den faulen Hund. " * 4,
    "Быстрая коричневая лиса",
    "x" * 300,
]


def naive_logp(model, prompt_ids, response_ids):
    """One example, full forward, full-vocabulary log_softmax: the definition."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return sum(logp[t - 1, ids[0, t]].item() for t in range(len(prompt_ids), ids.shape[1]))


@pytest.fixture(scope="module")
def models(tiny_pair):
    return [AutoModelForCausalLM.from_pretrained(p).eval() for p in tiny_pair]


@pytest.mark.parametrize("count_eot", [True, False])
@pytest.mark.parametrize("token_budget", [1, 200, 100_000])
def test_batched_equals_naive(models, tokenizer, count_eot, token_budget):
    enc = ChatEncoder(tokenizer, count_eot=count_eot)
    rows = [enc.encode(x, y) for x in ("Hi", "Name three fruits, please.") for y in RESPONSES]
    got = sequence_logps(models[0], rows, tokenizer.pad_token_id, "cpu", token_budget=token_budget)
    for row, value in zip(rows, got):
        want = naive_logp(models[0], row.prompt_ids, row.response_ids)
        assert value == pytest.approx(want, abs=1e-4)
    empty = rows[0]
    assert (got[0] == 0.0) == (not count_eot)
    assert len(empty.response_ids) == (1 if count_eot else 0)


def test_first_response_token_counts(models, tokenizer):
    enc = ChatEncoder(tokenizer)
    a, b = enc.encode("Hi", "Xbc def"), enc.encode("Hi", "Ybc def")
    assert a.response_ids[1:] == b.response_ids[1:] and a.response_ids[0] != b.response_ids[0]
    la, lb = sequence_logps(models[0], [a, b], tokenizer.pad_token_id, "cpu")
    assert abs(la - lb) > 1e-3
    # and the difference is exactly the first token's log-prob difference
    first = naive_logp(models[0], a.prompt_ids, a.response_ids[:1]) - naive_logp(
        models[0], b.prompt_ids, b.response_ids[:1]
    )
    rest = naive_logp(
        models[0], a.prompt_ids + a.response_ids[:1], a.response_ids[1:]
    ) - naive_logp(models[0], b.prompt_ids + b.response_ids[:1], b.response_ids[1:])
    assert la - lb == pytest.approx(first + rest, abs=1e-4)


def candidates(n=6):
    rows = []
    for i, y in enumerate(RESPONSES[:n]):
        rows.append({"prompt_id": "p1", "lang": "de", "instruction": "Nenne drei Früchte.",
                     "scoring_prompt": "Please answer ... German\n\nName three fruits.",
                     "sample_idx": i, "response": y, "finish_reason": "stop"})  # fmt: skip
    return Dataset.from_list(rows)


def test_score_columns_and_reward(models, tiny_pair, tokenizer):
    policy, reference = tiny_pair
    cfg = ScoringConfig(beta=0.5, token_budget=300)
    out = score(candidates(), str(policy), str(reference), cfg)
    enc = ChatEncoder(tokenizer)
    for row in out:
        e = enc.encode(row["scoring_prompt"], row["response"])
        lp = naive_logp(models[0], e.prompt_ids, e.response_ids)
        lr = naive_logp(models[1], e.prompt_ids, e.response_ids)
        assert row["response_tokens"] == len(e.response_ids)
        assert row["logp_policy"] == pytest.approx(lp, abs=1e-4)
        assert row["logp_ref"] == pytest.approx(lr, abs=1e-4)
        assert row["reward"] == pytest.approx(0.5 * (lp - lr), abs=1e-4)
        assert row["reward_mean"] == pytest.approx(row["reward"] / row["response_tokens"])
        assert not math.isclose(lp, lr)  # the pair really differs


def test_mismatched_tokenizers_refused(tiny_pair, tmp_path):
    from icr_data.stages.tiny import build_model, build_tokenizer

    other_tok = build_tokenizer(["completely different corpus text"] * 3, vocab_size=300)
    other = tmp_path / "other"
    build_model(other_tok, seed=3).save_pretrained(other)
    other_tok.save_pretrained(other)
    with pytest.raises(ModelError, match="different tokenizers"):
        score(candidates(2), str(tiny_pair[0]), str(other), ScoringConfig())


def test_token_budget_batches():
    from icr_data.stages.score import ScoreStats, plan_batches

    lengths = [10, 50, 20, 50, 5, 30]
    assert plan_batches(lengths, token_budget=100, max_batch_size=8) == [[1, 3], [5, 2, 0], [4]]
    assert plan_batches(lengths, token_budget=100, max_batch_size=2) == [[1, 3], [5, 2], [0, 4]]
    assert plan_batches([500, 3], token_budget=100, max_batch_size=8) == [
        [0],
        [1],
    ]  # too long: alone
    assert all(len(b) == 1 for b in plan_batches(lengths, token_budget=1, max_batch_size=8))
    stats = ScoreStats(tokens=75, padded_tokens=100, seconds=0.5)
    assert stats.padding_waste == pytest.approx(0.25) and stats.tokens_per_s == pytest.approx(150)


def test_stats_count_real_and_padded_tokens(models, tokenizer):
    from icr_data.stages.score import ScoreStats

    enc = ChatEncoder(tokenizer)
    rows = [enc.encode("Hi", y) for y in RESPONSES]
    stats = ScoreStats()
    sequence_logps(models[0], rows, tokenizer.pad_token_id, "cpu", token_budget=10_000, stats=stats)
    lengths = [len(r.prompt_ids) + len(r.response_ids) for r in rows]
    assert stats.rows == len(rows) and stats.tokens == sum(lengths)
    assert stats.padded_tokens == len(rows) * max(lengths) and stats.batches == 1
    assert stats.response_tokens == sum(len(r.response_ids) for r in rows)
