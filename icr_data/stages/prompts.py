"""Prompts stage: load a multilingual prompt set and attach each row's scoring prompt.

Input (JSONL, Parquet, a `datasets` folder saved with save_to_disk, or a prompts version folder
written by `icr-data translate`): one row per
(prompt_id, lang) with `prompt_id`, `lang`, `instruction`. A prompt exists in English and in each
target language under the same prompt_id; the English row is what cross-lingual scoring shows
the reward model. Output: the rows for the recipe's languages, in a stable order, plus
`scoring_prompt` (the exact x used for scoring).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset

from icr_data.base.config import PromptsConfig, ScoringConfig
from icr_data.base.errors import IcrError
from icr_data.base.languages import language_name, scoring_prompt

REQUIRED = ("prompt_id", "lang", "instruction")


class PromptError(IcrError):
    """A prompt file that cannot be used; the message names the file and row."""


def read_rows(source: str) -> list[dict]:
    path = Path(source)
    if not path.exists():
        raise PromptError(f"prompts.source not found: {source}")
    if path.is_dir():
        parts = sorted((path / "data" / "prompts").glob("*.parquet"))
        if parts:  # a prompts version written by `icr-data translate`
            import pyarrow as pa
            import pyarrow.parquet as pq

            return pa.concat_tables([pq.read_table(f) for f in parts]).to_pylist()
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises several types here
            raise PromptError(f"{source}: not a datasets folder ({e})") from None
        if not hasattr(ds, "to_list"):  # a DatasetDict: one split is wanted
            if len(ds) != 1:
                raise PromptError(f"{source}: a datasets folder with splits {sorted(ds)}; "
                                  f"give the folder of one split (e.g. {source}/train)")  # fmt: skip
            ds = next(iter(ds.values()))
        return ds.to_list()
    if not path.is_file():  # a FIFO, a socket, a device: reading it could block forever
        raise PromptError(f"{source}: not a regular file or a folder; give a JSONL, JSON or "
                          "Parquet file, or a datasets folder")  # fmt: skip
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001
            raise PromptError(f"{source}: not a readable Parquet file ({e})") from None
    if path.suffix in (".jsonl", ".json"):
        rows = []
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise PromptError(f"{source}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} "
                                      f"at column {e.start + 1}); save the file as UTF-8") from None  # fmt: skip
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptError(f"{source}:{n}: malformed JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise PromptError(f"{source}:{n}: expected a JSON object")
                rows.append(row)
        return rows
    raise PromptError(
        f"{source}: unknown prompt format (use .jsonl, .parquet or a datasets folder)"
    )


def check_rows(rows: list[dict], source: str) -> None:
    seen: set[tuple[str, str]] = set()
    for n, row in enumerate(rows, 1):
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            raise PromptError(f"{source}: row {n} lacks column(s) {', '.join(missing)}")
        pid, lang, text = row["prompt_id"], row["lang"], row["instruction"]
        if not isinstance(pid, str) or not pid:
            raise PromptError(f"{source}: row {n}: prompt_id must be a non-empty string")
        if not isinstance(lang, str):
            raise PromptError(f"{source}: row {n} (prompt_id {pid}): lang must be one ISO 639-1 "
                              f"code as a string, got {lang!r}")  # fmt: skip
        try:
            language_name(lang)
        except KeyError as e:
            raise PromptError(f"{source}: row {n} (prompt_id {pid}): {e.args[0]}") from None
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{source}: row {n} (prompt_id {pid}, {lang}): empty instruction")
        if (pid, lang) in seen:
            raise PromptError(f"{source}: row {n}: duplicate (prompt_id, lang) = ({pid}, {lang})")
        seen.add((pid, lang))


def load_prompts(
    cfg: PromptsConfig, scoring: ScoringConfig, skipped: dict[str, int] | None = None
) -> Dataset:
    """The prompt rows to generate for, each with its scoring prompt.

    With `missing_english: skip`, rows without an English source are left out and counted per
    language in `skipped`.
    """
    rows = read_rows(cfg.source)
    check_rows(rows, cfg.source)
    english = {r["prompt_id"]: r["instruction"] for r in rows if r["lang"] == "en"}
    order: list[str] = []
    for r in rows:
        if r["prompt_id"] not in order:
            order.append(r["prompt_id"])
    if cfg.limit is not None:
        order = order[: cfg.limit]
    keep = set(order)
    rank = {pid: i for i, pid in enumerate(order)}
    langs = {lang: i for i, lang in enumerate(cfg.languages)}
    out = []
    for r in rows:
        if r["prompt_id"] not in keep or r["lang"] not in langs:
            continue
        en = english.get(r["prompt_id"])
        if scoring.mode in ("cross_lingual", "translate_en") and en is None:
            if cfg.missing_english == "skip":
                if skipped is not None:
                    skipped[r["lang"]] = skipped.get(r["lang"], 0) + 1
                continue
            raise PromptError(
                f"{cfg.source}: prompt_id {r['prompt_id']} ({r['lang']}) has no English row; "
                f"{'cross-lingual' if scoring.mode == 'cross_lingual' else 'translate_en'} "
                "scoring needs the English instruction "
                "(or set prompts.missing_english: skip)"
            )
        out.append(
            {
                "prompt_id": r["prompt_id"],
                "lang": r["lang"],
                "instruction": r["instruction"],
                "scoring_prompt": scoring_prompt(
                    en or "", r["instruction"], r["lang"], scoring.mode
                ),
            }
        )
    if not out:
        raise PromptError(f"{cfg.source}: no prompts in languages {cfg.languages}")
    out.sort(key=lambda r: (langs[r["lang"]], rank[r["prompt_id"]]))
    return Dataset.from_list(out)
