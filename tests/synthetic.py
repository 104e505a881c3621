"""Test helpers: synthetic versions (a small candidates/pairs pair with known rewards, made through
the real pairing and manifest code), a digest of a folder's files, and the tiny demo recipe with
the tiny model pair and small settings."""

import hashlib
from pathlib import Path

from datasets import Dataset

from icr_data.base.config import Recipe, load_recipe
from icr_data.commands.versioning import run_facts
from icr_data.pairing.pairs import PairingConfig, make_pairs
from icr_data.store.manifest import make_manifest, margin_summary


def tables(shift=0.0):
    """4 pairs and 12 candidates in en and de (rewards shifted by `shift`); and the manifest."""
    cands = []
    for lang in ("en", "de"):
        for pid in ("a", "b"):
            for i, r in enumerate([0.1, 0.7, 0.3]):
                cands.append({"prompt_id": pid, "lang": lang, "instruction": f"{pid}-{lang}",
                              "scoring_prompt": f"x {pid}", "sample_idx": i, "response": f"r{i}" * (i + 1),
                              "finish_reason": "stop", "response_tokens": i + 2, "logp_policy": -1.0,
                              "logp_ref": -1.0 - r - shift, "reward": r + shift})  # fmt: skip
    cands = Dataset.from_list(cands)
    pairs, stats = make_pairs(cands, PairingConfig())
    prompts = Dataset.from_list([{"lang": c["lang"]} for c in cands if c["sample_idx"] == 0])
    counts, margins = margin_summary(pairs, cands, prompts, ["en", "de"])
    recipe = Recipe(dataset="t", license="apache-2.0")
    recipe.prompts.source = "p.jsonl"
    ids = {r: {"name": r} for r in ("generator", "policy", "reference")}
    return {"pairs": pairs, "candidates": cands}, make_manifest(
        recipe, ids, run_facts(recipe, ids, stats, None), counts, margins, {}
    )


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo_tiny.yaml"


def overrides(store_dir, tiny_pair, **extra):
    """--set overrides: the tiny pair, transformers backend, 4 prompt_ids in en/de/ru, one per shard."""
    policy, reference = tiny_pair
    base = {
        "store": store_dir, "models.generator": policy, "models.policy": policy,
        "models.reference": reference, "sampling.backend": "transformers", "sampling.n": 2,
        "sampling.max_tokens": 12, "prompts.limit": 4, "shard_prompts": 1,
        "prompts.languages": "[en, de, ru]",
    }  # fmt: skip
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def recipe(store_dir, tiny_pair, **extra):
    return load_recipe(DEMO, overrides(store_dir, tiny_pair, **extra))


def write_synthetic(store_dir: Path) -> Path:
    """The synthetic version of `tables()` written as `t/v1` under `store_dir`."""
    from icr_data.store import store
    from icr_data.store.card import render_card

    tabs, manifest = tables()
    return store.write_version(store_dir, "t", tabs, manifest, render_card)


def cli_run(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `icr-data ARGS` run in this process."""
    import pytest

    from icr_data import cli

    with pytest.raises(SystemExit) as e:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def cli_exit(capsys, *args) -> tuple[int, str]:
    """(exit code, stderr) of `icr-data ARGS` run in this process."""
    code, _, err = cli_run(capsys, *args)
    return code, err


def model_configs(folder: Path, model: str, output_dir: Path, evals_store: Path) -> None:
    """folder/train.yaml and folder/eval.yaml: the tiny DPO config and the demo eval recipe with
    `model` as the model to train and the candidate to evaluate, their outputs where given."""
    import yaml

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    train = yaml.safe_load((recipes / "dpo_demo_tiny.yaml").read_text())
    train["data"]["source"] = str(recipes / train["data"]["source"])
    train.update(model=model, output_dir=str(output_dir))
    (folder / "train.yaml").write_text(yaml.safe_dump(train))
    ev = yaml.safe_load((recipes / "eval_demo.yaml").read_text())
    ev.update(store=str(evals_store), candidate=model, baseline="builtin:tiny-reference",
              judges=["llm:builtin:tiny-reference"])  # fmt: skip
    ev["prompts"]["source"] = str(recipes / ev["prompts"]["source"])
    (folder / "eval.yaml").write_text(yaml.safe_dump(ev))
