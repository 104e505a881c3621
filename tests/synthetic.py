"""Synthetic versions for tests: a small candidates/pairs pair with known rewards, made through
the real pairing and manifest code, and a digest of a folder's files."""

import hashlib
from pathlib import Path

from datasets import Dataset

from icr_data.build import make_manifest, margin_summary
from icr_data.config import Recipe
from icr_data.pairs import PairingConfig, make_pairs


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
        recipe, ids, stats, counts, margins, {}
    )


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
