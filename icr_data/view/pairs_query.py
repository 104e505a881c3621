"""The pairs browser's and the prompt page's reads: one page of a version's pairs, filtered and
sorted on the server, and every candidate of one prompt and language with why it was kept,
filtered or paired.

    q = PairQuery.parse({"lang": "de", "min_margin": "0.5", "sort": "length_diff"})
    page = pairs_page(version_dir, q)        # {"total", "pages", "rows": [pair dicts]}
    view = prompt_view(version_dir, manifest, "demo-001", "de")

Staying fast on a million pairs: the pairs' numeric columns (no text) are read once per version
and kept (versions are immutable and their files named by their content, so the cache key is the
files' names and sizes; at most CACHED versions); filters and sorts then run in memory: the first
SHALLOW pairs of an order by a partial sort, deeper pages and text searches from an order sorted
once and kept. A page's texts come from the version's text cache (textcache.py, built on a
thread for versions of CACHE_FROM pairs or more), else from the Parquet row groups that hold its
rows, three columns; language-ID verdicts come from the candidates, filtered to the page's
prompts. Only a text search reads every text: the text cache's when it is built, else the
Parquet files'. The length difference is in tokens
(chosen_tokens - rejected_tokens), which needs no text.

The prompt page recomputes the candidate filters of pairs.py with their per-row definitions
(first reason that applies, in CANDIDATE_FILTERS order, with the version's pairing settings),
which is what the pair stage computes column-wise; which candidates were paired comes from the
version's pairs, never recomputed.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import polars as pl

from icr_data.base.config import CANDIDATE_FILTERS
from icr_data.commands.inspection import message_text, scan_pairs
from icr_data.pairing.textfeatures import normalise, repeated_ngram_ratio
from icr_data.store import store
from icr_data.view.queries import Damaged, NotFound, ViewError, version_dir
from icr_data.view.textcache import TextCache

SORTS = ("margin", "length_diff")
ORDERS = ("desc", "asc")
MAX_PER_PAGE = 200
CACHED = 2
CACHE_FROM = 100_000
"""Versions with at least this many pairs get a text cache (textcache.py); smaller ones decode
their few row groups in well under a second."""
NUMERIC = ("prompt_id", "lang", "margin", "chosen_reward", "rejected_reward", "chosen_tokens",
           "rejected_tokens", "chosen_sample_idx", "rejected_sample_idx")  # fmt: skip
TEXTS = ("prompt", "chosen", "rejected")
CANDIDATE_COLUMNS = ("sample_idx", "instruction", "scoring_prompt", "response", "finish_reason",
                     "response_tokens", "reward", "reward_native", "judge_reward", "lid_lang",
                     "lid_score")  # fmt: skip


@dataclass
class PairQuery:
    """The pairs browser's filters, sort and page, as its URL's query parameters carry them."""

    lang: str = ""
    min_margin: float | None = None
    max_margin: float | None = None
    min_len_diff: int | None = None
    max_len_diff: int | None = None
    q: str = ""
    sort: str = "margin"
    order: str = "desc"
    page: int = 1
    per_page: int = 25

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> PairQuery:
        """From query parameters; a bad value is a ViewError naming the parameter."""
        out = cls()
        for f in fields(cls):
            raw = (params.get(f.name) or "").strip()
            if not raw:
                continue
            kind = str(f.type)
            try:
                value = float(raw) if "float" in kind else int(raw) if "int" in kind else raw
            except ValueError:
                raise ViewError(f"{f.name}: {raw[:40]!r} is not a number") from None
            if isinstance(value, float) and not np.isfinite(value):
                raise ViewError(f"{f.name}: {raw[:40]!r} is not a finite number")
            setattr(out, f.name, value)
        if out.sort not in SORTS:
            raise ViewError(f"sort: {out.sort[:40]!r} is not one of {', '.join(SORTS)}")
        if out.order not in ORDERS:
            raise ViewError(f"order: {out.order[:40]!r} is not one of {', '.join(ORDERS)}")
        if out.page < 1 or not 1 <= out.per_page <= MAX_PER_PAGE:
            raise ViewError(f"page must be >= 1 and per_page 1 to {MAX_PER_PAGE}")
        return out

    def url(self, **change) -> str:
        """The query string of this query with `change` applied (defaults left out)."""
        values = {**asdict(self), **change}
        default = asdict(PairQuery())
        return urlencode({k: v for k, v in values.items() if v not in (None, "", default[k])})


# ------------------------------------------------------------------------------ the pair table
_cache: OrderedDict[tuple, pl.DataFrame] = OrderedDict()
_orders: OrderedDict[tuple, np.ndarray] = OrderedDict()
_lock = threading.Lock()
SHALLOW = 2000
ORDERS_CACHED = 8


def _files_key(path: Path) -> tuple:
    """What identifies a version's pairs: its folder and its files' names (digests) and sizes."""
    files = store.config_files(path, "pairs")
    return (str(path.resolve()), tuple((f.name, f.stat().st_size) for f in files))


def numeric(path: Path) -> pl.DataFrame:
    """Every pair's numeric columns, its file-order `row` and `length_diff` (tokens), cached."""
    key = _files_key(path)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        df = (scan_pairs(path).select("row", *NUMERIC)
              .with_columns(length_diff=pl.col("chosen_tokens") - pl.col("rejected_tokens"))
              .collect())  # fmt: skip
    except (pl.exceptions.PolarsError, OSError) as e:
        raise Damaged([f"{path / 'data' / 'pairs'}: cannot be read: {e}"]) from None
    with _lock:
        _cache[key] = df
        while len(_cache) > CACHED:
            _cache.popitem(last=False)
    return df


def _contains(text: str, column) -> pl.Expr:
    """Whether the prompt, chosen or rejected text (`column(name)`) contains `text`, case
    folded: one expression for the text cache and the Parquet files, so both find the same."""
    pattern = "(?i)" + re.escape(text)
    return pl.any_horizontal(*(column(c).str.contains(pattern) for c in TEXTS))


def search(path: Path, text: str) -> pl.Series:
    """The rows whose prompt, chosen or rejected text contains `text` (case folded): from the
    version's text cache when it is built (memory-mapped, nothing to decompress), else from the
    Parquet files (every row group's texts decoded)."""
    if (rows := TextCache(path).rows_where(_contains(text, pl.col))) is not None:
        return rows
    lf = scan_pairs(path)
    return lf.filter(_contains(text, message_text)).select("row").collect()["row"]


def texts(path: Path, rows: list[int]) -> dict[int, dict]:
    """{row: {prompt, chosen, rejected}}: from the version's text cache (textcache.py) when it
    is built, else from the Parquet row groups holding `rows` only; a version of more than
    CACHE_FROM pairs starts building its cache."""
    import pyarrow.parquet as pq

    cache = TextCache(path)
    if (got := cache.get(rows)) is not None:
        return got
    parts = [pq.ParquetFile(f) for f in cache.files]
    warm(path, sum(pf.metadata.num_rows for pf in parts))
    wanted = sorted(set(rows))
    out: dict[int, dict] = {}
    base = 0
    for pf in parts:
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            mine = [r - base for r in wanted if base <= r < base + n]
            if mine:
                part = pl.from_arrow(pf.read_row_group(g, columns=list(TEXTS)).take(mine))
                part = part.select(*(message_text(c).alias(c) for c in TEXTS))
                out.update({base + r: t for r, t in zip(mine, part.to_dicts())})
            base += n
    return out


def warm(path: Path, pairs: int | None) -> None:
    """Start building the version's text cache if it has CACHE_FROM pairs or more."""
    if pairs is not None and pairs >= CACHE_FROM:
        TextCache(path).start()


def language_ids(path: Path, keys: list[tuple[str, str, int]]) -> dict[tuple, tuple]:
    """{(prompt_id, lang, sample_idx): (lid_lang, lid_score)} for those keys, where the
    candidates carry language ID; {} where they do not."""
    if not keys:
        return {}
    lf = pl.scan_parquet(store.config_files(path, "candidates"))
    if "lid_lang" not in lf.collect_schema().names():
        return {}
    ids = sorted({k[0] for k in keys})
    found = (lf.filter(pl.col("prompt_id").is_in(ids))
             .select("prompt_id", "lang", "sample_idx", "lid_lang", "lid_score").collect())  # fmt: skip
    return {(p, lg, i): (ll, ls) for p, lg, i, ll, ls in found.iter_rows()}


def page_rows(path: Path, df: pl.DataFrame, query: PairQuery) -> tuple[int, list[int]]:
    """(pairs matching `query`, the rows of its page in order; ties in file order). The first
    SHALLOW pairs of an order come from a partial sort (top_k); deeper pages and text searches
    sort every match once and keep the order (at most ORDERS_CACHED orders)."""
    lf = df.lazy()
    if query.lang:
        lf = lf.filter(pl.col("lang") == query.lang)
    for col, lo, hi in (("margin", query.min_margin, query.max_margin),
                        ("length_diff", query.min_len_diff, query.max_len_diff)):  # fmt: skip
        if lo is not None:
            lf = lf.filter(pl.col(col) >= lo)
        if hi is not None:
            lf = lf.filter(pl.col(col) <= hi)
    key, desc = query.sort, query.order == "desc"
    first, end = (query.page - 1) * query.per_page, query.page * query.per_page
    cache_key = (_files_key(path), *(v for k, v in asdict(query).items()
                                     if k not in ("page", "per_page")))  # fmt: skip
    with _lock:
        order = _orders.get(cache_key)
    if order is None and end <= SHALLOW and not query.q:
        picked = lf.select("row", key).collect()
        top = picked.top_k(end, by=[key, "row"], reverse=[not desc, True])
        top = top.sort([key, "row"], descending=[desc, False])
        return picked.height, top["row"][first:end].to_list()
    if order is None:
        if query.q:
            lf = lf.filter(pl.col("row").is_in(search(path, query.q).implode()))
        order = lf.select("row", key).sort(key, descending=desc, maintain_order=True).collect()
        order = order["row"].to_numpy()
        with _lock:
            _orders[cache_key] = order
            while len(_orders) > ORDERS_CACHED:
                _orders.popitem(last=False)
    return len(order), order[first:end].tolist()


def pairs_page(path: Path, query: PairQuery) -> dict:
    """One page of the pairs matching `query`, sorted (ties in file order), with their texts and
    language-ID verdicts; `total` matching, `pages`, and the languages present."""
    df = numeric(path)
    total, picked = page_rows(path, df, query)
    rows = df[picked].to_dicts()  # `row` is the frame's own position
    text = texts(path, picked)
    keys = [(r["prompt_id"], r["lang"], r[f"{side}_sample_idx"]) for r in rows
            for side in ("chosen", "rejected")]  # fmt: skip
    lid = language_ids(path, keys)
    for r in rows:
        r.update(text.get(r["row"], {}))
        for side in ("chosen", "rejected"):
            r[f"{side}_lid"] = lid.get((r["prompt_id"], r["lang"], r[f"{side}_sample_idx"]))
        r["key"] = pair_key(r)
    return {"total": total, "pages": max(1, -(-total // query.per_page)), "rows": rows,
            "langs": df["lang"].unique(maintain_order=True).to_list()}  # fmt: skip


def pair_key(r: Mapping) -> tuple[str, str, int, int]:
    """A pair's key: (prompt_id, lang, chosen_sample_idx, rejected_sample_idx)."""
    return (r["prompt_id"], r["lang"], int(r["chosen_sample_idx"]), int(r["rejected_sample_idx"]))


# ----------------------------------------------------------------------------- the prompt page
def pairing_settings(manifest: Mapping) -> dict:
    """The pairing settings the version was paired with (the manifest's, else its recipe's)."""
    pairing = manifest.get("pairing") or {}
    return pairing.get("settings") or (manifest.get("recipe") or {}).get("pairing") or {}


def candidate_reasons(rows: list[dict], lang: str, settings: Mapping) -> list[str | None]:
    """Per candidate (in sample order), the candidate filter that dropped it, or None: the
    first that applies of truncated, empty, duplicate (an earlier candidate passing the other
    filters has the same normalised text), repetition, off_target."""
    on = set(settings.get("filters") or CANDIDATE_FILTERS)
    n, limit = settings.get("repetition_ngram", 4), settings.get("repetition_max", 0.5)
    flags = []
    for r in rows:
        text = r.get("response") or ""
        lid = r.get("lid_lang")
        flags.append({
            "truncated": "truncated" in on and r.get("finish_reason") == "length",
            "empty": "empty" in on and not text.split(),
            "repetition": "repetition" in on and repeated_ngram_ratio(text, n) > limit,
            "off_target": "off_target" in on and lid is not None and lid != lang,
        })  # fmt: skip
    seen: set[str] = set()
    for r, f in zip(rows, flags):
        norm = normalise(r.get("response") or "")
        f["duplicate"] = "duplicate" in on and norm in seen
        if not any(f.values()):
            seen.add(norm)
    return [next((name for name in CANDIDATE_FILTERS if f[name]), None) for f in flags]


def prompt_view(path: Path, manifest: Mapping, prompt_id: str, lang: str) -> dict:
    """Every candidate of one prompt and language: its numbers, language ID, the filter that
    dropped it (or none), its length-controlled score, and which pairs it is in."""
    lf = pl.scan_parquet(store.config_files(path, "candidates"))
    names = lf.collect_schema().names()
    cols = [c for c in CANDIDATE_COLUMNS if c in names]
    try:
        cands = (lf.filter((pl.col("prompt_id") == prompt_id) & (pl.col("lang") == lang))
                 .select(cols).collect().sort("sample_idx", maintain_order=True))  # fmt: skip
    except (pl.exceptions.PolarsError, OSError) as e:
        raise Damaged([f"{path / 'data' / 'candidates'}: cannot be read: {e}"]) from None
    if cands.is_empty():
        raise NotFound(f"no candidates of prompt {prompt_id[:80]!r} in language {lang[:20]!r}")
    settings = pairing_settings(manifest)
    unit = settings.get("length_unit") or "chars"
    alpha = ((manifest.get("pairing") or {}).get("alphas") or {}).get(lang) or 0.0
    rows = cands.to_dicts()
    reasons = candidate_reasons(rows, lang, settings)
    pairs = (numeric(path).filter((pl.col("prompt_id") == prompt_id) & (pl.col("lang") == lang))
             .drop("row").to_dicts())  # fmt: skip
    for p in pairs:
        p["key"] = pair_key(p)
    for r, why in zip(rows, reasons):
        r["length"] = r["response_tokens"] if unit == "tokens" else len(r.get("response") or "")
        r["chars"] = len(r.get("response") or "")
        r["adjusted"] = None if r.get("reward") is None else r["reward"] - alpha * r["length"]
        r["filtered"] = why
        r["roles"] = [role for p in pairs for role in ("chosen", "rejected")
                      if p[f"{role}_sample_idx"] == r["sample_idx"]]  # fmt: skip
    kept = sum(why is None for why in reasons)
    hand = dropped_by_hand(path, manifest, prompt_id, lang)
    if pairs:
        why_none = None
    elif hand:
        why_none = "dropped by hand (" + "; ".join(f"{d['version']}: {d['reason']}" for d in hand)
        why_none += ")"
    elif kept < 2:
        why_none = f"{kept} candidate(s) kept by the filters: fewer than two, so no pair"
    else:
        why_none = ("the pair the rule selected was dropped by a pair filter "
                    f"({', '.join(settings.get('filters') or [])}, or no separation after "
                    "length control); the version's funnel counts it")  # fmt: skip
    first = rows[0]
    return {"prompt_id": prompt_id, "lang": lang, "instruction": first.get("instruction"),
            "scoring_prompt": first.get("scoring_prompt"), "candidates": rows, "pairs": pairs,
            "kept": kept, "alpha": alpha, "unit": unit, "settings": settings, "columns": cols,
            "why_no_pair": why_none, "dropped_by_hand": hand}  # fmt: skip


def dropped_by_hand(path: Path, manifest: Mapping, prompt_id: str, lang: str) -> list[dict]:
    """The pairs of one prompt and language dropped by hand (curate.drop_pairs) in this version
    or the curated versions it descends from, each with its reason and the `version` that
    dropped it, newest first: a curated child's manifest lists only its own drops, so the
    parents are read while they are drops too (a re-paired version pairs anew and ends it)."""
    out: list[dict] = []
    root = path.parent.parent
    for _ in range(1000):
        derived = manifest.get("derived") or {}
        if derived.get("operation") != "drop":
            break
        name = f"{manifest.get('dataset')}/{manifest.get('version')}"
        out += [{**d, "version": name} for d in derived.get("dropped") or []
                if d.get("prompt_id") == prompt_id and d.get("lang") == lang]  # fmt: skip
        parent = str(manifest.get("parent") or "").split("/")
        try:
            manifest = store.read_manifest(version_dir(root, *parent))
        except (TypeError, ViewError, store.StoreError):  # no parent, or not in this store
            break
    return out
