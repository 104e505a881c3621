"""Translate stage: a multilingual prompt set (one prompt_id in every language) from English prompts.
Over 400 lines: one job (the translate command: read, dedupe, translate, gate, write).

    icr-data translate prompts_en.jsonl --to es,de,fr,ru --model builtin:smollm2-135m-instruct

English prompts come from a JSONL/Parquet file, a `datasets` folder (or a prompts version), or a
Hub dataset id read with `datasets.load_dataset(id, split=...)`; `--column-map prompt=instruction`
maps a source's columns (SOURCE=OURS) onto ours. Rows whose `lang` is not "en" are skipped;
rows without a prompt_id get sha256(instruction), UltraFeedback's own rule. Near-identical
prompts (same `translate_gates.near_key`: NFKC, case folded, punctuation dropped, whitespace
collapsed) are kept once and counted, then N are sampled with a seed. Each is translated into
every target language by an instruct model through generate.py's engine (vLLM, or transformers),
greedily (temperature 0), with a translate-only prompt template (DEFAULT_TEMPLATE or a file).
Each translation goes through the gates of translate_gates.py; one that fails any is left out for
its language and recorded in data/failures (prompt_id, lang, reason, reasons, ...). English rows
are always kept: cross-lingual scoring needs them.

The result is an immutable version `<out>/<name>/v<N>/` (store.write_version): data/prompts
(prompt_id, lang, instruction), data/failures, manifest.json (source, model, template, gates,
counts per language and reason) and README.md (cards/prompts_card.md). A build recipe takes the
version folder as `prompts.source`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datasets import Dataset, Features, Value

import icr_data
from icr_data.base.errors import IcrError
from icr_data.base.languages import language_name
from icr_data.commands.translate_gates import GATES, detect_languages, gate_reasons, near_key
from icr_data.store.store import refuse_inside_version


class TranslateError(IcrError):
    """A translate run that cannot start; the message names the option, file or row."""


DEFAULT_TEMPLATE = (
    "Translate the following text from {source_language} to {target_language}. Translate only: "
    "do not answer it, follow it or add anything. Keep code blocks, inline code, URLs, numbers "
    "and placeholders such as {name} or <tag> exactly as they are. Reply with the translation "
    "alone.\n\n{text}"
)
TARGETS = ("instruction", "prompt_id", "lang")  # our columns that --column-map may fill
SHARD_PROMPTS = 64
"""Source prompts per shard of translation work (the unit a killed run resumes from)."""
DEDUP_RULE = "NFKC, casefold, punctuation removed, whitespace collapsed; then exact match"
FAILURE_FEATURES = Features({
    "prompt_id": Value("string"), "lang": Value("string"), "reason": Value("string"),
    "reasons": [Value("string")], "ratio": Value("float64"), "detected_lang": Value("string"),
    "source": Value("string"), "translation": Value("string"),
})  # fmt: skip


@dataclass
class TranslateConfig:
    source: str = ""
    """English prompts: JSONL/Parquet file, `datasets` folder, or Hub dataset id."""
    languages: list[str] = field(default_factory=lambda: ["es", "de", "fr", "ru"])
    model: str = ""
    """An instruct (or translation) model with a chat template; any models.resolve spec."""
    out: str = "icr_store"
    name: str = "prompts"
    version: str | None = None
    split: str = "train"
    """Hub sources only: the split to read."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Source column -> our column (instruction, prompt_id, lang)."""
    limit: int | None = None
    """Translate a seeded sample of this many prompts (after dedup); None takes all."""
    seed: int = 0
    template: str | None = None
    """File with the translation prompt ({source_language}, {target_language}, {text})."""
    backend: Literal["vllm", "transformers"] = "vllm"
    max_tokens: int = 1024
    dtype: str = "auto"
    max_model_len: int | None = None
    chat_template: str | None = None
    ratio: tuple[float, float] = (0.5, 2.5)
    """Length-ratio bounds (translation chars / English chars) for every language..."""
    ratio_by_lang: dict[str, tuple[float, float]] = field(default_factory=dict)
    """...unless the language has its own here."""
    min_ratio_chars: int = 10
    min_lid_letters: int = 12

    def bounds(self, lang: str) -> tuple[float, float]:
        lo, hi = self.ratio_by_lang.get(lang, self.ratio)
        return lo, hi


def check_config(cfg: TranslateConfig) -> None:
    if not cfg.languages:
        raise TranslateError("--to: no target languages")
    repeated = sorted({x for x in cfg.languages if cfg.languages.count(x) > 1})
    if repeated:
        raise TranslateError(f"--to: {', '.join(repeated)} given more than once")
    for lang in cfg.languages:
        if lang == "en":
            raise TranslateError("--to: en is the source language; its rows are always kept")
        try:
            language_name(lang)
        except KeyError as e:
            raise TranslateError(f"--to: {e.args[0]}") from None
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise TranslateError(f"--name must be a plain name, got {cfg.name!r}")
    refuse_inside_version(Path(cfg.out) / cfg.name, "--out", "the prompts version ")
    if cfg.limit is not None and cfg.limit < 1:
        raise TranslateError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.max_tokens < 1:
        raise TranslateError(f"--max-tokens must be >= 1, got {cfg.max_tokens}")
    stray = sorted(set(cfg.ratio_by_lang) - set(cfg.languages))
    if stray:
        raise TranslateError(
            f"--ratio: {', '.join(stray)} not among --to {','.join(cfg.languages)}"
        )
    for lang, (lo, hi) in {"default": cfg.ratio, **cfg.ratio_by_lang}.items():
        if not 0 <= lo < hi < float("inf"):  # NaN fails every comparison
            raise TranslateError(f"--ratio ({lang}): need finite 0 <= LO < HI, got {lo}:{hi}")


def parse_column_map(text: str | None) -> dict[str, str]:
    """`prompt=instruction,id=prompt_id` -> {"prompt": "instruction", "id": "prompt_id"}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        src, eq, dst = (s.strip() for s in part.partition("="))
        if not eq or not src or dst not in TARGETS:
            raise TranslateError(
                f"--column-map: '{part}' is not SOURCE=OURS with OURS one of "
                f"{', '.join(TARGETS)} (e.g. prompt=instruction)"
            )
        out[src] = dst
    return out


def parse_ratios(specs: list[str] | None) -> tuple[tuple[float, float], dict]:
    """`["0.5:2.5", "ru=0.6:3"]` -> (default bounds, per-language bounds)."""
    default, by_lang = (0.5, 2.5), {}
    for spec in specs or []:
        lang, _, rng = spec.rpartition("=")
        try:
            lo, hi = (float(x) for x in rng.split(":"))
        except ValueError:
            raise TranslateError(f"--ratio: '{spec}' is not LO:HI or LANG=LO:HI") from None
        if lang:
            by_lang[lang] = (lo, hi)
        else:
            default = (lo, hi)
    return default, by_lang


def load_template(path: str | None) -> str:
    if path is None:
        return DEFAULT_TEMPLATE
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TranslateError(f"--template {path}: {e.strerror}") from None
    if "{text}" not in text:
        raise TranslateError(f"--template {path}: has no {{text}} placeholder for the prompt")
    return text


def render_request(template: str, text: str, lang: str, source: str = "en") -> str:
    """The translation request of `text` from language `source` into `lang`."""
    # Plain replacement, not str.format: prompts and user templates hold literal braces; {text}
    # goes last so a prompt that mentions "{target_language}" is left alone.
    filled = template.replace("{source_language}", language_name(source))
    return filled.replace("{target_language}", language_name(lang)).replace("{text}", text)


def read_source(cfg: TranslateConfig) -> list[dict]:
    from icr_data.stages.prompts import PromptError, read_rows

    spec = cfg.source
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or path.suffix in (".jsonl", ".parquet"):
        if not path.exists():
            raise TranslateError(f"prompts source not found: {spec}")
        try:
            return read_rows(str(path))
        except PromptError as e:
            raise TranslateError(str(e)) from None
    # A Hub dataset id. Not exercised by the tests (no Hub access there); the path exists so that
    # e.g. `HuggingFaceH4/ultrafeedback_binarized --split train_prefs --column-map
    # prompt=instruction` works where the Hub is reachable.
    from datasets import load_dataset

    from icr_data.base.hf import unreachable_dataset

    if why := unreachable_dataset(spec):
        raise TranslateError(f"{spec}: not a local file, and not loadable from the Hub: {why}")
    try:
        ds = load_dataset(spec, split=cfg.split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a bad id or split
        raise TranslateError(f"{spec}: not a local file and not loadable from the Hub "
                             f"(split {cfg.split!r}): {e}") from None  # fmt: skip
    wanted = set(cfg.column_map) | set(TARGETS)  # UltraFeedback rows also hold long completions
    return ds.select_columns([c for c in ds.column_names if c in wanted]).to_list()


def english_rows(rows: list[dict], source: str, column_map: dict[str, str]) -> tuple[list, int]:
    """The source's English {prompt_id, instruction} rows, and how many rows had another lang."""
    col = {t: next((s for s, d in column_map.items() if d == t), t) for t in TARGETS}
    out, other, seen = [], 0, {}
    for n, row in enumerate(rows, 1):
        if col["instruction"] not in row:
            mapped = " (mapped to instruction)" if col["instruction"] != "instruction" else ""
            raise TranslateError(f"{source}: row {n} lacks column '{col['instruction']}'{mapped}; "
                                 f"it has {', '.join(row) or 'none'} (see --column-map)")  # fmt: skip
        text = row[col["instruction"]]
        if not isinstance(text, str) or not text.strip():
            raise TranslateError(f"{source}: row {n}: empty '{col['instruction']}'")
        if row.get(col["lang"]) not in ("en", None):
            other += 1
            continue
        pid = row.get(col["prompt_id"])
        pid = hashlib.sha256(text.encode()).hexdigest() if pid is None else pid
        pid = str(pid) if isinstance(pid, int) else pid
        if not isinstance(pid, str) or not pid:
            raise TranslateError(f"{source}: row {n}: prompt_id must be a non-empty string")
        if pid in seen:
            raise TranslateError(f"{source}: row {n}: prompt_id {pid} is also row {seen[pid]}")
        seen[pid] = n
        out.append({"prompt_id": pid, "instruction": text})
    if not out:
        raise TranslateError(f"{source}: no English prompts")
    return out, other


def dedup(rows: list[dict]) -> tuple[list[dict], int]:
    """The first of each group of near-identical instructions, and how many others were dropped."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = near_key(r["instruction"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out, len(rows) - len(out)


def sample_rows(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """`limit` rows drawn with `seed`, in source order (the same seed gives the same rows)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]


def run_engine(
    model_path: str,
    requests: list[dict],
    cfg: TranslateConfig,
    executor=None,
    model_id: dict | None = None,
) -> list[tuple[str, str]]:
    """(text, finish_reason) per request: greedy, through the build's generation stage, shard by
    shard on `executor` (default: in memory; translate passes one whose work resumes)."""
    from icr_data.base.config import SamplingConfig
    from icr_data.core.executor import LocalExecutor, MemoryWork
    from icr_data.core.runner import run_rows

    scfg = SamplingConfig(backend=cfg.backend, n=1, temperature=0.0, top_p=1.0, seed=cfg.seed,
                          max_tokens=cfg.max_tokens, dtype=cfg.dtype,
                          max_model_len=cfg.max_model_len)  # fmt: skip
    stage = greedy_stage(model_path, model_id or {"name": model_path}, scfg, cfg.chat_template)
    executor = executor or LocalExecutor(MemoryWork())
    out, _ = run_rows(executor, stage, Dataset.from_list(requests), SHARD_PROMPTS, "translate")
    return list(zip(out["response"], out["finish_reason"]))


def greedy_stage(model_path: str, model_id: dict, sampling, chat_template: str | None = None):
    """The generation stage as a translator: one greedy sample per request (temperature 0)."""
    import dataclasses

    from icr_data.stages.stages import GenerateStage, model_key

    greedy = dataclasses.replace(sampling, n=1, temperature=0.0, top_p=1.0)
    return GenerateStage(model=model_path, model_key=model_key(model_id), sampling=greedy,
                         chat_template=chat_template, model_id=model_id)  # fmt: skip


def response_translator(model_path: str, model_id: dict, sampling, chat_template: str | None,
                        option: str = "scoring.translator"):  # fmt: skip
    """scoring.mode translate_en: the stage that translates responses to English, greedily, with
    up to twice the responses' own token limit (a translation can be longer than its source).
    A classifier (an explicit reward model) is refused here, from its config, before it loads."""
    import dataclasses

    from icr_data.stages.architecture import check_causal_lm

    check_causal_lm(model_path, f"{option}: model {model_id.get('name', model_path)}")
    longer = dataclasses.replace(sampling, max_tokens=2 * sampling.max_tokens)
    return greedy_stage(model_path, model_id, longer, chat_template)


def english_requests(rows: Dataset) -> Dataset:
    """Requests translating each non-English response of `rows` (prompt_id, lang, response) into
    English with DEFAULT_TEMPLATE, in row order (English rows need none)."""
    other = [i for i, lang in enumerate(rows["lang"]) if lang != "en"]
    sub = rows.select(other)
    return Dataset.from_dict({
        "prompt_id": sub["prompt_id"], "lang": sub["lang"],
        "instruction": [render_request(DEFAULT_TEMPLATE, y, "en", source=lang)
                        for y, lang in zip(sub["response"], sub["lang"])],
    })  # fmt: skip


def with_english(rows: Dataset, translations: list[str]) -> Dataset:
    """`rows` + response_en: each English response as it is, each other one's translation (the
    outputs of english_requests(rows), in its order)."""
    it = iter(translations)
    english = [y if lang == "en" else next(it) for y, lang in zip(rows["response"], rows["lang"])]
    return rows.add_column("response_en", english)


def translate(cfg: TranslateConfig, console=None, progress=None) -> tuple[Path, dict]:
    """Load, dedup, sample, translate, gate, and write a new prompts version: (folder, manifest).
    Translation work is kept under <out>/<name>/.work, so a killed run resumes."""
    from icr_data.base.logs import log_to
    from icr_data.commands import prepare
    from icr_data.core.executor import LocalExecutor
    from icr_data.stages import models
    from icr_data.stages.architecture import check_causal_lm
    from icr_data.store.shards import WorkDir
    from icr_data.store.store import sha256_file, write_version

    check_config(cfg)
    template = load_template(cfg.template)
    rows = read_source(cfg)  # source errors first: they are the common ones, and cheap to find
    english, other = english_rows(rows, cfg.source, cfg.column_map)
    model_path = prepare.resolve_models({"--model": cfg.model}, console)["--model"]
    check_causal_lm(model_path, f"--model: model {cfg.model}")  # before it loads
    unique, removed = dedup(english)
    picked = sample_rows(unique, cfg.limit, cfg.seed)
    jobs = [(lang, r) for lang in cfg.languages for r in picked]
    requests = [
        {"prompt_id": r["prompt_id"], "lang": lang,
         "instruction": render_request(template, r["instruction"], lang)}
        for lang, r in jobs
    ]  # fmt: skip
    model_id = models.identity(cfg.model, model_path)
    work = WorkDir(Path(cfg.out) / cfg.name / ".work")
    log_to(work.root / "logs" / "third_party.log")  # engine logs, off the terminal
    executor = LocalExecutor(work, console, progress)
    outputs = run_engine(model_path, requests, cfg, executor, model_id)
    detected = detect_languages(
        [t for t, _ in outputs],
        [lang for lang, _ in jobs],
        ["en", *cfg.languages],
        cfg.min_lid_letters,
    )

    kept = [{"prompt_id": r["prompt_id"], "lang": "en", "instruction": r["instruction"]}
            for r in picked]  # fmt: skip
    counts = {lang: {"sources": len(picked), "kept": 0, "failed": 0, "reasons": {}}
              for lang in ["en", *cfg.languages]}  # fmt: skip
    counts["en"]["kept"] = len(picked)
    failures: list[dict] = []
    for (lang, r), (text, finish), lid in zip(jobs, outputs, detected):
        src, c = r["instruction"], counts[lang]
        reasons = gate_reasons(src, text, lang, lid, finish, cfg.bounds(lang), cfg.min_ratio_chars)
        if not reasons:
            c["kept"] += 1
            kept.append({"prompt_id": r["prompt_id"], "lang": lang, "instruction": text})
            continue
        c["failed"] += 1
        c["reasons"][reasons[0]] = c["reasons"].get(reasons[0], 0) + 1
        failures.append({"prompt_id": r["prompt_id"], "lang": lang, "reason": reasons[0],
                         "reasons": reasons, "ratio": len(text) / len(src), "detected_lang": lid,
                         "source": src, "translation": text})  # fmt: skip

    local = Path(cfg.source).expanduser()
    local = local if local.exists() else None
    manifest = {
        "kind": "prompts", "dataset": cfg.name, "version": None,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "code_version": f"icr-data {icr_data.__version__}",
        # A local source is named by file name and content hash, never by this machine's path.
        "source": {"spec": local.name if local else cfg.source,
                   "sha256": sha256_file(local) if local and local.is_file() else None,
                   "split": None if local else cfg.split, "column_map": cfg.column_map,
                   "rows": len(rows), "other_language_rows": other, "english_rows": len(english)},
        "model": model_id,
        "template": {"default": cfg.template is None, "text": template,
                     "file": Path(cfg.template).name if cfg.template else None},
        "languages": ["en", *cfg.languages],
        "decoding": {"backend": cfg.backend, "temperature": 0.0, "max_tokens": cfg.max_tokens,
                     "dtype": cfg.dtype, "max_model_len": cfg.max_model_len,
                     "chat_template": cfg.chat_template},
        "gates": {"order": list(GATES), "min_ratio_chars": cfg.min_ratio_chars,
                  "min_lid_letters": cfg.min_lid_letters,
                  "ratio_bounds": {lang: list(cfg.bounds(lang)) for lang in cfg.languages}},
        "seed": cfg.seed, "limit": cfg.limit,
        "dedup": {"rule": DEDUP_RULE, "removed": removed},
        "sampled": len(picked),
        "counts": counts,
        # Every gate each failure failed (a failure can fail several; `counts` has the first).
        "gate_failures": {lang: dict(Counter(g for f in failures if f["lang"] == lang
                                             for g in f["reasons"])) for lang in cfg.languages},
        "totals": {"prompts": len(kept), "failures": len(failures)},
    }  # fmt: skip
    columns = {k: [f[k] for f in failures] for k in FAILURE_FEATURES}
    tables = {
        "prompts": Dataset.from_list(kept),
        "failures": Dataset.from_dict(columns, features=FAILURE_FEATURES),
    }
    path = write_version(cfg.out, cfg.name, tables, manifest, render_card, name=cfg.version)
    return path, manifest


def render_card(manifest: dict) -> str:
    """README.md of a prompts version: cards/prompts_card.md under a YAML header for the Hub."""
    import yaml

    from icr_data.store.card import environment, size_category

    files = manifest["files"]
    header = {
        "language": manifest["languages"],
        "license": "other",
        "task_categories": ["text-generation"],
        "size_categories": [size_category(manifest["totals"]["prompts"])],
        "tags": ["prompts", "multilingual", "machine-translated", "icr-data"],
        "pretty_name": f"{manifest['dataset']} {manifest['version']}",
        # Exact file names, not a glob: `datasets` keys its cache on this metadata (see store.py).
        "configs": [
            {"config_name": "prompts", "default": True,
             "data_files": [{"split": "train", "path": files["prompts"][0]}]},
            {"config_name": "failures", "data_files": [{"split": "train", "path": files["failures"][0]}]},
        ],
    }  # fmt: skip
    env = environment()
    head = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    return env.get_template("prompts_card.md").render(header=head, m=manifest)
