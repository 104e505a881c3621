"""docs/extending.md's worked examples, run end to end: a scorer backend and a pairing rule on a
built version here; an export format (tests/test_export.py) and an eval judge (tests/test_eval.py)
where their fixtures live. Each is one class or function plus one registry line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from datasets import Dataset

from icr_data.base.registry import PAIRING_RULES, SCORERS
from icr_data.store import store

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture(scope="module")
def version(build_tiny, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("extending") / "store"
    return build_tiny(store_dir, "sampling.max_tokens=8", "prompts.limit=3",
                      "prompts.languages=[en, de]")  # fmt: skip


# -- a scorer backend (docs/extending.md, "A scorer backend") --------------------------------
class CharsScorer:
    """A toy log-prob backend: log p(y|x) is 0 under the policy and minus the characters of y
    under the reference, so the implicit reward is beta * len(y)."""

    outputs = ("logp", "response_tokens")

    def __init__(self, stage):  # the LogprobStage: role, model, device, token_budget ...
        self.sign = 0.0 if stage.role == "policy" else -1.0

    def score(self, rows: Dataset, advance=None) -> tuple[Dataset, dict | None]:
        out = Dataset.from_dict({"logp": [self.sign * len(y) for y in rows["response"]],
                                 "response_tokens": [len(y.split()) for y in rows["response"]]})  # fmt: skip
        if advance:
            advance(len(rows))
        return out, None  # no throughput figures

    def close(self) -> None:
        pass


@pytest.fixture
def chars_backend():
    SCORERS.register("chars", CharsScorer)
    yield
    SCORERS.unregister("chars")


def test_a_scorer_backend_rescoring_a_version(version, chars_backend):
    from icr_data.commands.derive import rescore

    v2, manifest = rescore(version, scoring={"backend": "chars", "beta": 0.5})
    cands = store.read_table(v2, "candidates")
    assert cands["reward"] == [0.5 * len(y) for y in cands["response"]]
    assert cands["response_tokens"] == [len(y.split()) for y in cands["response"]]
    assert manifest["recipe"]["scoring"]["backend"] == "chars"
    # the backend is part of the work's keys: the transformers log-probs were not reused
    parent = store.read_table(version, "candidates")
    assert cands["logp_ref"] != parent["logp_ref"]


def test_an_unknown_backend_is_one_line_naming_the_key():
    from icr_data.base.config import RecipeError, ScoringConfig, validate_scoring

    with pytest.raises(RecipeError, match=r"r.yaml: unknown scorer backend 'scoring.backend: "
                                          r"transfomers' \(did you mean 'transformers'\?\)"):  # fmt: skip
        validate_scoring(ScoringConfig(backend="transfomers"), "r.yaml")
    with pytest.raises(RecipeError, match="name it as 'scoring.judge: reward:MODEL'"):
        validate_scoring(ScoringConfig(backend="reward_model"), "r.yaml")


# -- a pairing rule (docs/extending.md, "A pairing rule") -------------------------------------
def second_best(adjusted, reward, cfg, rng):
    """the second best vs the worst"""
    order = sorted(range(len(adjusted)), key=lambda i: -adjusted[i])
    return [(order[1], order[-1])]


@pytest.fixture
def second_best_rule():
    from icr_data.pairing.pairing_rules import Rule

    PAIRING_RULES.register("second_best", Rule(second_best))
    yield
    PAIRING_RULES.unregister("second_best")


def test_a_pairing_rule_through_the_cli(version, second_best_rule, capsys):
    from icr_data import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["pair", str(version), "--strategy", "second_best", "--filters", ""])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    v2 = Path(out.strip().splitlines()[-1])
    manifest = store.read_manifest(v2)
    assert manifest["pairing"]["rule"] == "second_best"
    cands = store.read_table(version, "candidates").to_list()
    pairs = store.read_table(v2, "pairs").to_list()
    assert pairs
    for p in pairs:  # the rule saw the rewards after length control (reward - alpha * chars)
        alpha = manifest["pairing"]["alphas"][p["lang"]]
        mine = [c for c in cands if (c["prompt_id"], c["lang"]) == (p["prompt_id"], p["lang"])]
        order = sorted(mine, key=lambda c: -(c["reward"] - alpha * len(c["response"])))
        assert p["chosen_sample_idx"] == order[1]["sample_idx"]
        assert p["rejected_sample_idx"] == order[-1]["sample_idx"]


# -- the document names a test for each example ----------------------------------------------
def test_every_example_in_the_guide_names_a_test_that_exists():
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", DOC.read_text(encoding="utf-8"))
    assert len({f for f, _ in named}) >= 3 and len(named) >= 4
    root = DOC.parents[1]
    for file, test in named:
        assert f"def {test}(" in (root / file).read_text(encoding="utf-8"), f"{file}::{test}"
