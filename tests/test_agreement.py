"""Can non-English rewards be trusted? Mode agreement in builds, the judge's interval, the verdict."""

import math
import random
import statistics

import pytest
from datasets import Dataset
from rich.console import Console

from icr_data.base.config import RecipeError, ScoringConfig, validate_scoring
from icr_data.commands import reports
from icr_data.commands.inspection import inspect_version
from icr_data.stages.agreement import candidate_agreement, judge_figures, noise_verdicts
from icr_data.store import store


def tau_by_definition(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a written out: (concordant - discordant) / all pairs of items."""
    concordant = discordant = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            s = (a[i] - a[j]) * (b[i] - b[j])
            concordant += s > 0
            discordant += s < 0
    return (concordant - discordant) / (len(a) * (len(a) - 1) / 2)


def figures_by_definition(cands) -> dict:
    """Per language: [tau per prompt] from the stored reward and reward_native columns."""
    groups: dict = {}
    for c in cands:
        g = groups.setdefault(c["lang"], {}).setdefault(c["prompt_id"], ([], []))
        g[0].append(c["reward"])
        g[1].append(c["reward_native"])
    return {lang: [tau_by_definition(a, b) for a, b in g.values() if len(a) > 1]
            for lang, g in groups.items()}  # fmt: skip


@pytest.fixture(scope="module")
def agreed(build_tiny, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("agreement") / "store"
    v = build_tiny(store_dir, "sampling.max_tokens=8", "prompts.limit=4",
                   "prompts.languages=[en, de, ru]", "scoring.agreement=native")  # fmt: skip
    return store_dir, v


def test_manifest_figures_equal_a_recomputation_from_the_stored_rewards(agreed):
    _, v = agreed
    cands = store.read_table(v, "candidates")
    m = store.read_manifest(v)
    assert m["scoring"]["agreement"] == "native"
    figures = m["scoring"]["mode_agreement"]
    assert figures["compared"] == ["cross_lingual", "native"]
    for lang, taus in figures_by_definition(cands).items():
        got = figures["languages"][lang]
        mean, sd = statistics.fmean(taus), statistics.stdev(taus)
        half = 1.96 * sd / math.sqrt(len(taus))
        assert got["prompts"] == len(taus) == 4
        assert got["mean_tau"] == pytest.approx(mean, abs=1e-9)
        assert got["sd_tau"] == pytest.approx(sd, abs=1e-9)
        assert got["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-9)
        assert got["likely_noise"] == (mean - half <= 0)  # the documented rule
        assert (lang in m["likely_noise"]["languages"]) == got["likely_noise"]
    # the native pass is work of its own: other scoring prompts, other log-probs (a key that
    # missed the prompts once reused the cross-lingual pass, and every tau came out 1)
    for c in cands:
        if c["lang"] == "en":
            assert c["reward_native"] == pytest.approx(c["reward"], abs=1e-5)
        else:
            assert abs(c["reward_native"] - c["reward"]) > 1e-6, c
    work = v.parent / ".work"
    shards = len(list((work / "generate").glob("*.done")))
    # roles x (cross-lingual, native, stability sample: commands/stability.py) x shards
    assert shards and len(list((work / "logp").glob("*.done"))) == 2 * 3 * shards
    # English has no directive: the same scoring prompt in both passes, so the same order
    assert figures["languages"]["en"]["mean_tau"] == pytest.approx(1.0, abs=1e-9)
    assert "en" not in m["likely_noise"]["languages"]
    card = (v / "README.md").read_text()
    assert "## Can these labels be trusted?" in card and "| en | 4 | 1.000 | 0.000 |" in card
    out = Console(width=250, record=True)
    out.print(reports.summary_table(m))
    for part in reports.inspect_report(inspect_version(v)):  # icr-data inspect shows them too
        out.print(part)
    text = out.export_text()
    assert "tau vs native" in text and "can these labels be trusted?" in text


def test_native_rewards_equal_a_native_rescore(agreed):
    from icr_data.commands.derive import rescore

    _, v = agreed
    cands = store.read_table(v, "candidates")
    logp = v.parent / ".work" / "logp"
    built = sorted(logp.glob("*.parquet"))
    v2, manifest = rescore(v, scoring={"mode": "native"})
    # the score phase keys work by its input rows: the native rescore's passes are the build's
    # native passes (same samples, same prompts, same pair), found and not run again; new work
    # is only its stability sample (native rows in batches of 3), one per role and shard
    after = sorted(logp.glob("*.parquet"))
    assert set(built) < set(after) and len(after) == len(built) + 2
    assert manifest["scoring"]["stability"]["measured"]
    native = store.read_table(v2, "candidates")
    assert manifest["scoring"]["agreement"] is None and "reward_native" not in native.column_names
    key = ("prompt_id", "lang", "sample_idx")
    by = {tuple(r[k] for k in key): r["reward"] for r in native}
    assert cands["reward_native"] == pytest.approx(
        [by[tuple(c[k] for k in key)] for c in cands], abs=1e-5
    )
    # a cross-lingual rescore of the version recomputes reward_native under its reward pair
    v3, m3 = rescore(v)
    again = store.read_table(v3, "candidates")
    assert again["reward_native"] == pytest.approx(cands["reward_native"], abs=1e-5)
    assert m3["scoring"]["mode_agreement"]["languages"]["en"]["mean_tau"] == pytest.approx(1.0)
    assert sorted(logp.glob("*.parquet")) == after  # both passes of each role, reused
    assert again["reward"] == cands["reward"]  # the same work, read back: equal to the bit


def test_the_native_pass_is_keyed_work_that_a_rerun_skips(agreed, tiny_pair):
    from pathlib import Path

    from icr_data.base.config import load_recipe
    from icr_data.commands.build import build

    store_dir, v = agreed
    policy, reference = tiny_pair
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo_tiny.yaml"
    overrides = [f"store={store_dir}", f"models.generator={policy}", f"models.policy={policy}",
                 f"models.reference={reference}", "sampling.backend=transformers", "sampling.n=3",
                 "sampling.max_tokens=8", "prompts.limit=4", "prompts.languages=[en, de, ru]"]  # fmt: skip
    again = build(load_recipe(recipe, [*overrides, "scoring.agreement=native"]))
    shards = again.report["generate"]["skipped"]  # every shard was generated by the first build
    # every log-prob shard, cross-lingual, native and stability sample, was finished by the first
    # build
    assert again.report["policy"] == {"done": 0, "skipped": 3 * shards}
    assert again.report["reference"] == {"done": 0, "skipped": 3 * shards}
    assert store.read_table(again.path, "candidates").to_list() == (
        store.read_table(v, "candidates").to_list()
    )
    plain = build(load_recipe(recipe, overrides))  # without agreement: no native column
    assert "reward_native" not in store.read_table(plain.path, "candidates").column_names
    assert plain.manifest["scoring"]["mode_agreement"] is None


def test_a_planted_noise_reward_is_flagged_and_a_clean_one_is_not():
    rng = random.Random(0)
    rows = [{"prompt_id": f"p{i}", "lang": lang, "sample_idx": j}
            for lang in ("de", "sw") for i in range(20) for j in range(4)]  # fmt: skip
    reward = [rng.gauss(0, 1) for _ in rows]
    native = [2 * r + 1 if row["lang"] == "de" else rng.gauss(0, 1)  # sw: unrelated to reward
              for r, row in zip(reward, rows)]  # fmt: skip
    cands = Dataset.from_list(
        [{**r, "reward": x, "reward_native": y} for r, x, y in zip(rows, reward, native)]
    )
    modes = candidate_agreement(cands)
    assert modes["de"]["mean_tau"] == 1.0 and not modes["de"]["likely_noise"]
    assert modes["sw"]["likely_noise"] and modes["sw"]["ci95"][0] <= 0 <= modes["sw"]["ci95"][1]
    verdicts = noise_verdicts(modes, None)
    assert list(verdicts) == ["sw"] and "its pairs are likely noise" in verdicts["sw"][0]
    assert candidate_agreement(cands.remove_columns("reward_native")) is None


def test_a_judge_agreeing_at_chance_is_flagged():
    judge = judge_figures({"en": {"pairs": 30, "agree": 29, "rate": 29 / 30},
                           "de": {"pairs": 20, "agree": 11, "rate": 0.55},
                           "ru": {"pairs": 20, "agree": 2, "rate": 0.1}})  # fmt: skip
    assert not judge["en"]["likely_noise"] and judge["en"]["ci95"][0] > 0.5
    assert judge["de"]["includes_chance"] and judge["de"]["likely_noise"]
    assert not judge["ru"]["includes_chance"] and judge["ru"]["likely_noise"]  # below chance
    verdicts = noise_verdicts(None, judge, judge_name="reward:rm")
    assert sorted(verdicts) == ["de", "ru"]
    assert (
        "the judge reward:rm agrees with the implicit reward on 11 of 20 pairs" in verdicts["de"][0]
    )
    assert "includes chance (0.5): its pairs are likely noise" in verdicts["de"][0]
    assert "lies below chance (0.5)" in verdicts["ru"][0]


def test_agreement_setting_is_validated():
    with pytest.raises(RecipeError, match=r"'scoring.agreement' must be null or native, got 'x'"):
        validate_scoring(ScoringConfig(agreement="x"), "r.yaml")
    with pytest.raises(RecipeError, match="scoring.mode is native"):
        validate_scoring(ScoringConfig(agreement="native", mode="native"), "r.yaml")
    validate_scoring(ScoringConfig(agreement="native"), "r.yaml")


def test_a_reward_pair_without_information_is_flagged_in_the_summary(
    build_tiny, tiny_pair, tmp_path
):
    """policy = reference: every reward is 0, every tau 0: each language is flagged, and the
    build summary and the card say its pairs are likely noise."""
    policy = tiny_pair[0]
    v = build_tiny(tmp_path / "store", f"models.reference={policy}", "sampling.max_tokens=6",
                   "prompts.limit=3", "prompts.languages=[en, de]", "scoring.agreement=native",
                   "pairing.filters=[empty]")  # fmt: skip
    m = store.read_manifest(v)
    assert set(store.read_table(v, "candidates")["reward"]) == {0.0}
    assert sorted(m["likely_noise"]["languages"]) == ["de", "en"]
    out = Console(width=400, record=True)
    out.print(reports.summary_table(m))
    text = " ".join(out.export_text().split())
    assert (
        "de: cross_lingual and native rewards rank its samples with mean Kendall tau +0.00" in text
    )
    assert "not clearly above 0: its pairs are likely noise" in text
    assert "Languages whose pairs are likely noise" in (v / "README.md").read_text()
