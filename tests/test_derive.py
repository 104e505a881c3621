"""Rescoring a version: a new version from the parent's candidates, with the parent recorded."""

import subprocess
import sys
from pathlib import Path

import pytest

from icr_data.commands.derive import DeriveError, repair, rescore
from icr_data.store import store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def v1(build_tiny, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("derive") / "store"
    return build_tiny(
        store_dir, "sampling.max_tokens=10", "prompts.limit=3", "prompts.languages=[en, fr]"
    )


def test_swapped_pair_negates_every_reward(v1, tiny_pair):
    policy, reference = tiny_pair
    v2, manifest = rescore(v1, policy=str(reference), reference=str(policy))
    a, b = store.read_table(v1, "candidates"), store.read_table(v2, "candidates")
    assert b["response"] == a["response"] and b["scoring_prompt"] == a["scoring_prompt"]
    assert b["reward"] == pytest.approx([-r for r in a["reward"]], abs=1e-9)
    assert b["logp_policy"] == pytest.approx(a["logp_ref"], abs=1e-9)
    assert manifest["parent"] == "demo-tiny/v1" and manifest["derived"]["operation"] == "rescore"
    assert (
        manifest["models"]["policy"]["sha256"]
        == store.read_manifest(v1)["models"]["reference"]["sha256"]
    )
    assert manifest["counts"]["fr"]["candidates"] == 9 and manifest["counts"]["fr"]["prompts"] == 3
    assert "from parent version `demo-tiny/v1`" in (v2 / "README.md").read_text()


def test_native_mode_uses_each_rows_own_instruction(v1):
    v2, manifest = rescore(v1, scoring={"mode": "native"})
    b = store.read_table(v2, "candidates")
    assert b["scoring_prompt"] == b["instruction"] and manifest["scoring"]["mode"] == "native"
    v3, _ = rescore(v2, scoring={"mode": "cross_lingual"})  # English rows restore the directive
    assert (
        store.read_table(v3, "candidates")["scoring_prompt"]
        == store.read_table(v1, "candidates")["scoring_prompt"]
    )


def test_cross_lingual_rescore_needs_english_rows(v1, tmp_path):
    from icr_data.store.card import render_card

    m = dict(store.read_manifest(v1))
    m.pop("textfeatures")  # v1's, of its own candidates
    fr_only = store.read_table(v1, "candidates").filter(lambda r: r["lang"] == "fr")
    m["totals"] = {**m["totals"], "candidates": len(fr_only)}
    v = store.write_version(
        tmp_path,
        "x",
        {"pairs": store.read_table(v1, "pairs"), "candidates": fr_only},
        m,
        render_card,
    )
    with pytest.raises(DeriveError, match="prompt_id demo-001 \\(fr\\) has no English candidates"):
        rescore(v)


def test_cli_rescore_with_beta(v1):
    r = subprocess.run([sys.executable, "-m", "icr_data.cli", "score", str(v1), "--beta", "0.5"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    v = Path(r.stdout.strip().splitlines()[-1])
    assert store.read_table(v, "candidates")["reward"] == pytest.approx(
        [0.5 * x for x in store.read_table(v1, "candidates")["reward"]], abs=1e-9
    )
    bad = subprocess.run([sys.executable, "-m", "icr_data.cli", "score", str(v1), "--mode", "english"],
                         capture_output=True, text=True)  # fmt: skip
    assert (
        bad.returncode == 2 and "--mode must be cross_lingual, native or translate_en" in bad.stderr
    )


def test_repair_reuses_candidates_and_records_parent(v1):
    from icr_data.commands.derive import repair

    v2, manifest = repair(v1, {"rule": "top_bottom", "k": 2, "filters": ["empty"]})
    a, b = store.read_table(v1, "candidates"), store.read_table(v2, "candidates")
    assert b.to_list() == a.to_list()  # nothing regenerated or rescored
    assert manifest["parent"] == "demo-tiny/v1" and manifest["derived"]["operation"] == "pair"
    assert manifest["pairing"]["rule"] == "top_bottom" and manifest["pairing"]["settings"]["k"] == 2
    pairs = store.read_table(v2, "pairs")
    assert len(pairs) == sum(f["pairs"] for f in manifest["funnel"].values())
    for p in pairs:
        assert p["margin"] == pytest.approx(p["chosen_reward"] - p["rejected_reward"])
    assert "| fr |" in (v2 / "README.md").read_text()


def test_repair_copies_the_candidate_files_and_pairs_as_the_whole_table_would(v1):
    """pair decodes only the columns pairing reads and copies the candidates' Parquet as it is:
    the new version's file has the parent's bytes, and its pairs are those of make_pairs on the
    whole table."""
    from icr_data.base.config import PairingConfig
    from icr_data.pairing.pairs import make_pairs

    pairing = {"rule": "max_min", "length_control": True}
    v2, manifest = repair(v1, pairing)
    (a,), (b,) = store.config_files(v1, "candidates"), store.config_files(v2, "candidates")
    assert a.name == b.name and a.read_bytes() == b.read_bytes() and not b.is_symlink()
    assert manifest["files"]["candidates"] == [f"data/candidates/{b.name}"]
    cfg = PairingConfig(**manifest["pairing"]["settings"])
    whole = store.read_table(v1, "candidates")
    expected, stats = make_pairs(whole, cfg)
    assert store.read_table(v2, "pairs").to_list() == expected.to_list() and len(expected)
    assert manifest["pairing"]["alphas"] == stats.alphas
    partial = store.read_table(v1, "candidates", ["lang", "reward"])
    assert partial.column_names == ["lang", "reward"]
    assert partial.to_dict() == whole.select_columns(["lang", "reward"]).to_dict()


def test_cli_pair_refuses_unknown_filter(v1):
    r = subprocess.run([sys.executable, "-m", "icr_data.cli", "pair", str(v1), "--filters", "truncted"],
                       capture_output=True, text=True)  # fmt: skip
    assert (
        r.returncode == 2
        and "unknown filter 'pairing.filters: truncted' (did you mean 'truncated'?)" in r.stderr
    )
    r = subprocess.run([sys.executable, "-m", "icr_data.cli", "pair", str(v1), "--strategy", "max_random"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        store.read_manifest(Path(r.stdout.strip().splitlines()[-1]))["pairing"]["rule"]
        == "max_random"
    )


KILL_AT_THIRD_SAVE = """
import os, signal, sys
from icr_data.store import shards
from icr_data.cli import main

real, calls = shards.WorkDir.save, []

def save(self, stage, key, ds, made_of):
    if stage == "logp":
        calls.append(key)
        if len(calls) == 3:  # the third shard's output is written, then the process is killed
            real(self, stage, key, ds, made_of)
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, stage, key, ds, made_of)

shards.WorkDir.save = save
main(sys.argv[1:])
"""


def test_rescore_killed_mid_run_resumes_to_the_same_version(build_tiny, tiny_pair, tmp_path):
    def built(name):
        return build_tiny(tmp_path / name, "sampling.max_tokens=10", "prompts.limit=4",
                          "prompts.languages=[en, fr]", "shard_prompts=1")  # fmt: skip

    # native scoring: new prompts for the fr rows, so every shard needs new log-probs (a swap of
    # policy and reference would need none: both passes are the build's, found by their content)
    swap = ["--mode", "native"]
    whole, _ = rescore(built("a"), scoring={"mode": "native"})

    v1 = built("b")
    args = [sys.executable, "-c", KILL_AT_THIRD_SAVE, "score", str(v1), *swap]
    killed = subprocess.run(args, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (v1.parent / "v2").exists()
    again = subprocess.run([sys.executable, "-m", "icr_data.cli", "score", str(v1), *swap],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "score (policy): 3 shard(s) finished earlier, skipped" in again.stderr
    resumed = Path(again.stdout.strip().splitlines()[-1])
    for config in ("candidates", "pairs"):
        a, b = (
            store.read_table(whole, config).to_list(),
            store.read_table(resumed, config).to_list(),
        )
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:  # the same shards scored in the same batches: equal to float rounding
                assert x[k] == (
                    pytest.approx(y[k], rel=1e-6) if isinstance(x[k], float) else y[k]
                ), k


def test_versions_record_no_local_path_and_still_rescore(v1, tmp_path):
    """Built from models in a temporary folder: manifest.json and the card name them portably
    (file names, content hashes); the hidden local file lets this machine rescore and re-pair."""
    from icr_data.commands.derive import repair
    from icr_data.commands.publish import local_paths

    v2, _ = rescore(v1, scoring={"beta": 0.5})
    v3, _ = repair(v2, {"rule": "max_random"})
    for v in (v1, v2, v3):
        for name in ("manifest.json", "README.md"):
            text = (v / name).read_text()
            assert local_paths(text) == [] and str(tmp_path.parent) not in text, (v, name)
        m = store.read_manifest(v)
        assert m["recipe"]["prompts"]["source"] == "demo_prompts.jsonl"
        assert m["sources"]["prompts"]["sha256"] == store.sha256_file(
            ROOT / "recipes" / "data" / "demo_prompts.jsonl"
        )
        assert Path(store.local_recipe(v)["models"]["policy"]).is_dir()
    assert store.read_table(v2, "candidates")["reward"] == pytest.approx(
        [0.5 * x for x in store.read_table(v1, "candidates")["reward"]], abs=1e-9
    )


def test_rescore_refuses_a_beta_that_makes_no_reward(v1):
    before = store.versions(v1.parent)
    with pytest.raises(DeriveError, match="'scoring.beta' must be a finite number > 0"):
        rescore(v1, scoring={"beta": 0.0})
    assert store.versions(v1.parent) == before  # nothing written


def test_pairing_again_the_same_way_is_said_and_if_changed_writes_nothing(v1, capsys):
    first, _ = repair(v1, {"rule": "top_bottom", "k": 2})
    r = subprocess.run([sys.executable, "-m", "icr_data.cli", "pair", str(v1), "--strategy",
                        "top_bottom", "--k", "2", "--if-changed"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{first.name} already holds this content: nothing written" in r.stderr
    assert Path(r.stdout.strip().splitlines()[-1]) == first
    assert store.versions(v1.parent)[-1] == first.name


def test_pairing_again_reuses_the_text_features_the_build_kept(v1, monkeypatch):
    """Every version carries what pairing computes from the texts (words, repetition, lengths,
    equal texts) beside its data, keyed by the candidates' content, the repetition settings and
    the code. A re-pairing uses them without touching the text (and its version carries them
    on); new repetition settings compute them again; either way the pairs are those of the
    whole table."""
    from icr_data.base.config import PairingConfig
    from icr_data.commands.versioning import TEXT_FEATURES, load_text_features
    from icr_data.pairing import pairs as pairs_module

    m1 = store.read_manifest(v1)
    recipe_pairing = PairingConfig(**m1["pairing"]["settings"])
    kept = load_text_features(v1, recipe_pairing)
    assert kept is not None and set(kept) == set(pairs_module.FEATURES)
    assert m1[TEXT_FEATURES]["file"].startswith("textfeatures/")
    assert (v1 / m1[TEXT_FEATURES]["file"]).is_file()
    whole = store.read_table(v1, "candidates")
    assert kept["chars"].tolist() == [len(t) for t in whole["response"]]
    assert kept["words"].tolist() == [len(t.split()) for t in whole["response"]]

    def never(*a, **k):
        raise AssertionError("the text features were computed again")

    pairing = {"rule": "top_bottom", "k": 2, "filters": ["empty", "duplicate", "repetition"]}
    cfg = PairingConfig(**{**vars(recipe_pairing), **pairing})
    expected, _ = pairs_module.make_pairs(whole, cfg)
    monkeypatch.setattr(pairs_module, "text_features", never)
    v2, manifest = repair(v1, pairing)
    assert manifest["pairing"]["settings"] == vars(cfg)
    assert store.read_table(v2, "pairs").to_list() == expected.to_list() and len(expected)
    assert load_text_features(v2, cfg) is not None  # the child carries them on
    # a copy of the version elsewhere (a download) pairs from what it carries, too
    import shutil

    copy = v1.parent.parent / "elsewhere" / v1.parent.name / "v1"
    shutil.copytree(v1, copy)
    v3, _ = repair(copy, pairing)
    assert store.read_table(v3, "pairs").to_list() == expected.to_list()
    with pytest.raises(AssertionError, match="computed again"):
        repair(v1, {**pairing, "repetition_max": 0.9})
