"""Check a reward before spending compute: how well an implicit reward ranks labelled pairs.

    icr-data check-reward --policy P --reference R --pairs FILE [--mode cross_lingual|native]

FILE (JSONL, Parquet or a `datasets` folder) holds labelled pairs, one row per (prompt_id, lang):
`prompt_id, lang, instruction, chosen, rejected`, with the English row of every prompt (the
scoring source in cross-lingual mode), e.g. a translated preference benchmark. Each response is
scored exactly as a build scores candidates (score.py); a pair counts as ranked right when
reward(chosen) > reward(rejected). Per language: accuracy with a 95% Wilson interval, ties, the
mean margin, and how accuracy moves with the length difference of chosen and rejected.
"""

from __future__ import annotations

import math
from pathlib import Path

from datasets import Dataset

from icr_data.base.config import ScoringConfig
from icr_data.base.languages import scoring_prompt
from icr_data.stages.agreement import mode_agreement, wilson
from icr_data.stages.prompts import PromptError, check_rows, read_rows

LENGTH_BINS = (("chosen shorter", -math.inf, -0.2), ("similar", -0.2, 0.2),
               ("chosen longer", 0.2, math.inf))  # fmt: skip
"""Relative length difference (len(chosen) - len(rejected)) / max(len) in characters."""


def load_labelled(path: str | Path, mode: str = "cross_lingual") -> list[dict]:
    """Labelled pairs, validated; errors name the file and row."""
    source = str(path)
    if not Path(source).exists():
        raise PromptError(f"--pairs file not found: {source}")
    rows = read_rows(source)
    check_rows(rows, source)
    for n, r in enumerate(rows, 1):
        where = f"{source}: row {n} (prompt_id {r['prompt_id']}, {r['lang']})"
        for key in ("chosen", "rejected"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise PromptError(f"{where}: '{key}' must be a non-empty string")
        if r["chosen"] == r["rejected"]:
            raise PromptError(f"{where}: chosen and rejected are identical")
    if mode == "cross_lingual":
        require_english(rows, source)
    if not rows:
        raise PromptError(f"{source}: no labelled pairs")
    return rows


def require_english(rows: list[dict], source: str) -> None:
    """Cross-lingual scoring shows the English instruction: every prompt needs its English row."""
    english = {r["prompt_id"] for r in rows if r["lang"] == "en"}
    for n, r in enumerate(rows, 1):
        if r["prompt_id"] not in english:
            raise PromptError(
                f"{source}: row {n}: prompt_id {r['prompt_id']} ({r['lang']}) has no English "
                "row; cross-lingual scoring shows the reward the English instruction"
            )


def summarize(rows: list[dict], margins: list[float]) -> dict:
    """Per-language accuracy, interval, ties, mean margin and accuracy by length difference."""
    import polars as pl

    df = pl.DataFrame({
        "lang": [r["lang"] for r in rows],
        "margin": margins,
        "len_diff": [(len(r["chosen"]) - len(r["rejected"])) / max(len(r["chosen"]), len(r["rejected"]))
                     for r in rows],
    }).with_columns(
        right=pl.col("margin") > 0,
        tie=pl.col("margin") == 0,
        bin=pl.col("len_diff").cut([-0.2, 0.2], labels=[b[0] for b in LENGTH_BINS], left_closed=True),
    )  # fmt: skip
    out: dict = {}
    order = list(dict.fromkeys(r["lang"] for r in rows))
    for lang in order:
        d = df.filter(pl.col("lang") == lang)
        n, k = d.height, int(d["right"].sum())
        by_len = {}
        for name, *_ in LENGTH_BINS:
            b = d.filter(pl.col("bin") == name)
            by_len[name] = {"pairs": b.height,
                            "accuracy": float(b["right"].mean()) if b.height else None}  # fmt: skip
        corr = d.select(pl.corr("len_diff", "margin")).item() if n > 2 else None
        lo, hi = wilson(k, n)
        out[lang] = {
            "pairs": n,
            "accuracy": k / n,
            "ci95": [lo, hi],
            "ties": int(d["tie"].sum()),
            "mean_margin": float(d["margin"].mean()),
            "by_length_difference": by_len,
            "length_margin_corr": None if corr is None or math.isnan(corr) else float(corr),
            "includes_chance": lo <= 0.5 <= hi,
        }
    return out


def check_reward(
    policy: str, reference: str, pairs: str | Path, scoring: ScoringConfig,
    chat_template: str | None = None, console=None, progress=None, agreement: bool = False,
) -> dict:  # fmt: skip
    """Score every labelled pair under the implicit reward; return the report (see summarize).
    The responses are scored by the build's own log-prob stages, in memory (nothing to resume).
    With `agreement`, they are scored in the other mode too (native if cross-lingual, and back)
    and the report gains, per language, the Kendall tau per prompt between the two rewards."""
    from icr_data.commands import prepare
    from icr_data.commands.score_phase import score_candidates
    from icr_data.stages import models

    rows = load_labelled(pairs, scoring.mode)
    found = prepare.resolve_models({"--policy": policy, "--reference": reference}, console)
    paths = {"policy": found["--policy"], "reference": found["--reference"]}
    english = {r["prompt_id"]: r["instruction"] for r in rows if r["lang"] == "en"}
    cands = Dataset.from_list([
        {"prompt_id": r["prompt_id"], "lang": r["lang"], "instruction": r["instruction"],
         "scoring_prompt": scoring_prompt(english.get(r["prompt_id"], ""), r["instruction"], r["lang"], scoring.mode),
         "sample_idx": i, "response": r[side], "finish_reason": "stop"}
        for r in rows for i, side in enumerate(("chosen", "rejected"))
    ])  # fmt: skip
    ids = {role: models.identity(spec, paths[role])
           for role, spec in (("policy", policy), ("reference", reference))}  # fmt: skip
    scored = score_candidates(cands, paths["policy"], paths["reference"], scoring, chat_template,
                              ids, console, progress)  # fmt: skip
    reward = scored["reward"]
    margins = [reward[2 * i] - reward[2 * i + 1] for i in range(len(rows))]
    modes = None
    if agreement:
        import dataclasses

        other = "native" if scoring.mode == "cross_lingual" else "cross_lingual"
        if other == "cross_lingual":
            require_english(rows, str(pairs))
        prompts = [scoring_prompt(english.get(p, ""), x, lang, other)
                   for p, x, lang in zip(cands["prompt_id"], cands["instruction"], cands["lang"])]  # fmt: skip
        again = score_candidates(cands.remove_columns("scoring_prompt").add_column("scoring_prompt", prompts),
                                 paths["policy"], paths["reference"], dataclasses.replace(scoring, mode=other),
                                 chat_template, ids, console, progress)  # fmt: skip
        modes = {"modes": [scoring.mode, other],
                 "languages": mode_agreement(cands.to_list(), reward, again["reward"])}  # fmt: skip
    return {
        "pairs_file": str(pairs),
        "mode": scoring.mode,
        "beta": scoring.beta,
        "models": ids,
        "languages": summarize(rows, margins),
        "agreement": modes,
    }
