"""What the web view reads from a store: versions by name, the store's listing, a version's
dashboard figures, the diff of two versions and an eval record's rows. Pairs and prompts are in
pairs_query.py. Plain data out (dicts, lists); app.py renders it.

    root = Path("icr_store")
    path, manifest = open_version(root, "demo", "v1")   # NotFound, or Damaged naming the file
    figures = dashboard(path, manifest)

Every version is named by `dataset` and `vN` and checked to lie inside the store before anything
is read (store.check_dataset_name / check_version_name / inside): a name such as `..` or a path
is NotFound, never a read outside the store. Every opened version first passes the integrity
module's cheap checks (files present, Parquet footers readable, row counts): a damaged one is
Damaged, whose message names the file. Only a version's manifest and Parquet files are read:
never its .local.json (this machine's paths), nor anything from a Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from icr_data.base.errors import IcrError
from icr_data.commands import inspection as ins
from icr_data.store import integrity, store

HIST_BINS = 24
RECORD_KINDS = ("eval", "reward_check")
"""Kinds of version listed with the eval records (evaluation.list_evals), not as datasets."""
SCATTER_POINTS = 400
"""At most this many candidates per language in a reward-vs-length scatter (a seeded sample)."""


class ViewError(IcrError):
    """A request the view cannot answer; `status` is its HTTP status."""

    status = 400


class NotFound(ViewError):
    status = 404


class Forbidden(ViewError):
    status = 403


class Damaged(ViewError):
    """A version whose files do not match its manifest: the first problem names the file."""

    status = 500

    def __init__(self, problems: list[str]):
        super().__init__(problems[0])
        self.problems = problems


def version_dir(root: Path, dataset: str, version: str) -> Path:
    """The folder of `dataset/version` in the store, or NotFound (a bad name included)."""
    try:
        store.check_dataset_name(dataset)
        store.check_version_name(version)
        path = store.inside(root / dataset / version, root, "version")
    except store.StoreError:
        raise NotFound(f"no version {dataset}/{version} in this store") from None
    if not (path / "manifest.json").is_file():
        raise NotFound(f"no version {dataset}/{version} in this store")
    return path


def parse_ref(ref: str, option: str) -> tuple[str, str]:
    """'dataset/vN' -> (dataset, vN); anything else (a path, more parts) is NotFound."""
    parts = (ref or "").split("/")
    if len(parts) != 2 or not all(parts):
        raise NotFound(f"{option}: {ref!r} is not dataset/vN of this store")
    return parts[0], parts[1]


def open_version(root: Path, dataset: str, version: str) -> tuple[Path, dict]:
    """A version's folder and manifest (a plain dict: templates look keys up, and a missing
    one is no error there), after the cheap integrity checks."""
    path = version_dir(root, dataset, version)
    problems = integrity.check(path, full=False)
    if problems:
        raise Damaged(problems)
    return path, dict(store.read_manifest(path))


# ------------------------------------------------------------------------------- the store page
def store_summary(root: Path) -> dict:
    """Every version (inspection.list_versions) with its kind and counts per language, and the
    eval records (evaluation.list_evals); problems reading them as `errors`, not failures."""
    from icr_data.commands.evaluation import list_evals

    errors = []
    try:
        rows = ins.list_versions(root)
    except store.StoreError:  # an empty store
        rows = []
    for r in rows:
        r["kind"], r["langs"] = "data", {}
        if r.get("error"):
            errors.append(r["error"])
            continue
        try:
            m = store.read_manifest(root / r["dataset"] / r["version"])
        except store.StoreError as e:
            errors.append(str(e))
            continue
        r["kind"] = m.get("kind") or "data"
        r["langs"] = (m.get("counts") or {}) if r["kind"] == "data" else {}
    try:
        evals = list_evals(root)
    except (IcrError, ValueError, KeyError, TypeError) as e:  # a damaged record's manifest
        evals, errors = [], [*errors, f"eval records cannot be listed: {e}"]
    for e in evals:
        e["href"] = "/v/" + e["record"]
        lin = e["data"].split("/")
        e["data_href"] = "/v/" + e["data"] if len(lin) == 2 and lin[1][:1] == "v" else None
    datasets = [r for r in rows if r["kind"] not in RECORD_KINDS]
    return {"versions": datasets, "evals": evals, "errors": errors}


# ---------------------------------------------------------------------------- the version page
def funnel_rows(manifest: dict) -> list[dict]:
    """Per language: prompts -> candidates -> kept -> pairs, the drop reasons by stage, the
    off-target rate, alpha and the margin mean and median (what the build summary prints)."""
    funnel = manifest.get("funnel") or {}
    alphas = (manifest.get("pairing") or {}).get("alphas") or {}
    margins = manifest.get("margins") or {}
    out = []
    for lang, c in (manifest.get("counts") or {}).items():
        f = funnel.get(lang) or {}
        q = margins.get(lang) or {}
        out.append({
            "lang": lang, "prompts": c.get("prompts"), "candidates": c.get("candidates"),
            "kept": f.get("kept_candidates"), "pairs": c.get("pairs"),
            "dropped_candidates": f.get("dropped_candidates") or {},
            "prompts_without_pair": f.get("prompts_without_pair") or {},
            "dropped_pairs": f.get("dropped_pairs") or {},
            "off_target_rate": f.get("off_target_rate"), "alpha": alphas.get(lang),
            "margin_mean": q.get("mean"), "margin_median": q.get("median"),
        })  # fmt: skip
    return out


def margins_frame(path: Path) -> pl.DataFrame:
    """lang and margin of every pair (two columns read, nothing else)."""
    try:
        return ins.scan_pairs(path).select("lang", "margin").collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise Damaged([f"{path / 'data' / 'pairs'}: cannot be read: {e}"]) from None


def candidate_lengths(path: Path, manifest: dict, columns: list[str]) -> pl.LazyFrame:
    """The candidates' `columns` plus `length` in the unit the version paired in: tokens, or
    characters from the text-features sidecar (one integer per candidate, no text read) when it
    matches the candidates, else counted from the responses."""
    files = store.config_files(path, "candidates")
    lf = pl.scan_parquet(files)
    if ins.length_unit(manifest) == "tokens":
        return lf.select(*columns, length=pl.col("response_tokens"))
    side = manifest.get("textfeatures")
    names = [f.name for f in files]
    if (isinstance(side, dict) and side.get("file") and side.get("candidates") == names
            and _rows([path / side["file"]]) == _rows(files)):  # fmt: skip
        chars = pl.scan_parquet(path / side["file"]).select(length=pl.col("chars"))
        return pl.concat([lf.select(*columns), chars], how="horizontal")
    return lf.select(*columns, length=pl.col("response").str.len_chars().cast(pl.Int64))


def _rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in files)


def reward_length(path: Path, manifest: dict, points: int = SCATTER_POINTS) -> dict:
    """Per language: a seeded sample of (length, reward) of its candidates, their mean length
    and reward, alpha, and the manifest's mean length differences and length-margin correlations
    before (alpha 0) and after (the chosen alpha)."""
    pairing = manifest.get("pairing") or {}
    try:
        df = candidate_lengths(path, manifest, ["lang", "reward"]).collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise Damaged([f"{path / 'data' / 'candidates'}: cannot be read: {e}"]) from None
    out = {}
    for lang in manifest.get("counts") or {}:
        mine = df.filter(pl.col("lang") == lang).drop_nulls(["reward", "length"])
        if mine.is_empty():
            continue
        sample = mine.sample(min(points, mine.height), seed=0)
        out[lang] = {
            "points": list(zip(sample["length"].to_list(), sample["reward"].to_list())),
            "n": mine.height, "mean_length": mine["length"].mean(),
            "mean_reward": mine["reward"].mean(), "alpha": (pairing.get("alphas") or {}).get(lang),
            "length_diff": (pairing.get("mean_length_diff") or {}).get(lang) or {},
            "corr": (pairing.get("length_margin_corr") or {}).get(lang) or {},
        }  # fmt: skip
    return out


def dashboard(path: Path, manifest: dict, bins: int = HIST_BINS) -> dict:
    """The version page's figures: funnel rows, the shared-bin margin histogram per language,
    reward vs length per language, and the agreement figures with their likely-noise verdicts."""
    margins = margins_frame(path)
    noise = (manifest.get("likely_noise") or {}).get("languages") or {}
    return {
        "funnel": funnel_rows(manifest),
        "hist": ins.margin_histogram(margins, bins),
        "scatter": reward_length(path, manifest),
        "unit": ins.length_unit(manifest),
        "trust": ins.trust_figures(manifest),
        "noise": noise,
        "zero": ins.zero_pair_languages(manifest),
        "digest": ins.recipe_digest(manifest),
    }


# ------------------------------------------------------------------------------- the diff page
def overlay(frames: dict[str, pl.DataFrame], bins: int = HIST_BINS) -> dict:
    """Margin counts per language of each frame over bins shared by all of them (so the
    versions line up): {lang: {"edges": [...], "series": {label: counts}}}."""
    both = pl.concat(list(frames.values()))
    out = {}
    for lang in both["lang"].unique(maintain_order=True).to_list():
        mine = both.filter(pl.col("lang") == lang)["margin"]
        lo, hi = mine.min(), mine.max()
        width = (hi - lo) / bins if hi > lo else 1.0
        series = {}
        for label, df in frames.items():
            m = df.filter(pl.col("lang") == lang)["margin"]
            idx = ((m - lo) / width).floor().cast(pl.Int64).clip(0, bins - 1)
            counts = [0] * bins
            for b, k in idx.value_counts().iter_rows():
                counts[b] = k
            series[label] = counts
        out[lang] = {"edges": [lo + width * i for i in range(bins + 1)], "series": series}
    return out


def diff(path_a: Path, path_b: Path) -> dict:
    """inspection.diff_versions of the two, plus their margins overlaid per language."""
    d = ins.diff_versions(path_a, path_b)
    d["overlay"] = overlay({d["a"]: margins_frame(path_a), d["b"]: margins_frame(path_b)})
    d["margins"] = d["margins"].to_dicts()
    return d


# ------------------------------------------------------------------------- an eval record page
EVAL_ROW_COLUMNS = ("judge", "kind", "prompt_id", "lang", "instruction", "candidate", "baseline",
                    "verdict_ab", "verdict_ba", "win", "consistent", "candidate_reward",
                    "baseline_reward", "candidate_lid", "baseline_lid", "candidate_chars",
                    "baseline_chars")  # fmt: skip


def eval_rows(path: Path, judge: str | None, lang: str | None, page: int, per_page: int) -> dict:
    """One page of an eval record's rows (of one judge and language, when given): the two
    answers with both verdicts; and the total."""
    files = store.config_files(path, "rows")
    lf = pl.scan_parquet(files)
    names = lf.collect_schema().names()
    if judge:
        lf = lf.filter(pl.col("judge") == judge)
    if lang:
        lf = lf.filter(pl.col("lang") == lang)
    try:
        total = lf.select(pl.len()).collect().item()
        rows = (lf.select([c for c in EVAL_ROW_COLUMNS if c in names])
                .slice((page - 1) * per_page, per_page).collect().to_dicts())  # fmt: skip
    except (pl.exceptions.PolarsError, OSError) as e:
        raise Damaged([f"{path / 'data' / 'rows'}: cannot be read: {e}"]) from None
    return {"total": total, "rows": rows}


# ------------------------------------------------------- any other kind of record (prompts, ...)
PREVIEW_ROWS = 20


def record_view(path: Path, manifest: dict) -> dict:
    """A record of another kind (a translated prompts version, a reward check): its scalar
    facts, each per-key table of the manifest (a mapping of mappings, e.g. per language), and
    the first rows of its first table."""
    facts, tables = [], []
    for key, value in manifest.items():
        if key in ("files", "recipe", "textfeatures"):
            continue
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            cols = list(dict.fromkeys(c for v in value.values() for c, x in v.items()
                                      if not isinstance(x, (dict, list))))  # fmt: skip
            tables.append({"name": key, "columns": cols,
                           "rows": [(k, [v.get(c) for c in cols]) for k, v in value.items()]})  # fmt: skip
        elif not isinstance(value, (dict, list)):
            facts.append((key, value))
    preview = None
    configs = list((manifest.get("files") or {}).keys())
    if configs:
        try:
            lf = pl.scan_parquet(store.config_files(path, configs[0]))
            total = lf.select(pl.len()).collect().item()
            df = lf.head(PREVIEW_ROWS).collect()
        except (pl.exceptions.PolarsError, OSError, store.StoreError) as e:
            raise Damaged([f"{path / 'data' / configs[0]}: cannot be read: {e}"]) from None
        rows = [[_short(v) for v in r] for r in df.iter_rows()]
        preview = {"config": configs[0], "columns": df.columns, "rows": rows, "total": total}
    return {"facts": facts, "tables": tables, "preview": preview}


def _short(value, n: int = 300) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= n else text[: n - 1] + "…"
