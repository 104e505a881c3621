"""The manifest of a dataset version: how it was made, in one JSON object (manifest.json).

    manifest = make_manifest(recipe, model_ids, facts, counts, margins, timings)

It records the recipe, the models (with content hashes), sampling, the scoring convention, the
pairing rule and its funnel, per-language counts and margin quantiles, the rounds of the method
this version belongs to, timings and the hardware. The card (card.py) is rendered from it.
What the stages found (the pairing funnel, agreement verdicts, the scoring convention) comes in
as `facts`, made by the command that ran them (commands/versioning.py): this module reads no
layer above the store.

Nothing in it names this machine: `portable` turns every absolute path (a prompts file, a
`train:/.../dpo_demo.yaml`, a model folder, the store) into its path relative to the recipe's
folder when it lies there, else its file or folder name; content hashes (`sources`, the models'
sha256) say which file it was. The recipe as loaded, absolute paths and all, is what a rescore or
an export needs on this machine: it goes to the version's hidden store.LOCAL_FILE, never published.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import platform
from pathlib import Path

import polars as pl
from datasets import Dataset

import icr_data
from icr_data.base.config import Recipe
from icr_data.base.languages import DIRECTIVE
from icr_data.store.store import portable, portable_path


def content_sha256(path: str | Path) -> str | None:
    """sha256 of a local file, or of a folder's files (relative name + each file's sha256, in
    sorted order); None for what is not local (a Hub id)."""
    p = Path(path).expanduser()
    if p.is_file():
        from icr_data.store.store import sha256_file

        return sha256_file(p)
    if p.is_dir():
        from icr_data.store.store import sha256_file

        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode())
        return h.hexdigest()
    return None


def sources(recipe: Recipe, recipe_dir: str | Path | None = None) -> dict:
    """The local inputs of a recipe by portable name and content hash (identity without paths)."""
    out = {}
    for key, value in (
        ("prompts", recipe.prompts.source),
        ("round.previous", recipe.round.previous),
    ):
        if value:
            out[key] = {"path": portable_path(value, recipe_dir), "sha256": content_sha256(value)}
    return out


def round_history(recipe: Recipe, model_ids: dict) -> list[dict]:
    """Per round: the generator, the reward pair and the training reference; earlier rounds come
    from the previous round's training record, with what that round trained."""
    earlier: list[dict] = []
    if recipe.round.previous:
        from icr_data.base.config import read_training_record

        record = read_training_record(recipe.round.previous)
        earlier = [dict(r) for r in record.get("rounds") or []]
        if not earlier:
            earlier = [{"round": recipe.round.index - 1}]
        earlier[-1]["trained"] = {k: record.get(k) for k in ("output_model", "start_model",
                                                               "reference", "data", "method")}  # fmt: skip
    current = {
        "round": recipe.round.index,
        "generator": model_ids.get("generator"),
        "reward": {"policy": model_ids.get("policy"), "reference": model_ids.get("reference")},
        "training_reference": model_ids.get("training_reference"),
    }
    return earlier + [current]


def margin_summary(
    pairs: Dataset, candidates: Dataset, prompts: Dataset, langs: list[str]
) -> tuple[dict, dict]:
    """Per-language counts and margin quantiles, computed with polars."""
    counts, margins = {}, {}
    # only the columns read are converted (a whole candidates table would be copied)
    p_df = pl.from_arrow(prompts.data.table.select(["lang"]))
    c_df = pl.from_arrow(candidates.data.table.select(["lang"]))
    m_df = pl.from_arrow(pairs.data.table.select(["lang", "margin"])) if len(pairs) else None
    for lang in langs:
        counts[lang] = {
            "prompts": p_df.filter(pl.col("lang") == lang).height,
            "candidates": c_df.filter(pl.col("lang") == lang).height,
            "pairs": 0,
        }
        q = {k: None for k in ("mean", "min", "q10", "q25", "median", "q75", "q90", "max")}
        if m_df is not None:
            m = m_df.filter(pl.col("lang") == lang)["margin"]
            counts[lang]["pairs"] = m.len()
            if m.len():
                q = {
                    "mean": m.mean(), "min": m.min(), "q10": m.quantile(0.1, "linear"),
                    "q25": m.quantile(0.25, "linear"), "median": m.median(),
                    "q75": m.quantile(0.75, "linear"), "q90": m.quantile(0.9, "linear"),
                    "max": m.max(),
                }  # fmt: skip
        margins[lang] = q
    return counts, margins


def make_manifest(
    recipe: Recipe,
    model_ids: dict,
    facts: dict,
    counts: dict,
    margins: dict,
    timings: dict,
    parent: str | None = None,
    skipped_english: dict[str, int] | None = None,
    rounds: list[dict] | None = None,
    recipe_dir: str | Path | None = None,
) -> dict:
    """The manifest, in portable form (see `portable`); with `recipe_dir` (the recipe's folder)
    paths inside it are kept relative to it. When that changed the recipe, the recipe as loaded
    rides along under store.LOCAL_KEY, which store.write_version moves to the hidden local file.
    `facts` (versioning.run_facts): funnel, alphas, length figures, judge and mode agreement,
    likely-noise verdicts, translation, scoring convention."""
    from icr_data.store.store import LOCAL_KEY

    if recipe_dir is None:  # set by whoever loaded the recipe from its file, where known
        recipe_dir = getattr(recipe, "recipe_dir", None)
    local = {"recipe": recipe.to_dict(), "recipe_dir": str(recipe_dir) if recipe_dir else None}
    manifest = portable(
        _manifest(recipe, model_ids, facts, counts, margins, timings, parent, skipped_english,
                  rounds),
        recipe_dir,
    )  # fmt: skip
    manifest["sources"] = sources(recipe, recipe_dir)
    if manifest["recipe"] != local["recipe"] or recipe_dir:
        manifest[LOCAL_KEY] = local
    return manifest


def _manifest(
    recipe: Recipe,
    model_ids: dict,
    facts: dict,
    counts: dict,
    margins: dict,
    timings: dict,
    parent: str | None,
    skipped_english: dict[str, int] | None,
    rounds: list[dict] | None,
) -> dict:
    funnel = {lang: dict(f) for lang, f in facts["funnel"].items()}
    for lang, n in (skipped_english or {}).items():
        funnel.setdefault(lang, dict(facts["empty_funnel"]))["prompts_skipped"] = {
            "no_english_row": n
        }
    return {
        "dataset": recipe.dataset,
        "version": None,
        "parent": parent,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "code_version": f"icr-data {icr_data.__version__}",
        "recipe": recipe.to_dict(),
        "models": model_ids,
        "sampling": {
            **recipe.sampling.__dict__,
            "seed_rule": "per prompt: sha256(f'{seed}\\x1f{prompt_id}\\x1f{lang}')[:4] & 0x7fffffff",
        },
        "scoring": {
            "mode": recipe.scoring.mode,
            "judge": recipe.scoring.judge,
            "translation": facts["translation"],
            "agreement": recipe.scoring.agreement,
            "mode_agreement": facts["mode_agreement"],
            "beta": recipe.scoring.beta,
            "count_eot": recipe.scoring.count_eot,
            "directive": DIRECTIVE,
            "convention": facts["convention"],
            "stability": facts.get("stability"),
            "reward": "beta * (logp_policy - logp_ref)",
        },
        "pairing": {
            "rule": recipe.pairing.rule,
            "selection": "paper-exact pairing (the research code's max/min, no filters)"
            if recipe.pairing.paper_exact
            else "filtered (candidate and pair filters, each drop counted)",
            "length_control": recipe.pairing.length_control,
            "length_unit": recipe.pairing.length_unit,
            "alpha_grid": {
                "min": 0.0,
                "max": recipe.pairing.alpha_max,
                "step": recipe.pairing.alpha_step,
            },
            "alphas": facts["alphas"],
            "judge_agreement": facts["judge_agreement"],
            "mean_length_diff": facts["mean_length_diff"],
            "length_margin_corr": facts["length_margin_corr"],
            "settings": dataclasses.asdict(recipe.pairing),
        },
        "training": {
            "reference": model_ids.get("training_reference"),
            "prompt": "the native-language instruction (the pairs' prompt column)",
        },
        "rounds": rounds if rounds is not None else round_history(recipe, model_ids),
        "counts": counts,
        "totals": {
            k: sum(c[k] for c in counts.values()) for k in ("prompts", "candidates", "pairs")
        },
        "funnel": funnel,
        "likely_noise": facts["likely_noise"],
        "margins": margins,
        "timings": timings,
        "hardware": hardware(),
    }


def hardware() -> dict:
    """The machine that wrote the version. torch is asked only when this process loaded it (a
    build, a rescore): a re-pairing never does, and importing it would cost seconds."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from icr_data.base.files import cores

    torch = sys.modules.get("torch")
    if torch is not None:
        torch_version, threads = torch.__version__, torch.get_num_threads()
    else:
        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = None
        threads = cores()
    out = {"machine": platform.machine(), "python": platform.python_version(),
           "torch": torch_version, "cpu_threads": threads, "cpu": _cpu()}  # fmt: skip
    if torch is not None and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _cpu() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor()
