"""Inspect versions: per-language margin statistics, the extreme pairs, a picture, history, diffs.
Over 400 lines: one job (reading versions back for a person), the plot and the diff included.

    icr-data inspect icr_store/demo/v1 [--lang de] [--top 5 | --bottom 5] [--plot margins.png]
    icr-data versions [--store icr_store] [demo]
    icr-data diff demo/v1 demo/v2 [--store icr_store]

Everything is computed with polars straight from the version's Parquet files (never through the
`datasets` cache, which can confuse two version folders of the same shape). The functions return
plain data (polars DataFrames, dicts) so tests can assert numbers; reports.py turns that data
into rich tables and terminal histograms, and `plot` here into a matplotlib PNG. (The module is
not called `inspect`, which would shadow the standard library's.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from icr_data.store import store
from icr_data.store.shards import digest

SORT_KEYS = ("margin", "length_diff", "chosen_reward", "rejected_reward")
MIN_STAT_PAIRS = 3
"""Fewer pairs than this in a language: no correlation or p10/p90 is reported (shown as -)."""
COUNT_FIELDS = ("prompts", "candidates", "pairs")
MODEL_FIELDS = ("name", "sha256", "revision")
_ABSENT = "(absent)"  # a recipe key one version has and the other does not


def message_text(col: str) -> pl.Expr:
    # Message lists in TRL's format: the last message is the turn that matters (the user's
    # instruction in `prompt`, the assistant's answer in `chosen`/`rejected`).
    return pl.col(col).list.last().struct.field("content")


def scan_pairs(version_dir: str | Path) -> pl.LazyFrame:
    """The version's pairs, lazily, with a stable `row` number (file order)."""
    return pl.scan_parquet(store.config_files(version_dir, "pairs")).with_row_index("row")


def length_unit(manifest: dict) -> str:
    """The unit the version's pairing measured lengths in, so correlations match the manifest."""
    return (manifest.get("pairing") or {}).get("length_unit") or "chars"


def numeric_view(lf: pl.LazyFrame, unit: str = "chars", lang: str | None = None) -> pl.DataFrame:
    """One row per pair without the texts: row, prompt_id, lang, rewards, margin, lengths.

    Only these columns are kept in memory; with unit "chars" the texts are read to count their
    characters (as pairs.py does with len(response)) and dropped straight away."""
    if unit not in ("chars", "tokens"):
        raise ValueError(f"length unit must be chars or tokens, got {unit!r}")
    if lang is not None:
        lf = lf.filter(pl.col("lang") == lang)
    if unit == "chars":
        lens = [message_text(c).str.len_chars().alias(f"{c}_len") for c in ("chosen", "rejected")]
    else:
        lens = [pl.col(f"{c}_tokens").alias(f"{c}_len") for c in ("chosen", "rejected")]
    cols = ["row", "prompt_id", "lang", "margin", "chosen_reward", "rejected_reward"]
    # Int64: len_chars gives UInt32, and chosen - rejected must be able to go below zero.
    return lf.select(*cols, *(e.cast(pl.Int64) for e in lens)).collect()


def language_stats(df: pl.DataFrame, off_target: dict | None = None) -> pl.DataFrame:
    """Per language: pairs, margin p10/p50/p90/mean, mean lengths, Pearson corr of
    (len chosen - len rejected) with margin, and the off-target rate the manifest recorded."""
    m = pl.col("margin")
    out = (
        df.lazy()
        .group_by("lang", maintain_order=True)
        .agg(
            pairs=pl.len(),
            margin_p10=m.quantile(0.1, "linear"),
            margin_p50=m.quantile(0.5, "linear"),
            margin_p90=m.quantile(0.9, "linear"),
            margin_mean=m.mean(),
            chosen_len=pl.col("chosen_len").mean(),
            rejected_len=pl.col("rejected_len").mean(),
            len_margin_corr=pl.corr(pl.col("chosen_len") - pl.col("rejected_len"), m),
        )
        .with_columns(pl.col("len_margin_corr").fill_nan(None))  # constant input: undefined
        .with_columns(  # too few pairs to mean anything: not reported
            pl.when(pl.col("pairs") >= MIN_STAT_PAIRS).then(pl.col(c)).otherwise(None).alias(c)
            for c in ("len_margin_corr", "margin_p10", "margin_p90")
        )
        .collect()
    )
    rates = [(off_target or {}).get(lang) for lang in out["lang"]]
    return out.with_columns(off_target_rate=pl.Series(rates, dtype=pl.Float64))


def why_no_pairs(funnel: dict | None) -> str:
    """Why a language ended with no pairs, in the funnel's words (its drop counts by reason)."""
    f = funnel or {}
    if not f.get("prompts") and "prompts_skipped" in f:
        return "prompts skipped: " + _reasons(f["prompts_skipped"])
    if not f.get("candidates"):
        return "no candidates"
    parts = [f"{label}: {_reasons(f[key])}" for key, label in
             (("dropped_candidates", "dropped candidates"), ("prompts_without_pair", "prompts without a pair"),
              ("dropped_pairs", "dropped pairs")) if f.get(key)]  # fmt: skip
    return "; ".join(parts) or "no reason recorded in the funnel"


def _reasons(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def zero_pair_languages(manifest: dict) -> dict[str, str]:
    """{language: why} for each language of the version's counts that has 0 pairs."""
    funnel = manifest.get("funnel") or {}
    return {lang: why_no_pairs(funnel.get(lang)) for lang, c in (manifest.get("counts") or {}).items()
            if not c.get("pairs")}  # fmt: skip


def off_target_rates(manifest: dict) -> dict[str, float | None]:
    return {lang: f.get("off_target_rate") for lang, f in (manifest.get("funnel") or {}).items()}


def select_pairs(
    df: pl.DataFrame, n: int, bottom: bool = False, sort: str = "margin"
) -> pl.DataFrame:
    """The n pairs with the highest (or, with bottom, lowest) sort key; ties in file order."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    key = pl.col("chosen_len") - pl.col("rejected_len") if sort == "length_diff" else pl.col(sort)
    # top_k rather than a full sort: O(rows) on a million pairs; `row` makes ties deterministic.
    picked = df.with_columns(_key=key).top_k(n, by=["_key", "row"], reverse=[bottom, True])
    return picked.sort(["_key", "row"], descending=[not bottom, False]).drop("_key")


def with_texts(lf: pl.LazyFrame, *selected: pl.DataFrame) -> list[pl.DataFrame]:
    """Each selection with its prompt, chosen and rejected text, in the selection's order.

    The texts are most of the file and Parquet cannot seek to a row, so all selections share
    one scan (filtered to their rows) instead of one scan each."""
    if not selected:
        return []
    rows = pl.concat([s["row"] for s in selected]).unique()
    texts = (
        lf.filter(pl.col("row").is_in(rows.implode()))
        .select("row", *(message_text(c).alias(c) for c in ("prompt", "chosen", "rejected")))
        .collect()
    )
    return [s.join(texts, on="row", how="left", maintain_order="left") for s in selected]


def margin_histogram(df: pl.DataFrame, bins: int = 24) -> dict:
    """Margin counts per language over shared bins (so languages line up): {edges, counts}.

    Bins are [lo + i*w, lo + (i+1)*w) with w = (max - min) / bins; the maximum joins the last
    bin, as in numpy.histogram."""
    lo, hi = df.select(lo=pl.col("margin").min(), hi=pl.col("margin").max()).row(0)
    if lo is None:
        return {"edges": [], "counts": {}}
    width = (hi - lo) / bins if hi > lo else 1.0
    idx = ((pl.col("margin") - lo) / width).floor().cast(pl.Int64).clip(0, bins - 1)
    grouped = df.group_by("lang", idx.alias("bin")).len()
    counts = {lang: [0] * bins for lang in df["lang"].unique(maintain_order=True)}
    for lang, b, k in grouped.iter_rows():
        counts[lang][b] = k
    return {"edges": [lo + width * i for i in range(bins + 1)], "counts": counts}


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@dataclass
class InspectReport:
    """What `icr-data inspect` shows of one version; reports.inspect_report draws it."""

    name: str
    """dataset/version, from the manifest."""
    unit: str
    """chars or tokens: the unit of the lengths."""
    bins: int
    df: pl.DataFrame
    """numeric_view of the (language's) pairs: no texts."""
    stats: pl.DataFrame
    """language_stats, with the manifest's off-target rates."""
    hist: dict
    """margin_histogram over `bins` bins shared by the languages."""
    views: list[tuple[str, pl.DataFrame]]
    """(title, pairs with their texts) for the top and bottom selections asked for."""
    no_pairs: dict[str, str] = dataclasses.field(default_factory=dict)
    """{language: why} for languages of the version with 0 pairs (rows of `stats` with 0)."""
    trust: dict = dataclasses.field(default_factory=dict)
    """From the manifest, where measured: `modes` (mode agreement per language), `judge` (the
    judge's agreement per language) and `noise` ({language: [why its pairs are likely noise]})."""
    stability: dict | None = None
    """The manifest's `scoring.stability` (a sample scored again in other batches), if any."""


def inspect_version(
    version_dir: str | Path, lang: str | None = None, unit: str | None = None,
    sort: str = "margin", top: int | None = None, bottom: int | None = None, bins: int = 24,
) -> InspectReport:  # fmt: skip
    """Statistics, histogram and extreme pairs of a version (of one language, with `lang`).

    `unit` defaults to the unit the version was paired in; without `top` and `bottom` the 3
    highest and 3 lowest pairs (by `sort`) are selected. A version without pairs (in `lang`) or
    whose Parquet files cannot be read is a StoreError naming it."""
    path = Path(version_dir)
    manifest = _manifest(path)
    unit = unit or length_unit(manifest)
    name = f"{manifest.get('dataset', path.parent.name)}/{manifest.get('version', path.name)}"
    if top is None and bottom is None:
        top = bottom = 3
    try:
        lf = scan_pairs(path)
        df = numeric_view(lf, unit, lang)
        zero = {k: v for k, v in zero_pair_languages(manifest).items() if lang in (None, k)}
        if df.is_empty():
            langs = ", ".join(manifest.get("counts") or {}) or "none"
            where = f" in language {lang!r} (languages: {langs})" if lang else ""
            why = "; ".join(f"{k}: {v}" for k, v in zero.items())
            raise store.StoreError(f"{name}: no pairs{where}" + (f" ({why})" if why else ""))
        stats = with_zero_rows(language_stats(df, off_target_rates(manifest)), zero,
                               list(manifest.get("counts") or {}))  # fmt: skip
        hist = margin_histogram(df, bins)
        picks = [(f"{end} {n} by {sort}", select_pairs(df, n, end == "bottom", sort))
                 for end, n in (("top", top), ("bottom", bottom)) if n]  # fmt: skip
        views = list(zip([t for t, _ in picks], with_texts(lf, *(s for _, s in picks))))
    except (pl.exceptions.PolarsError, OSError) as e:
        raise store.StoreError(f"{path}: cannot read pairs: {_first_line(e)}") from None
    return InspectReport(name, unit, bins, df, stats, hist, views, zero,
                         trust_figures(manifest, lang),
                         (manifest.get("scoring") or {}).get("stability"))  # fmt: skip


def trust_figures(manifest: dict, lang: str | None = None) -> dict:
    """The manifest's agreement figures and likely-noise verdicts (of one language, with `lang`);
    empty for a version that measured none."""
    modes = ((manifest.get("scoring") or {}).get("mode_agreement") or {}).get("languages") or {}
    judge = (manifest.get("pairing") or {}).get("judge_agreement") or {}
    noise = (manifest.get("likely_noise") or {}).get("languages") or {}
    out = {key: {k: v for k, v in d.items() if lang in (None, k)}
           for key, d in (("modes", modes), ("judge", judge), ("noise", noise))}  # fmt: skip
    return out if out["modes"] or out["judge"] else {}


def with_zero_rows(stats: pl.DataFrame, zero: dict[str, str], order: list[str]) -> pl.DataFrame:
    """`stats` plus a row with 0 pairs (and no statistics) for each language in `zero`, in the
    manifest's language order."""
    missing = [lang for lang in zero if lang not in set(stats["lang"])]
    if not missing:
        return stats
    rows = pl.DataFrame({"lang": missing, "pairs": [0] * len(missing)},
                        schema_overrides={"pairs": stats.schema["pairs"]})  # fmt: skip
    out = pl.concat([stats, rows], how="diagonal_relaxed")
    rank = {lang: i for i, lang in enumerate(order)}
    return out.sort(pl.col("lang").replace_strict(rank, default=len(rank)), maintain_order=True)


def recipe_digest(manifest: dict) -> str | None:
    """sha256 (12 hex) of the recorded recipe without `store`, which says where the version was
    written, not how it was made; a manifest's own `recipe_digest` wins if it has one."""
    if manifest.get("recipe_digest"):
        return manifest["recipe_digest"]
    recipe = manifest.get("recipe")
    if not isinstance(recipe, dict):
        return None
    return digest({k: v for k, v in recipe.items() if k != "store"})[:12]


def _manifest(version_dir: Path) -> dict:
    try:
        return store.read_manifest(version_dir)
    except store.StoreError as e:  # not JSON, not an object, unreadable: one line, named
        raise store.StoreError(f"{version_dir / 'manifest.json'}: unreadable ({e})") from None


def list_versions(store_dir: str | Path, dataset: str | None = None) -> list[dict]:
    """Every version of `dataset` (or of every dataset in the store), oldest first; fields a
    manifest lacks (older versions) are None, and a version whose manifest cannot be read has
    only its name and `error`."""
    root = Path(store_dir)
    if dataset is not None:
        names = [dataset]
    elif root.is_dir():
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and store.versions(p))
    else:
        names = []
    rows = []
    for name in names:
        found = store.versions(root / name)
        if not found:
            raise store.StoreError(f"no versions of {name!r} in {root}")
        for v in found:
            try:
                m = _manifest(root / name / v)
            except store.StoreError as e:  # listed as such; the other versions still are
                rows.append({"dataset": name, "version": v, "parent": None, "recipe_digest": None,
                             "created": None, "error": str(e), **dict.fromkeys(COUNT_FIELDS)})  # fmt: skip
                continue
            counts = m.get("counts") or {}
            summed = {k: sum(c.get(k, 0) for c in counts.values()) for k in COUNT_FIELDS}
            totals = m.get("totals") or (summed if counts else {})
            rows.append({"dataset": name, "version": v, "parent": m.get("parent"),
                         "recipe_digest": recipe_digest(m), "created": m.get("created"),
                         **{k: totals.get(k) for k in COUNT_FIELDS}})  # fmt: skip
    if not rows:
        raise store.StoreError(f"no dataset versions in {root}")
    return rows


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys: {"pairing": {"rule": "max_min"}} -> {"pairing.rule": ...}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs."""
    if len(a) == 0 or len(b) == 0:
        return None
    a, b = np.sort(a), np.sort(b)
    at = np.concatenate([a, b])  # the CDFs only jump at sample points
    cdf_a = np.searchsorted(a, at, side="right") / len(a)
    cdf_b = np.searchsorted(b, at, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def margin_shift(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """Per language (a's order, then b's new ones): n, mean and deltas (b - a) of the mean,
    median, p10 and p90 of the margin, and the KS statistic between a's and b's margins."""
    langs = list(dict.fromkeys([*a["lang"].unique(maintain_order=True), *b["lang"].unique(maintain_order=True)]))  # fmt: skip
    rows = []
    for lang in langs:
        x = a.filter(pl.col("lang") == lang)["margin"]
        y = b.filter(pl.col("lang") == lang)["margin"]
        row = {"lang": lang, "pairs_a": x.len(), "pairs_b": y.len(), "mean_a": x.mean(),
               "mean_b": y.mean()}  # fmt: skip
        for name, q in (("mean", None), ("median", 0.5), ("p10", 0.1), ("p90", 0.9)):
            va, vb = (s.mean() if q is None else s.quantile(q, "linear") for s in (x, y))
            row[f"{name}_delta"] = None if va is None or vb is None else vb - va
        row["ks"] = ks_statistic(x.to_numpy(), y.to_numpy())
        rows.append(row)
    return pl.DataFrame(rows, schema_overrides={"mean_a": pl.Float64, "mean_b": pl.Float64})


def diff_versions(version_a: str | Path, version_b: str | Path) -> dict:
    """What changed from version a to b: recipe keys, model identities, counts, margins."""
    ma, mb = _manifest(Path(version_a)), _manifest(Path(version_b))
    fa, fb = flatten(ma.get("recipe") or {}), flatten(mb.get("recipe") or {})
    recipe = [{"key": k, "old": fa.get(k, _ABSENT), "new": fb.get(k, _ABSENT)}
              for k in sorted(fa.keys() | fb.keys()) if fa.get(k, _ABSENT) != fb.get(k, _ABSENT)]  # fmt: skip
    models_a, models_b = ma.get("models") or {}, mb.get("models") or {}
    model_rows = []
    for role in dict.fromkeys([*models_a, *models_b]):
        ia, ib = models_a.get(role) or {}, models_b.get(role) or {}
        model_rows += [{"role": role, "field": f, "old": ia.get(f), "new": ib.get(f)}
                       for f in MODEL_FIELDS if ia.get(f) != ib.get(f)]  # fmt: skip
    ca, cb = ma.get("counts") or {}, mb.get("counts") or {}
    counts = {lang: {k: ((ca.get(lang) or {}).get(k), (cb.get(lang) or {}).get(k)) for k in COUNT_FIELDS}
              for lang in dict.fromkeys([*ca, *cb])}  # fmt: skip
    try:
        margins = [scan_pairs(v).select("lang", "margin").collect() for v in (version_a, version_b)]
    except (pl.exceptions.PolarsError, OSError) as e:
        raise store.StoreError(f"cannot read pairs: {_first_line(e)}") from None
    return {"a": f"{ma.get('dataset')}/{ma.get('version')}", "b": f"{mb.get('dataset')}/{mb.get('version')}",
            "recipe": recipe, "models": model_rows, "counts": counts,
            "margins": margin_shift(*margins)}  # fmt: skip


# The PNG (the tables are drawn in reports.py).


def plot(df: pl.DataFrame, hist: dict, path: str | Path, unit: str, title: str = "",
         max_points: int = 20_000) -> Path:  # fmt: skip
    """A PNG: margin histograms per language (the bins above) and reward vs length (a seeded
    sample of at most max_points pairs, so the plot's cost does not grow with the version)."""
    fig = figure(df, hist, unit, title, max_points)
    path = Path(path)
    store.refuse_inside_version(path, "--plot", "the PNG ")  # versions are immutable
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def figure(df: pl.DataFrame, hist: dict, unit: str, title: str = "", max_points: int = 20_000):
    """The matplotlib Figure `plot` writes (Agg: no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for lang, counts in hist["counts"].items():
        left.stairs(counts, hist["edges"], label=f"{lang} (n={sum(counts)})")
    left.set(xlabel="margin (chosen_reward - rejected_reward)", ylabel="pairs", title="margin")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.25 of a pair
    left.legend(fontsize="small")
    sample = df.sample(min(max_points, df.height), seed=0) if df.height else df
    for side, marker in (("chosen", "o"), ("rejected", "x")):
        right.scatter(sample[f"{side}_len"], sample[f"{side}_reward"], s=6, alpha=0.35,
                      marker=marker, label=side)  # fmt: skip
    right.set(xlabel=f"length ({unit})", ylabel="reward", title="reward vs length")
    right.legend(fontsize="small")
    fig.suptitle(title)
    return fig
