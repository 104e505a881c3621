"""Public multilingual preference benchmarks as labelled pairs, for `check-reward --benchmark`.

    items = load_benchmark("m-rewardbench", ["es", "de"], subsets=["chat"], path=None)
    items.rows   # one dict per (item, language): item_id, lang, instruction, chosen, rejected,
                 # category; items with the same item_id are the same item in several languages

Loading goes through `datasets`: from the Hub (`load_dataset(hub_id, config, split=...)`) when
no path is given, else from a local copy in the Hub layout (`huggingface-cli download HUB_ID
--repo-type dataset --local-dir DIR` makes one), read with `load_dataset("parquet"|"json",
data_files=...)` file by file, so an error names the file and row. Every row is checked; a
missing column or a row without an id, prompt, chosen or rejected text is one BenchmarkError
naming the file and row. Rows whose chosen and rejected texts are identical (a translation can
make them so) cannot rank either way: they are dropped and counted (`identical`).

The schemas, as read (2025) from each dataset card's YAML header, the Hub file listings and
the code that loads them:

m-rewardbench -- Hub `CohereLabsCommunity/multilingual-reward-bench` (M-RewardBench, arXiv
2410.15522). One config per language, named `<ISO 639-3>_<script>` (arb_Arab, ces_Latn,
deu_Latn, ..., zho_Hans: 22 languages, CONFIGS below; plus `translation`, a different task,
not read), each with one split `test` at `<config>/test-*.parquet` (card: `configs:`). Columns
(card: `dataset_info.features`): `id` int64, `language`, `prompt`, `chosen`, `rejected`,
`chosen_model`, `rejected_model`, `source` (the RewardBench subset, e.g. alpacaeval-easy) and
`category` (Chat, Chat Hard, Safety, Reasoning: RewardBench's sections, mapped from `source` by
the upload notebook, for-ai/aya_rm_multilingual notebooks/upload_to_hf.ipynb). Items are
machine translations of English RewardBench (allenai/reward-bench, split `filtered`), and `id`
is RewardBench's `id`: it ties an item to its English twin. The English items are in the same
repo as `eng_Latn/filtered.json` (the Hub file listing; the original `filtered`/`raw` JSON
files the configs were built from; RewardBench's columns `id, prompt, chosen, chosen_model,
rejected, rejected_model, subset`), read with `load_dataset(hub_id, data_files=...)`; a local
copy may hold them as `eng_Latn/test-*.parquet` instead. Their category comes from `subset`
through RewardBench's own section map (SECTIONS).

mm-eval -- Hub `prometheus-eval/MM-Eval` (arXiv 2410.17578): config `default`, split `test`,
one file `data/test-00000-of-00001.parquet` (Hub file listing). Columns, as the loaders in
guijinSON/MM-Eval (a RewardBench fork) and others read them: `prompt, chosen, rejected,
language` (ISO 639-1: en, es, de, ...), `subset` (chat, reasoning, safety, linguistics, the
language-hallucination subset, and a 122-language `lang_res*` subset left out unless asked
for), `id`, `chosen_model, rejected_model`. Its items are written per language, not
translated (the safety subset excepted): they are not parallel, so no item has an English
twin, and check-reward reports no transfer gap for it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from icr_data.base.errors import IcrError


class BenchmarkError(IcrError):
    """A benchmark that cannot be read as asked; the message names the file, row or option."""


M_REWARDBENCH = "CohereLabsCommunity/multilingual-reward-bench"
MM_EVAL = "prometheus-eval/MM-Eval"
CONFIGS = {
    "ar": "arb_Arab", "cs": "ces_Latn", "de": "deu_Latn", "el": "ell_Grek", "fr": "fra_Latn",
    "he": "heb_Hebr", "hi": "hin_Deva", "id": "ind_Latn", "it": "ita_Latn", "ja": "jpn_Jpan",
    "ko": "kor_Hang", "nl": "nld_Latn", "fa": "pes_Arab", "pl": "pol_Latn", "pt": "por_Latn",
    "ro": "ron_Latn", "ru": "rus_Cyrl", "es": "spa_Latn", "tr": "tur_Latn", "uk": "ukr_Cyrl",
    "vi": "vie_Latn", "zh": "zho_Hans",
}  # fmt: skip
"""M-RewardBench's language configs by ISO 639-1 code."""
ENGLISH_CONFIG = "eng_Latn"
ENGLISH_HUB_FILE = "eng_Latn/filtered.json"
SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
             "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                  "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}  # fmt: skip
"""RewardBench's sections by subset (allenai/reward-bench's card; rewardbench.constants)."""
SECTION_OF = {subset: section for section, subsets in SECTIONS.items() for subset in subsets}
BENCHMARKS = ("m-rewardbench", "mm-eval")
TEXT = ("prompt", "chosen", "rejected")


@dataclass
class Benchmark:
    """Labelled pairs of one benchmark: rows (see the module docstring) and what was read."""

    name: str
    hub_id: str
    parallel: bool
    """Items share an item_id across languages, English included (the transfer gap needs it)."""
    source: str
    """Where it was read: the Hub id, or the local path given."""
    rows: list[dict] = field(default_factory=list)
    identical: dict[str, int] = field(default_factory=dict)
    """Rows dropped per language because chosen and rejected are the same text."""


def subset_key(name: str) -> str:
    """A category as --subset matches it: 'Chat Hard', 'chat_hard' and 'chat-hard' are one."""
    return name.strip().lower().replace(" ", "-").replace("_", "-")


def load_benchmark(name: str, languages: list[str] | None = None,
                   subsets: list[str] | None = None, path: str | Path | None = None,
                   limit: int | None = None) -> Benchmark:  # fmt: skip
    """The benchmark's rows in `languages` (ISO 639-1; None: all it has) and `subsets`
    (categories, matched by subset_key; None: all but mm-eval's lang_res*), the first `limit`
    item_ids only; for a parallel benchmark the English rows of those items are always read."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {name!r}")
    if limit is not None and limit < 1:
        raise BenchmarkError(f"--limit must be >= 1, got {limit}")
    if path is not None and not Path(path).exists():
        raise BenchmarkError(f"--benchmark-path not found: {path}")
    bench = (_m_rewardbench if name == "m-rewardbench" else _mm_eval)(languages, path)
    _keep_subsets(bench, subsets, name)
    if limit is not None:
        first = list(dict.fromkeys(r["item_id"] for r in bench.rows))[:limit]
        keep = set(first)
        bench.rows = [r for r in bench.rows if r["item_id"] in keep]
    return bench


def _keep_subsets(bench: Benchmark, subsets: list[str] | None, name: str) -> None:
    have = list(dict.fromkeys(subset_key(r["category"]) for r in bench.rows))
    if subsets is None:
        bench.rows = [r for r in bench.rows if not subset_key(r["category"]).startswith("lang-res")]
        return
    wanted = [subset_key(s) for s in subsets]
    missing = [s for s, k in zip(subsets, wanted) if k not in have]
    if missing:
        raise BenchmarkError(f"--subset: {name} has no {', '.join(missing)} in the languages read; "
                             f"available: {', '.join(sorted(have))}")  # fmt: skip
    bench.rows = [r for r in bench.rows if subset_key(r["category"]) in wanted]


# ---------------------------------------------------------------------------- m-rewardbench
def _m_rewardbench(languages: list[str] | None, path) -> Benchmark:
    local = Path(path) if path is not None else None
    if local is not None and not local.is_dir():
        raise BenchmarkError(f"--benchmark-path {local}: m-rewardbench needs the folder of a local "
                             "copy (<config>/test-*.parquet, eng_Latn/filtered.json)")  # fmt: skip
    if local is None:
        available = dict(CONFIGS)
    else:
        available = {lang: cfg for lang, cfg in CONFIGS.items()
                     if sorted((local / cfg).glob("test-*.parquet"))}  # fmt: skip
    wanted = [lang for lang in (languages or list(available)) if lang != "en"]
    by_config = {cfg: lang for lang, cfg in CONFIGS.items()}
    wanted = [by_config.get(lang, lang) for lang in wanted]  # spa_Latn is es too
    missing = [lang for lang in wanted if lang not in available]
    if missing:
        where = M_REWARDBENCH if local is None else str(local)
        raise BenchmarkError(f"m-rewardbench has no language {', '.join(missing)} in {where}; "
                             f"available: {', '.join(['en', *sorted(available)])}")  # fmt: skip
    bench = Benchmark("m-rewardbench", M_REWARDBENCH, True, str(path or M_REWARDBENCH))
    if local is None:
        parts = [(lang, f"{M_REWARDBENCH} {cfg or ENGLISH_HUB_FILE}",
                  _hub(M_REWARDBENCH, cfg, split="test")) for lang, cfg in
                 [("en", None), *((lang, CONFIGS[lang]) for lang in wanted)]]  # fmt: skip
    else:
        english = sorted((local / ENGLISH_CONFIG).glob("test-*.parquet"))
        if not english and (local / ENGLISH_HUB_FILE).is_file():
            english = [local / ENGLISH_HUB_FILE]
        if not english:
            raise BenchmarkError(f"--benchmark-path {local}: no English items (neither "
                                 f"{ENGLISH_HUB_FILE} nor {ENGLISH_CONFIG}/test-*.parquet); the "
                                 "transfer gap and cross-lingual scoring need them")  # fmt: skip
        parts = [(lang, str(f), _local(f)) for lang, files in
                 [("en", english), *((lang, sorted((local / CONFIGS[lang]).glob("test-*.parquet")))
                                     for lang in wanted)] for f in files]  # fmt: skip
    need = ("id", *TEXT)
    seen: set[tuple[str, str]] = set()
    for lang, where, table in parts:
        group = "subset" if lang == "en" and "category" not in table.column_names else "category"
        _columns(table, where, (*need, group))
        for n, r in enumerate(table.to_list(), 1):
            category = r[group] if group == "category" else SECTION_OF.get(r[group], r[group])
            row = _row(r, n, where, lang, str(r["id"]) if r["id"] is not None else None, category)
            if row is None:
                bench.identical[lang] = bench.identical.get(lang, 0) + 1
                continue
            if (lang, row["item_id"]) in seen:
                raise BenchmarkError(f"{where}: row {n}: id {row['item_id']} appears twice")
            seen.add((lang, row["item_id"]))
            bench.rows.append(row)
    if wanted:  # English items no language read translates are no one's twin: not scored
        twins = {r["item_id"] for r in bench.rows if r["lang"] != "en"}
        bench.rows = [r for r in bench.rows if r["lang"] != "en" or r["item_id"] in twins]
    return bench


# ---------------------------------------------------------------------------------- mm-eval
def _mm_eval(languages: list[str] | None, path) -> Benchmark:
    if path is None:
        parts = [(f"{MM_EVAL} (split test)", _hub(MM_EVAL, None, split="test"))]
    else:
        p = Path(path)
        files = sorted((p / "data").glob("test-*.parquet")) if p.is_dir() else [p]
        if not files:
            raise BenchmarkError(f"--benchmark-path {p}: no data/test-*.parquet (MM-Eval's layout)")
        parts = [(str(f), _local(f)) for f in files]
    bench = Benchmark("mm-eval", MM_EVAL, False, str(path or MM_EVAL))
    seen: set[tuple[str, str]] = set()
    for where, table in parts:
        _columns(table, where, ("id", "language", "subset", *TEXT))
        for n, r in enumerate(table.to_list(), 1):
            lang = r["language"].strip().lower() if isinstance(r["language"], str) else ""
            if not lang:
                raise BenchmarkError(f"{where}: row {n}: 'language' must be a language code")
            item = None if r["id"] is None else f"{r['subset']}/{r['id']}"
            row = _row(r, n, where, lang, item, r["subset"])
            if row is None:
                bench.identical[lang] = bench.identical.get(lang, 0) + 1
                continue
            if (lang, item) in seen:
                raise BenchmarkError(f"{where}: row {n}: id {r['id']} ({r['subset']}, {lang}) "
                                     "appears twice")  # fmt: skip
            seen.add((lang, item))
            bench.rows.append(row)
    have = list(dict.fromkeys(r["lang"] for r in bench.rows))
    wanted = languages or have
    missing = [lang for lang in wanted if lang not in have]
    if missing:
        raise BenchmarkError(f"mm-eval has no language {', '.join(missing)} in {bench.source}; "
                             f"available: {', '.join(sorted(have))}")  # fmt: skip
    bench.rows = [r for r in bench.rows if r["lang"] in wanted]
    return bench


# ----------------------------------------------------------------------------- shared parts
def _row(r: dict, n: int, where: str, lang: str, item_id, category) -> dict | None:
    """One checked row; None when chosen and rejected are the same text."""
    if item_id is None:
        raise BenchmarkError(f"{where}: row {n}: 'id' is empty")
    for key in TEXT:
        if not isinstance(r[key], str) or not r[key].strip():
            raise BenchmarkError(f"{where}: row {n} (id {r['id']}): '{key}' must be a non-empty "
                                 f"string, got {r[key]!r:.40}")  # fmt: skip
    if not isinstance(category, str) or not category.strip():
        raise BenchmarkError(f"{where}: row {n} (id {r['id']}): no category (got {category!r})")
    if r["chosen"] == r["rejected"]:
        return None
    return {"item_id": item_id, "lang": lang, "instruction": r["prompt"], "chosen": r["chosen"],
            "rejected": r["rejected"], "category": category}  # fmt: skip


def _columns(table, where: str, need: tuple[str, ...]) -> None:
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise BenchmarkError(f"{where}: no column {', '.join(missing)} (has "
                             f"{', '.join(table.column_names)}); not the benchmark's layout")  # fmt: skip


def _local(file: Path):
    """One local file through datasets, fresh (a throwaway cache: never another file's rows)."""
    from datasets import load_dataset

    builder = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}.get(file.suffix)
    if builder is None:
        raise BenchmarkError(f"{file}: not a .parquet, .json or .jsonl file")
    with tempfile.TemporaryDirectory(prefix="icr-bench-") as cache:
        try:
            return load_dataset(builder, data_files=str(file), split="train", cache_dir=cache,
                                keep_in_memory=True)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - datasets and arrow raise many kinds here
            raise BenchmarkError(f"{file}: cannot be read as {builder} "
                                 f"({type(e).__name__}: {str(e)[:200]})") from None  # fmt: skip


def _hub(hub_id: str, config: str | None, split: str):
    """One config (None: the default; for M-RewardBench's English, its eng_Latn file) from the
    Hub; any failure (offline, renamed) is one error that names the local-copy way."""
    from datasets import load_dataset

    from icr_data.base.hf import unreachable_dataset

    if why := unreachable_dataset(hub_id):
        raise BenchmarkError(f"cannot load {hub_id} from the Hub: {why}; download it "
                             f"(huggingface-cli download {hub_id} --repo-type dataset "
                             "--local-dir DIR) and give --benchmark-path DIR")  # fmt: skip
    try:
        if hub_id == M_REWARDBENCH and config is None:
            return load_dataset(hub_id, data_files={split: ENGLISH_HUB_FILE}, split=split)
        return load_dataset(hub_id, config, split=split)
    except Exception as e:  # noqa: BLE001
        what = f"{hub_id} {config or ENGLISH_HUB_FILE}" if hub_id == M_REWARDBENCH else hub_id
        raise BenchmarkError(f"cannot load {what} from the Hub "
                             f"({type(e).__name__}: {str(e)[:160]}); download it "
                             f"(huggingface-cli download {hub_id} --repo-type dataset "
                             "--local-dir DIR) and give --benchmark-path DIR") from None  # fmt: skip
