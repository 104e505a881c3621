"""Score stability (commands/stability.py): every build rescores a seeded sample of its candidates
in other batches and reports the largest |difference| in log-probs; above the bound, no version.

    pytest tests/test_stability.py

Builds are the tiny demo (recipes/demo_tiny.yaml) with the tiny random pair on the transformers
backend: 3 prompts x en/de/ru x 3 samples = 27 candidates, one shard per prompt_id.
"""

import hashlib
import math
import re

import pytest
from huggingface_hub import DatasetCard

from icr_data import cli
from icr_data.base.config import RecipeError, load_recipe
from icr_data.commands.build import build
from icr_data.commands.derive import repair, rescore
from icr_data.commands.stability import StabilityError, sample_size
from icr_data.stages import score as score_mod
from icr_data.store import store
from tests.synthetic import DEMO

SMALL = {"sampling.n": 3, "sampling.max_tokens": 12, "prompts.limit": 3,
         "prompts.languages": "[en, de, ru]", "shard_prompts": 1}  # fmt: skip


def recipe(tmp_path, tiny_pair, **extra):
    policy, reference = tiny_pair
    base = {"store": tmp_path / "store", "models.generator": policy, "models.policy": policy,
            "models.reference": reference, "sampling.backend": "transformers", **SMALL, **extra}  # fmt: skip
    return load_recipe(DEMO, [f"{k}={v}" for k, v in base.items()])


def expected_sample(cands, fraction=0.02, seed=0):
    """The rule as the docs state it, computed here from the candidates: per shard (a prompt_id
    here) of n_s of n, min(n_s, max(ceil(16 n_s / n), ceil(f n_s))) rows, the first by
    sha256(seed, prompt_id, lang, sample_idx); in that order, batches of 3."""
    n = len(cands)
    shards: dict[str, list[int]] = {}
    for i, p in enumerate(cands["prompt_id"]):
        shards.setdefault(p, []).append(i)
    out = []
    for rows in shards.values():
        k = min(len(rows), max(math.ceil(16 * len(rows) / n), math.ceil(fraction * len(rows))))

        def rank(i):
            c = cands[i]
            key = f"{seed}\x1f{c['prompt_id']}\x1f{c['lang']}\x1f{c['sample_idx']}"
            return hashlib.sha256(key.encode()).digest()

        out.append(sorted(rows, key=rank)[:k])
    return out


def test_sample_size_follows_the_rule():
    assert sample_size(9, 27, 0.02) == 6  # ceil(16 * 9 / 27)
    assert sample_size(1000, 100_000, 0.02) == 20  # 2% of the shard
    assert sample_size(5, 12, 0.02) == 5  # fewer than 16 in all: every one
    assert sample_size(100, 100, 0.5) == 50 and sample_size(100, 100, 0.0) == 0
    for sizes in ([9, 9, 9], [3, 100], [1] * 40, [700, 300], [5000] * 20):
        n = sum(sizes)
        got = sum(sample_size(s, n, 0.02) for s in sizes)
        assert got >= min(n, 16) and got >= 0.02 * n
        assert got <= max(16, math.ceil(0.02 * n)) + len(sizes)  # rounding up, shard by shard


def test_keys_are_validated(tmp_path, tiny_pair):
    for key, value, says in (("stability_bound", 0, "finite number > 0"),
                             ("stability_bound", ".inf", "finite number"),
                             ("stability_bound", ".nan", "finite number"),
                             ("stability_sample", 1.5, "fraction in \\[0, 1\\]"),
                             ("stability_sample", -0.1, "fraction in \\[0, 1\\]")):  # fmt: skip
        with pytest.raises(RecipeError, match=f"'scoring.{key}' must be a {says}"):
            recipe(tmp_path, tiny_pair, **{f"scoring.{key}": value})


def test_a_build_reports_its_score_stability(tmp_path, tiny_pair, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = build(recipe(tmp_path, tiny_pair))
    m, v1 = result.manifest, result.path
    s = m["scoring"]["stability"]
    cands = store.read_table(v1, "candidates")
    sample = expected_sample(cands)
    assert [len(x) for x in sample] == [6, 6, 6]  # 9 of 27 per shard: ceil(16 * 9 / 27)
    assert s["measured"] and s["rescored"] == 18 and s["candidates"] == 27
    assert s["bound"] == 1e-2 and s["batch_size"] == 3 and s["fraction"] == 0.02
    assert 0 <= s["max"] < s["bound"]
    assert s["max"] == max(s["max_abs_diff"].values())
    # the passes' throughput is the passes' own (27 rows); the rescoring is counted beside it
    for role in ("policy", "reference"):
        stats = m["timings"]["scoring_throughput"][role]
        assert stats["rows"] == 27 and stats["stability"]["rows"] == 18
        assert stats["stability"]["batches"] == 6  # 3 shards x 6 rows in batches of 3

    # the figure is what it says: the sample scored here in those batches, against the version
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    for path, column in ((tiny_pair[0], "logp_policy"), (tiny_pair[1], "logp_ref")):
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype="float32").eval()
        worst = 0.0
        for rows in sample:
            enc = score_mod.encode_candidates(cands.select(rows), tok, True)
            again = score_mod.sequence_logps(model, enc, tok.pad_token_id or 0, "cpu",
                                             batches=[j // 3 for j in range(len(rows))])  # fmt: skip
            worst = max(worst, *(abs(a - cands[column][i]) for a, i in zip(again, rows)))
        assert s["max_abs_diff"][column] == pytest.approx(worst, abs=1e-9)

    card = (v1 / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("Score stability"))
    assert f"max |Δ log-prob| {s['max']:.1e} nats over 18 rescored candidates of 27" in line
    assert line.endswith("; bound 0.01.")
    assert DatasetCard.load(v1 / "README.md").data.language == ["en", "de", "ru"]
    # inspect says it too, in one line (as the end of a build does)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["inspect", str(v1)])
    shown = capsys.readouterr().out
    assert e.value.code == 0
    assert (f"score stability: max |diff| {s['max']:.1e} nats over 18 of 27 candidates scored "
            "again in other batches (bound 0.01)") in " ".join(shown.split())  # fmt: skip

    # a rescore under the same pair finds the build's sample work (keyed by content): same figure
    path, child = rescore(v1, name="v2")
    assert child["scoring"]["stability"] == s
    # re-pairing keeps the scores, and so their figure
    _, paired = repair(v1, {"rule": "max_random"}, name="v3")
    assert paired["scoring"]["stability"] == s


def test_fewer_than_16_candidates_are_all_rescored(tmp_path, tiny_pair):
    m = build(recipe(tmp_path, tiny_pair, **{"prompts.limit": 2,
                                             "prompts.languages": "[en, de]"})).manifest  # fmt: skip
    s = m["scoring"]["stability"]
    assert s["candidates"] == 12 and s["rescored"] == 12 and 0 <= s["max"] < s["bound"]


def test_sample_zero_disables_it(tmp_path, tiny_pair):
    result = build(recipe(tmp_path, tiny_pair, **{"scoring.stability_sample": 0}))
    m = result.manifest
    assert m["scoring"]["stability"] == {"measured": False, "fraction": 0.0, "bound": 1e-2}
    assert "stability" not in m["timings"]["scoring_throughput"]["policy"]
    card = (result.path / "README.md").read_text()
    assert "Score stability (a sample scored again in other batches): not measured." in card


def test_a_scorer_that_depends_on_its_batch_fails_the_build(tmp_path, tiny_pair, monkeypatch,
                                                             capsys):  # fmt: skip
    """Noise that grows with a row's place in its batch: the main pass (batches of up to 64
    rows) and the sample (batches of 3) disagree by far more than the bound."""
    real = score_mod._batch_logps

    def by_position(model, rows, pad_id, device):
        import torch

        return real(model, rows, pad_id, device) + 0.05 * torch.arange(len(rows))

    monkeypatch.setattr(score_mod, "_batch_logps", by_position)
    r = recipe(tmp_path, tiny_pair)
    with pytest.raises(StabilityError) as e:
        build(r)
    msg = str(e.value)
    assert "\n" not in msg and "scoring.stability_bound 0.01" in msg and "no version" in msg
    figure = float(re.search(r"by up to (\S+) nats", msg).group(1))
    assert figure >= 0.05  # at least one row moved a whole step of the noise
    assert not (tmp_path / "store" / "demo-tiny" / "v1").exists()

    # the CLI says it in one line, exit 2, still writing nothing
    args = ["build", str(DEMO)] + [a for k, v in {
        "store": tmp_path / "store", "models.generator": tiny_pair[0],
        "models.policy": tiny_pair[0], "models.reference": tiny_pair[1],
        "sampling.backend": "transformers", **SMALL}.items() for a in ("--set", f"{k}={v}")]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        cli.main(args)
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert code.value.code == 2 and len(err) == 1 and f"{figure:.2e} nats" in err[0]
    assert store.versions(tmp_path / "store" / "demo-tiny") == []

    # the work is kept: a larger bound writes the version and recomputes nothing
    result = build(recipe(tmp_path, tiny_pair, **{"scoring.stability_bound": 10}))
    assert result.report["policy"]["done"] == 0 and result.report["reference"]["done"] == 0
    s = result.manifest["scoring"]["stability"]
    assert s["max"] == pytest.approx(figure, rel=1e-2) and s["bound"] == 10
