"""X-AlpacaEval (the paper's evaluation prompts) as eval prompt rows: prompt_id, lang, instruction.

    from icr_data.stages.x_alpacaeval import load_x_alpacaeval
    rows = load_x_alpacaeval("data/x-alpacaeval", ["en", "es", "ru", "de", "fr"])

An eval recipe reads it with `prompts: {layout: x-alpacaeval, source: ...}` (evaluation.py).

The Hub dataset `zhihz0535/X-AlpacaEval` (PLUG, Zhang et al. 2023; CC BY-NC 4.0) has one config,
`default`, whose splits are languages, one JSON file each at the repository's root:
english.json, spanish.json, chinese.json, korean.json, italian.json. A file is a JSON array of
{"id": int, "dataset": str, "instruction": str}: `id` counts AlpacaEval's 805 instructions from
1 in AlpacaEval's order (the same id in every language: translations of each other), `dataset`
names AlpacaEval's source set (helpful_base, koala, oasst, selfinstruct, vicuna).

The paper evaluates en, es, ru, de and fr; the Hub carries neither ru, de nor fr. The local
layout adds them: in the same folder (or in `extra`), `<code>.json` or `<code>.jsonl` (ru.json,
as the paper's own repository keeps them) or `<English name>.json` (russian.json), with the
same three fields. `source` is that folder, or the Hub id itself (read through `datasets`,
which needs the network; the languages it lacks then come from `extra`).
"""

from __future__ import annotations

import json
from pathlib import Path

from icr_data.base.languages import LANGUAGES
from icr_data.stages.prompts import PromptError

HUB_ID = "zhihz0535/X-AlpacaEval"
HUB_SPLITS = {"en": "english", "es": "spanish", "zh": "chinese", "ko": "korean", "it": "italian"}
"""The Hub's languages: split name = file name without .json."""
FIELDS = ("id", "dataset", "instruction")


def candidates(folder: Path, lang: str) -> list[Path]:
    """The files a folder may hold a language in, in the order they are looked for."""
    names = [f"{HUB_SPLITS[lang]}.json"] if lang in HUB_SPLITS else []
    names += [f"{lang}.json", f"{lang}.jsonl"]
    if lang in LANGUAGES and lang not in HUB_SPLITS:
        names.append(f"{LANGUAGES[lang].split()[0].lower()}.json")
    return [folder / n for n in names]


def read_file(path: Path) -> list[dict]:
    """The records of one language file: a JSON array (the Hub's files) or JSON lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); save the file as UTF-8") from None  # fmt: skip
    except OSError as e:
        raise PromptError(f"{path}: {e.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
        where = [f"{path}: record {n}" for n in range(1, len(records) + 1)]
    else:
        records, where = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PromptError(f"{path}:{n}: malformed JSON ({e.msg})") from None
                where.append(f"{path}:{n}")
    return [dict(r, _where=w) if isinstance(r, dict) else {"_where": w, "_bad": r}
            for r, w in zip(records, where)]  # fmt: skip


def rows_of(records: list[dict], lang: str, source: str) -> list[dict]:
    """One language's records as prompt rows, each checked: an integer id met once, a non-empty
    instruction; an error names the file and record."""
    out, seen = [], set()
    for rec in records:
        where = rec.get("_where", source)
        if "_bad" in rec:
            raise PromptError(f"{where}: expected a JSON object with {', '.join(FIELDS)}")
        rid, text = rec.get("id"), rec.get("instruction")
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise PromptError(f"{where}: 'id' must be an integer (X-AlpacaEval's id), got {rid!r}")
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{where} (id {rid}): empty or missing 'instruction'")
        if rid in seen:
            raise PromptError(f"{where}: id {rid} appears twice in {lang}")
        seen.add(rid)
        out.append({"prompt_id": str(rid), "lang": lang, "instruction": text,
                    "dataset": rec.get("dataset")})  # fmt: skip
    if not out:
        raise PromptError(f"{source}: no X-AlpacaEval records for {lang}")
    return out


def from_hub(lang: str) -> list[dict]:
    """One of the Hub's languages through `datasets` (network, or the local datasets cache)."""
    from datasets import load_dataset

    from icr_data.base.hf import unreachable_dataset

    if why := unreachable_dataset(HUB_ID):
        raise PromptError(f"prompts.source {HUB_ID}: cannot load it: {why}; download it into a "
                          "folder and name the folder instead")  # fmt: skip
    try:
        ds = load_dataset(HUB_ID, split=HUB_SPLITS[lang])
    except Exception as e:  # noqa: BLE001 - datasets raises many types (network, missing split)
        raise PromptError(f"prompts.source {HUB_ID}: cannot load split {HUB_SPLITS[lang]!r} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); download it "
                          "into a folder and name the folder instead") from None  # fmt: skip
    return [dict(r, _where=f"{HUB_ID} {HUB_SPLITS[lang]} row {i}") for i, r in enumerate(ds, 1)]


def load_x_alpacaeval(source: str, languages: list[str], extra: str | None = None) -> list[dict]:
    """The rows of `languages` (prompt_id = X-AlpacaEval's id), language by language, from a
    folder in the Hub's layout plus the local one, or from the Hub id (`extra`: a folder for
    the languages the source lacks)."""
    hub = source.removeprefix("hf:") == HUB_ID and not Path(source).exists()
    folders = [] if hub else [Path(source)]
    if not hub and not Path(source).is_dir():
        raise PromptError(f"prompts.source {source}: not a folder (X-AlpacaEval layout: one "
                          f"JSON file per language) nor the Hub id {HUB_ID}")  # fmt: skip
    if extra:
        if not Path(extra).is_dir():
            raise PromptError(f"prompts.extra {extra}: not a folder")
        folders.append(Path(extra))
    where: dict[str, Path | None] = {}  # every language placed before any is read or fetched
    for lang in languages:
        if lang not in LANGUAGES:
            raise PromptError(f"prompts.languages: unknown language code {lang!r}")
        found = next((p for f in folders for p in candidates(f, lang) if p.is_file()), None)
        if found is None and not (hub and lang in HUB_SPLITS):
            looked = ", ".join(str(p) for f in folders for p in candidates(f, lang)) or "nowhere"
            raise PromptError(
                f"X-AlpacaEval has no {LANGUAGES[lang]} ({lang}) here (looked for {looked}); "
                f"the Hub carries {', '.join(HUB_SPLITS)}: add {lang}.json in the same layout "
                "(id, dataset, instruction), e.g. translated with icr-data translate, and name "
                "its folder in prompts.source or prompts.extra (docs/paper.md)"
            )
        where[lang] = found
    rows: list[dict] = []
    for lang, found in where.items():
        if found is not None:
            rows += rows_of(read_file(found), lang, str(found))
        else:
            rows += rows_of(from_hub(lang), lang, HUB_ID)
    return rows
