"""Build: run every stage of a recipe and write a new dataset version.

    icr-data build recipes/demo.yaml [--store DIR]

prompts -> generate (vLLM) -> score (policy and reference log-probs) -> pairs -> store + card.
Each stage's output is kept in memory as a datasets.Dataset and written into the version.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from contextlib import contextmanager

import polars as pl
from datasets import Dataset
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import icr_data
from icr_data import models, store
from icr_data.card import render_card
from icr_data.config import Recipe
from icr_data.generate import generate
from icr_data.languages import DIRECTIVE
from icr_data.pairs import PairStats, make_pairs
from icr_data.prompts import load_prompts
from icr_data.score import score

SCORING_CONVENTION = (
    "sum of log p over the assistant-turn tokens of the chat template's rendering of "
    "[user: scoring_prompt, assistant: response], prompt and response tokenized separately; "
    "first response token included"
)


@contextmanager
def _progress(console: Console):
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress


def margin_summary(
    pairs: Dataset, candidates: Dataset, prompts: Dataset, langs: list[str]
) -> tuple[dict, dict]:
    """Per-language counts and margin quantiles, computed with polars."""
    counts, margins = {}, {}
    p_df = pl.from_arrow(prompts.data.table).select("lang")
    c_df = pl.from_arrow(candidates.data.table).select("lang")
    m_df = pl.from_arrow(pairs.data.table).select("lang", "margin") if len(pairs) else None
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
    stats: PairStats,
    counts: dict,
    margins: dict,
    timings: dict,
    parent: str | None = None,
) -> dict:
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
            "beta": recipe.scoring.beta,
            "count_eot": recipe.scoring.count_eot,
            "directive": DIRECTIVE,
            "convention": SCORING_CONVENTION,
            "reward": "beta * (logp_policy - logp_ref)",
        },
        "pairing": {
            "rule": recipe.pairing.rule,
            "length_control": recipe.pairing.length_control,
            "length_unit": recipe.pairing.length_unit,
            "alpha_grid": {
                "min": 0.0,
                "max": recipe.pairing.alpha_max,
                "step": recipe.pairing.alpha_step,
            },
            "alphas": stats.alphas,
            "mean_length_diff": stats.mean_length_diff,
        },
        "counts": counts,
        "totals": {
            k: sum(c[k] for c in counts.values()) for k in ("prompts", "candidates", "pairs")
        },
        "drops": stats.drops,
        "margins": margins,
        "timings": timings,
        "hardware": {"machine": platform.machine(), "python": platform.python_version()},
    }


def build(recipe: Recipe, console: Console | None = None, version: str | None = None):
    """Run the recipe end to end; returns (version folder, manifest)."""
    console = console or Console(stderr=True)
    resolved = {
        role: models.resolve(getattr(recipe.models, role), role)
        for role in ("generator", "policy", "reference")
    }
    timings = {}
    prompts = load_prompts(recipe.prompts, recipe.scoring)
    langs = [lang for lang in recipe.prompts.languages if lang in set(prompts["lang"])]
    console.print(
        f"[bold]{recipe.dataset}[/]: {len(prompts)} prompts in {', '.join(langs)}; "
        f"{recipe.sampling.n} samples each with {recipe.sampling.backend}"
    )
    with _progress(console) as progress:
        t0 = time.perf_counter()
        task = progress.add_task("generate", total=len(prompts))
        candidates = generate(prompts, resolved["generator"], recipe.sampling,
                              advance=lambda k: progress.advance(task, k))  # fmt: skip
        timings["generate_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        tasks = {
            role: progress.add_task(f"score ({role})", total=len(candidates))
            for role in ("policy", "reference")
        }
        scored = score(candidates, resolved["policy"], resolved["reference"], recipe.scoring,
                       advance=lambda role, k: progress.advance(tasks[role], k))  # fmt: skip
        timings["score_s"] = round(time.perf_counter() - t0, 2)

    pairs, stats = make_pairs(scored, recipe.pairing)
    counts, margins = margin_summary(pairs, scored, prompts, langs)
    model_ids = {
        role: models.identity(getattr(recipe.models, role), path) for role, path in resolved.items()
    }
    manifest = make_manifest(recipe, model_ids, stats, counts, margins, timings)
    path = store.write_version(
        recipe.store,
        recipe.dataset,
        {"pairs": pairs, "candidates": scored},
        manifest,
        render_card,
        name=version,
    )
    return path, manifest
