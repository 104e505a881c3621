"""Curation that stays versioned: a new version holding its parent's pairs but those dropped by
hand, with the reason for each; the parent is never edited.

    icr-data drop icr_store/demo/v1 --pairs drops.jsonl [--reason "wrong language"] [--version v3]
    path, manifest = drop_pairs("icr_store/demo/v1", {("demo-001", "fr", 2, 0): "wrong language"})

A pair is named by its key (prompt_id, lang, chosen_sample_idx, rejected_sample_idx). Pairing is
not run again (it could choose other pairs): the parent's pairs table is filtered as stored and
written, with the parent's candidates (linked or copied) and text features, through the write
path of `pair` (derive.write_child): the manifest names the parent, its funnel counts the
dropped pairs per language as `by hand` and `derived.dropped` lists each with its reason; the
card says how many were dropped and why. `icr-data view` writes its curated versions through
drop_pairs too.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path

from icr_data.base.errors import IcrError

KEY = ("prompt_id", "lang", "chosen_sample_idx", "rejected_sample_idx")
HAND = "by hand"  # the funnel's reason for a pair dropped by hand (dropped_pairs)
EMPTIED = "all pairs dropped by hand"  # ... for a prompt left without a pair by it


class CurateError(IcrError):
    """A drop list that does not name pairs of the version, or cannot be read."""


class NoSuchPair(CurateError):
    """A key that names no pair of the version (`key`: the key)."""

    def __init__(self, message: str, key: tuple):
        super().__init__(message)
        self.key = key


def key_text(key: tuple) -> str:
    return " ".join(f"{k}={v!r}" for k, v in zip(KEY, key))


def checked_drops(drops: Mapping) -> dict[tuple[str, str, int, int], str]:
    """`drops` with every key a (str, str, int, int) tuple and every reason non-empty text
    (stripped); one CurateError naming the first bad key."""
    if not isinstance(drops, Mapping) or not drops:
        raise CurateError("nothing to drop: name at least one pair (prompt_id, lang, "
                          "chosen_sample_idx, rejected_sample_idx) and its reason")  # fmt: skip
    out = {}
    for key, reason in drops.items():
        if not (isinstance(key, tuple) and len(key) == 4):
            raise CurateError(f"pair key {key!r} is not (prompt_id, lang, chosen_sample_idx, "
                              "rejected_sample_idx)")  # fmt: skip
        pid, lang, c, r = key
        if not (isinstance(pid, str) and isinstance(lang, str)):
            raise CurateError(f"pair key {key!r}: prompt_id and lang must be text")
        if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in (c, r)):
            raise CurateError(f"pair key {key!r}: the sample indices must be whole numbers")
        if not isinstance(reason, str) or not reason.strip():
            raise CurateError(f"pair {key_text(key)}: no reason given (say why it is dropped)")
        out[(pid, lang, int(c), int(r))] = reason.strip()
    return out


def drop_pairs(version, drops: Mapping, name: str | None = None, console=None) -> tuple[Path, dict]:
    """Write a child of `version` (a folder or dataset/vN) without the pairs `drops` names
    ({(prompt_id, lang, chosen_sample_idx, rejected_sample_idx): reason}); return its folder and
    manifest. A key naming no pair of the version is one NoSuchPair, and nothing is written."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    from datasets import Dataset

    from icr_data.commands.derive import open_parent, reused_candidates, write_child
    from icr_data.store import store

    drops = checked_drops(drops)
    version_dir, parent_manifest, recipe = open_parent(version, name)
    table = store.read_table(version_dir, "pairs").data.table
    wanted = list(drops)
    keys = pl.from_arrow(table.select(list(KEY))).with_row_index("row")
    types = [pl.String, pl.String, pl.Int64, pl.Int64]
    asked = pl.DataFrame({c: pl.Series([k[i] for k in wanted], dtype=t)
                          for i, (c, t) in enumerate(zip(KEY, types))})  # fmt: skip
    asked = asked.with_row_index("asked")
    keys = keys.with_columns(pl.col(c).cast(t) for c, t in asked.schema.items() if c in KEY)
    hit = keys.join(asked, on=list(KEY), how="inner").sort("row")
    missing = sorted(set(range(len(wanted))) - set(hit["asked"].to_list()))
    if missing:
        more = f" (and {len(missing) - 1} more keys that name no pair)" if len(missing) > 1 else ""
        raise NoSuchPair(f"{version_dir}: no pair {key_text(wanted[missing[0]])}{more}; "
                         "nothing written", wanted[missing[0]])  # fmt: skip
    keep = np.ones(len(table), bool)
    keep[hit["row"].to_numpy()] = False
    ident = hashlib.sha256(json.dumps([f.name for f in store.config_files(version_dir, "pairs")]).encode())  # fmt: skip
    ident.update(json.dumps(sorted(drops)).encode())
    pairs = Dataset(table.filter(pa.array(keep)), fingerprint=ident.hexdigest()[:16])
    dropped = [{**dict(zip(KEY, wanted[a])), "reason": drops[wanted[a]]} for a in hit["asked"]]
    stats = _stats(parent_manifest, keys, hit, keep)
    derived = {"operation": "drop", "dropped": dropped,
               "reused": ["candidates (responses and scores)", "pairs (as stored, less those dropped)"]}  # fmt: skip
    candidates, files = reused_candidates(version_dir)
    return write_child(version_dir, parent_manifest, recipe, candidates, parent_manifest["models"],
                       {}, derived, name, console=console, candidate_files=files,
                       paired=(pairs, stats))  # fmt: skip


def _stats(parent: dict, keys, hit, keep):
    """The parent's pairing figures (pairing did not run again: alphas, length and judge
    figures describe its selection) with the funnel counting the pairs dropped by hand, and
    the prompts left without a pair by them, per language."""
    import copy

    import polars as pl

    from icr_data.pairing.pairs import PairStats

    funnel = copy.deepcopy(dict(parent["funnel"]))
    before = keys.group_by("lang").agg(pl.col("prompt_id").n_unique())
    after = keys.filter(pl.Series(keep)).group_by("lang").agg(pl.col("prompt_id").n_unique())
    left = dict(after.iter_rows())
    for lang, n in hit.group_by("lang").len().iter_rows():
        f = funnel[lang]
        f["pairs"] -= n
        f["dropped_pairs"][HAND] = f["dropped_pairs"].get(HAND, 0) + n
    for lang, n in before.iter_rows():
        lost = n - left.get(lang, 0)
        if lost:
            f = funnel[lang]["prompts_without_pair"]
            f[EMPTIED] = f.get(EMPTIED, 0) + lost
    pairing = parent["pairing"]
    judge = {lang: {k: a[k] for k in ("pairs", "agree", "rate")}
             for lang, a in (pairing.get("judge_agreement") or {}).items()}  # fmt: skip
    return PairStats(alphas=dict(pairing["alphas"]), mean_length_diff=pairing["mean_length_diff"],
                     length_margin_corr=pairing["length_margin_corr"], funnel=funnel,
                     judge_agreement=judge)  # fmt: skip


def read_drops(path: str | Path, reason: str | None = None) -> tuple[dict, dict]:
    """The pairs a file names to drop: JSON Lines (.jsonl, .json) or CSV (.csv) with columns
    prompt_id, lang, chosen_sample_idx, rejected_sample_idx and optionally reason (else
    `reason`); other columns are ignored. Returns ({key: reason}, {key: line}); one CurateError
    naming the file and line of the first bad row."""
    path = Path(path)
    kind = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(path.suffix.lower())
    if kind is None:
        raise CurateError(f"--pairs {path}: give a .jsonl or .csv file (columns {', '.join(KEY)}, "
                          "reason)")  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise CurateError(f"--pairs {path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise CurateError(f"--pairs {path}: not UTF-8 text") from None
    drops: dict = {}
    lines: dict = {}
    for line, row in _rows(path, text, kind):
        where = f"{path}, line {line}"
        if not isinstance(row, dict):
            raise CurateError(f"{where}: not an object with {', '.join(KEY)}")
        absent = [k for k in KEY if row.get(k) in (None, "")]
        if absent:
            raise CurateError(f"{where}: no {', '.join(absent)}")
        key = (_text(row, "prompt_id", where), _text(row, "lang", where),
               _index(row, "chosen_sample_idx", where), _index(row, "rejected_sample_idx", where))  # fmt: skip
        why = row.get("reason")
        why = why if why not in (None, "") else reason
        if not isinstance(why, str) or not why.strip():
            raise CurateError(f"{where}: no reason (a reason column, or --reason for every row)")
        if key in lines:
            raise CurateError(f"{where}: pair {key_text(key)} is listed already (line "
                              f"{lines[key]})")  # fmt: skip
        drops[key], lines[key] = why.strip(), line
    if not drops:
        raise CurateError(f"--pairs {path}: names no pair; nothing to drop")
    return drops, lines


def _rows(path: Path, text: str, kind: str):
    if kind == "csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        try:
            for row in reader:
                if None in row:
                    raise CurateError(f"{path}, line {reader.line_num}: more values than columns")
                yield reader.line_num, row
        except csv.Error as e:
            raise CurateError(f"{path}, line {reader.line_num}: not CSV ({e})") from None
        return
    for line, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            try:
                yield line, json.loads(raw)
            except json.JSONDecodeError as e:
                raise CurateError(
                    f"{path}, line {line}: not JSON ({e.msg}, column {e.colno})"
                ) from None


def _text(row: dict, column: str, where: str) -> str:
    if not isinstance(row[column], str):
        raise CurateError(f"{where}: {column} must be text, got {row[column]!r}")
    return row[column]


def _index(row: dict, column: str, where: str) -> int:
    v = row[column]
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise CurateError(f"{where}: {column} must be a whole number, got {v!r}")


def drop_file(version, path: str | Path, reason: str | None = None, name: str | None = None,
              console=None) -> tuple[Path, dict]:  # fmt: skip
    """`icr-data drop`: drop_pairs with the pairs a file names (read_drops); a key naming no
    pair of the version is reported with its file and line."""
    drops, lines = read_drops(path, reason)
    try:
        return drop_pairs(version, drops, name=name, console=console)
    except NoSuchPair as e:
        raise CurateError(f"{path}, line {lines[e.key]}: {e}") from None
