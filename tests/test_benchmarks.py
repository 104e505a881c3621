"""check-reward --benchmark: the M-RewardBench and MM-Eval loaders on small files written here in
each benchmark's Hub layout (config folders, file names and columns as on the Hub), their
errors, the summary and verdict on known rewards, and the command end to end on the tiny
models with the record's numbers recomputed from its rows. No network."""

import json
from pathlib import Path

import pytest
from datasets import Dataset

from icr_data.base.config import ScoringConfig
from icr_data.base.errors import IcrError
from icr_data.commands.reward_check import CheckError, VerdictRule, check_benchmark, summarize
from icr_data.stages.agreement import wilson
from icr_data.stages.pref_benchmarks import M_REWARDBENCH, BenchmarkError, load_benchmark

MRB_CONFIGS = {"es": "spa_Latn", "de": "deu_Latn", "fr": "fra_Latn", "ru": "rus_Cyrl"}
ITEMS = [  # (RewardBench id, subset, category, English prompt, chosen, rejected)
    (30, "alpacaeval-easy", "Chat", "Name three fruits.", "Apple, banana and cherry.", "No."),
    (31, "mt-bench-easy", "Chat", "Say hello politely.", "Hello, nice to meet you!", "Go away."),
    (402, "llmbar-natural", "Chat Hard", "Count to three.", "One, two, three.", "Seven, one."),
    (1201, "refusals-dangerous", "Safety", "How do I pick a lock?", "I can't help with that.",
     "Take a pin and..."),
    (2500, "math-prm", "Reasoning", "What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
]  # fmt: skip


def write_mrb(root: Path, langs=("es", "de", "fr", "ru"), english_ids=None, edit=None) -> Path:
    """A local copy of CohereLabsCommunity/multilingual-reward-bench: <config>/test-*.parquet per
    language (the card's columns), eng_Latn/filtered.json (RewardBench's English items) and the
    card's `configs:` header. `edit(lang, rows)` may damage rows before they are written."""
    configs = []
    for lang in langs:
        cfg = MRB_CONFIGS[lang]
        rows = [{"id": i, "language": cfg, "prompt": f"[{lang}] {p}", "chosen": f"[{lang}] {c}",
                 "rejected": f"[{lang}] {r}", "chosen_model": "gpt-4", "rejected_model": "llama",
                 "source": s, "category": cat} for i, s, cat, p, c, r in ITEMS]  # fmt: skip
        if edit:
            edit(lang, rows)
        (root / cfg).mkdir(parents=True)
        Dataset.from_list(rows).to_parquet(str(root / cfg / "test-00000-of-00001.parquet"))
        configs.append(f"- config_name: {cfg}\n  data_files:\n  - split: test\n"
                       f"    path: {cfg}/test-*\n")  # fmt: skip
    english = [{"prompt": p, "chosen": c, "chosen_model": "gpt-4", "rejected": r,
                "rejected_model": "llama", "subset": s, "id": i}
               for i, s, _, p, c, r in ITEMS if english_ids is None or i in english_ids]  # fmt: skip
    (root / "eng_Latn").mkdir(parents=True)
    (root / "eng_Latn" / "filtered.json").write_text(json.dumps(english, indent=4))
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    return root


def write_mm_eval(root: Path) -> Path:
    """A local copy of prometheus-eval/MM-Eval: data/test-00000-of-00001.parquet."""
    rows = []
    for lang, subsets in (("en", ("chat", "safety")), ("de", ("chat", "reasoning")),
                          ("sw", ("reasoning", "lang_res"))):  # fmt: skip
        for s in subsets:
            for i in range(3):
                rows.append({"prompt": f"{lang} {s} question {i}", "chosen": f"good answer {i}",
                             "rejected": f"bad {i}", "language": lang, "subset": s, "id": i,
                             "chosen_model": "a", "rejected_model": "b"})  # fmt: skip
    for n, r in enumerate(rows):
        r["__index_level_0__"] = n
    (root / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_m_rewardbench_loader_reads_the_hub_layout(tmp_path):
    def same_text(lang, rows):
        if lang == "de":
            rows[1]["rejected"] = rows[1]["chosen"]  # a translation that made them equal

    root = write_mrb(tmp_path / "mrb", edit=same_text)
    b = load_benchmark("m-rewardbench", ["es", "de"], path=root)
    assert b.parallel and b.identical == {"de": 1}
    by = {(r["lang"], r["item_id"]): r for r in b.rows}
    assert sorted({lang for lang, _ in by}) == ["de", "en", "es"]
    assert len(b.rows) == 5 + 5 + 4  # en, es, de less its identical pair
    assert by[("es", "402")]["instruction"] == "[es] Count to three."
    assert by[("es", "402")]["category"] == "Chat Hard"
    assert by[("en", "1201")]["category"] == "Safety"  # from RewardBench's subset map
    assert by[("en", "30")]["chosen"] == "Apple, banana and cherry."
    # the files are what `datasets` reads from that layout by config name (the card's configs)
    from datasets import load_dataset

    hub = load_dataset(str(root), "spa_Latn", split="test")
    assert [str(i) for i in hub["id"]] == [r["item_id"] for r in b.rows if r["lang"] == "es"]
    # subsets (any spelling of a category), config names, and the first N items
    chat_hard = load_benchmark("m-rewardbench", ["spa_Latn"], ["chat_hard"], path=root)
    assert {(r["lang"], r["item_id"]) for r in chat_hard.rows} == {("en", "402"), ("es", "402")}
    first = load_benchmark("m-rewardbench", ["es", "fr"], path=root, limit=2)
    assert sorted({r["item_id"] for r in first.rows}) == ["30", "31"] and len(first.rows) == 6


def test_the_hub_code_path_on_a_folder_in_the_hub_layout(tmp_path, monkeypatch):
    """Without --benchmark-path the loader calls load_dataset(HUB_ID, config, split="test") and,
    for the English twins, load_dataset(HUB_ID, data_files=eng_Latn/filtered.json): the same
    calls, with the Hub id replaced by a folder in its layout (the card's configs)."""
    from icr_data.stages import pref_benchmarks

    root = write_mrb(tmp_path / "mrb", langs=("es", "ru"))
    local = load_benchmark("m-rewardbench", ["es", "ru"], path=root)
    monkeypatch.setattr(pref_benchmarks, "M_REWARDBENCH", str(root))
    hub = load_benchmark("m-rewardbench", ["es", "ru"])
    assert hub.source == str(root) and hub.rows == local.rows and len(hub.rows) == 15


def test_m_rewardbench_errors_name_the_language_file_and_row(tmp_path):
    root = write_mrb(tmp_path / "mrb", langs=("es", "de"))
    with pytest.raises(BenchmarkError, match=r"no language sw, fr in .*mrb; available: en, de, es"):
        load_benchmark("m-rewardbench", ["es", "sw", "fr"], path=root)
    with pytest.raises(BenchmarkError, match=r"--subset: m-rewardbench has no poetry .*available: "
                                             "chat, chat-hard, reasoning, safety"):  # fmt: skip
        load_benchmark("m-rewardbench", ["es"], ["poetry"], path=root)

    def damage(lang, rows):
        if lang == "de":
            rows[2]["chosen"] = "  "

    bad = write_mrb(tmp_path / "bad", langs=("es", "de"), edit=damage)
    with pytest.raises(BenchmarkError, match=r"deu_Latn/test-00000-of-00001.parquet: row 3 "
                                             r"\(id 402\): 'chosen' must be a non-empty string"):  # fmt: skip
        load_benchmark("m-rewardbench", ["es", "de"], path=bad)

    def drop_category(lang, rows):
        for r in rows:
            del r["category"]

    old = write_mrb(tmp_path / "old", langs=("es",), edit=drop_category)
    with pytest.raises(BenchmarkError, match=r"spa_Latn/test-00000-of-00001.parquet: no column "
                                             "category"):  # fmt: skip
        load_benchmark("m-rewardbench", ["es"], path=old)
    with pytest.raises(BenchmarkError, match="--benchmark must be one of m-rewardbench, mm-eval"):
        load_benchmark("rewardbench", ["es"], path=root)
    with pytest.raises(BenchmarkError, match="--benchmark-path not found"):
        load_benchmark("m-rewardbench", ["es"], path=tmp_path / "nowhere")


def test_items_without_english_twin_stop_a_cross_lingual_check(tmp_path):
    root = write_mrb(tmp_path / "mrb", langs=("es",), english_ids={30, 31, 402})
    with pytest.raises(CheckError, match=r"2 item\(s\) have no English twin \(es: ids 1201, 2500\)"
                                         ".*--mode native"):  # fmt: skip
        check_benchmark("m-rewardbench", "unused-policy", "unused-reference", ScoringConfig(),
                        languages=["es"], path=root, store=tmp_path / "store")  # fmt: skip
    assert not (tmp_path / "store").exists()  # refused before any model or record


def test_mm_eval_loader_languages_subsets_and_modes(tmp_path):
    root = write_mm_eval(tmp_path / "mm")
    b = load_benchmark("mm-eval", path=root)
    assert not b.parallel
    assert {(r["lang"], r["category"]) for r in b.rows} == {
        ("en", "chat"),
        ("en", "safety"),
        ("de", "chat"),
        ("de", "reasoning"),
        ("sw", "reasoning"),
    }  # lang_res only when asked for
    assert len(load_benchmark("mm-eval", ["sw"], ["lang_res"], path=root).rows) == 3
    file = root / "data" / "test-00000-of-00001.parquet"
    assert len(load_benchmark("mm-eval", ["de"], path=file).rows) == 6  # the file itself works
    with pytest.raises(BenchmarkError, match="mm-eval has no language fr in .*; available: de, en"):
        load_benchmark("mm-eval", ["de", "fr"], path=root)
    with pytest.raises(CheckError, match="not parallel .*use --mode native"):
        check_benchmark("mm-eval", "p", "r", ScoringConfig(), languages=["de"], path=root,
                        store=tmp_path / "store")  # fmt: skip


def _row(item, lang, cat, cross, native=None):
    """A scored row: margins (chosen - rejected) per mode as rewards (chosen = m, rejected = 0)."""
    native = cross if native is None else native
    return {"item_id": item, "lang": lang, "category": cat, "cross_lingual_chosen": cross,
            "cross_lingual_rejected": None if cross is None else 0.0,
            "native_chosen": native, "native_rejected": 0.0}  # fmt: skip


def test_summary_gap_modes_and_verdicts_on_known_rewards():
    n = 20
    right = {"en": 18, "de": 19, "fr": 15, "ru": 10}  # accuracies 0.90, 0.95, 0.75, 0.50
    rows = []
    for lang, k in right.items():
        for i in range(n):
            cat = "Chat" if i < 10 else "Safety"
            cross = 1.0 if i < k else -1.0
            native = 1.0 if i < 12 else -1.0  # native mode: 12 of 20 right in every language
            rows.append(_row(str(i), lang, cat, cross, cross if lang == "en" else native))
    rows.append(_row("orphan", "de", "Chat", None, 1.0))  # no English twin (native only)
    out = summarize(rows, "cross_lingual", True, VerdictRule())
    assert [out[x]["verdict"] for x in ("en", "de", "fr", "ru")] == [
        "build", "build", "doubtful", "do not build"]  # fmt: skip
    assert out["fr"]["accuracy"] == pytest.approx(0.75, abs=1e-12)
    assert out["fr"]["gap"] == pytest.approx(0.75 - 0.90, abs=1e-12)
    assert out["fr"]["ci95"] == pytest.approx(list(wilson(15, 20)), abs=1e-12)
    assert out["fr"]["ci95"][0] > 0.5  # above chance, but 0.15 below English: doubtful
    assert out["en"]["gap"] is None and out["en"]["modes"] is None
    assert out["ru"]["ci95"][0] <= 0.5 and "not told from chance" in out["ru"]["reason"]
    assert out["de"]["modes"] == pytest.approx({"items": 20, "cross_lingual": 0.95,
                                                "native": 0.60, "difference": 0.35,
                                                "same_order": 13 / 20}, abs=1e-12)  # fmt: skip
    # the orphan: in cross-lingual mode it was never scored (the command refuses it before)
    assert out["de"]["without_english"] == 1
    # per category: Chat holds items 0-9 (all right everywhere but ru), Safety items 10-19
    assert out["fr"]["by_category"]["Safety"]["accuracy"] == pytest.approx(0.5, abs=1e-12)
    assert out["fr"]["by_category"]["Safety"]["gap"] == pytest.approx(0.5 - 0.8, abs=1e-12)
    # a looser rule (a drop of up to 0.2 against English) builds fr
    loose = summarize(rows, "cross_lingual", True, VerdictRule(max_drop=0.2))
    assert loose["fr"]["verdict"] == "build"
    # native mode: the orphan counts for accuracy (21 pairs), not for the gap (20 twins)
    nat = summarize(rows, "native", True, VerdictRule())["de"]
    assert nat["pairs"] == 21 and nat["accuracy"] == pytest.approx(13 / 21, abs=1e-12)
    assert nat["gap"] == pytest.approx(12 / 20 - 18 / 20, abs=1e-12) and nat["gap_items"] == 20
    assert VerdictRule().verdict([0.6, 0.9], None)[1].endswith("no English twins: gap not measured")


def test_check_reward_on_m_rewardbench_end_to_end(tiny_pair, tmp_path, capsys):
    """The issue's command on a local copy, through the CLI: a record whose figures are those
    recomputed here from its rows, listed by `icr-data evals`."""
    from icr_data import cli
    from icr_data.store.store import read_manifest, read_table

    policy, reference = tiny_pair
    root = write_mrb(tmp_path / "mrb")
    store = tmp_path / "store"
    args = ["check-reward", "--benchmark", "m-rewardbench", "--benchmark-path", str(root),
            "--languages", "es,de,fr,ru", "--policy", str(policy), "--reference", str(reference),
            "--store", str(store)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    path = Path(out.strip())
    assert path == store / "check-m-rewardbench" / "v1"
    m = read_manifest(path)
    rows = read_table(path, "rows").to_list()
    assert m["kind"] == "reward_check" and m["languages"] == ["en", "es", "de", "fr", "ru"]
    assert len(rows) == 25 and m["scoring"]["mode"] == "cross_lingual"

    def acc(rs, mode):
        return sum(r[f"{mode}_chosen"] > r[f"{mode}_rejected"] for r in rs) / len(rs)

    en = {r["item_id"]: r for r in rows if r["lang"] == "en"}
    assert all(r["cross_lingual_chosen"] == r["native_chosen"] for r in en.values())
    for lang in ("es", "de", "fr", "ru"):
        mine = [r for r in rows if r["lang"] == lang]
        got = m["results"][lang]
        k = sum(r["cross_lingual_chosen"] > r["cross_lingual_rejected"] for r in mine)
        assert got["pairs"] == 5 and got["accuracy"] == pytest.approx(k / 5, abs=1e-12)
        assert got["ci95"] == pytest.approx(list(wilson(k, 5)), abs=1e-12)
        english = acc([en[r["item_id"]] for r in mine], "cross_lingual")
        assert got["gap"] == pytest.approx(k / 5 - english, abs=1e-12)
        assert got["modes"]["native"] == pytest.approx(acc(mine, "native"), abs=1e-12)
        assert got["verdict"] == VerdictRule().verdict(got["ci95"], got["gap"])[0]
        # the directive and the English instruction change the scoring prompt, so the rewards
        assert all(abs(r["cross_lingual_chosen"] - r["native_chosen"]) > 1e-6 for r in mine)
        assert mine[0]["english_instruction"] == en[mine[0]["item_id"]]["instruction"]
    assert "verdict rule: build: the 95% Wilson interval" in err
    assert "ru: do not build: 95% interval" in err  # 5 pairs cannot clear chance
    from io import StringIO

    from rich.console import Console

    from icr_data.commands.reward_check import tables

    term = Console(file=StringIO(), width=80)
    for table in tables(m):
        term.print(table)
    drawn = term.file.getvalue().splitlines()
    assert max(map(len, drawn)) <= 80 and not any("…" in line for line in drawn)
    heads = [line for line in drawn if line.startswith("┃ lang")]
    assert "verdict" in heads[0] and len(heads) == 2  # whole, not split over several tables
    card = (path / "README.md").read_text()
    assert "5 items in en, es, de, fr, ru" in card and f"| ru | 5 | {got['accuracy']:.3f} |" in card
    # `icr-data evals` lists it: per language accuracy / gap
    with pytest.raises(SystemExit):
        cli.main(["evals", "--store", str(store)])
    listed = capsys.readouterr().out
    assert "check-m-rewardbench/v1" in listed and "reward check: m-rewardbench" in listed
    assert f"{m['results']['es']['accuracy']:.2f} / {m['results']['es']['gap']:.2f}" in listed


def test_a_record_name_taken_by_a_dataset_is_refused(tmp_path):
    from synthetic import tables

    from icr_data.store.card import render_card
    from icr_data.store.store import write_version

    data, manifest = tables()
    write_version(tmp_path / "store", "check-m-rewardbench", data, manifest, render_card)
    root = write_mrb(tmp_path / "mrb", langs=("es",))
    with pytest.raises(CheckError, match="--name 'check-m-rewardbench' is taken in .*not a reward"):
        check_benchmark("m-rewardbench", "p", "r", ScoringConfig(), languages=["es"], path=root,
                        store=tmp_path / "store")  # fmt: skip
    inside = tmp_path / "store" / "check-m-rewardbench" / "v1" / "records"
    with pytest.raises(IcrError, match=r"--store .*records/check-x is inside the version"):
        check_benchmark("m-rewardbench", "p", "r", ScoringConfig(), languages=["es"], path=root,
                        store=inside, name="check-x")  # fmt: skip
    assert not inside.exists()


def test_check_reward_on_mm_eval_scores_natively_without_a_gap(tiny_pair, tmp_path, capsys):
    from icr_data import cli
    from icr_data.store.store import read_manifest, read_table

    policy, reference = tiny_pair
    root = write_mm_eval(tmp_path / "mm")
    with pytest.raises(SystemExit) as e:  # no --mode: native, mm-eval has no English twins
        cli.main(["check-reward", "--benchmark", "mm-eval", "--benchmark-path", str(root),
                  "--languages", "en,de", "--subset", "chat", "--policy", str(policy),
                  "--reference", str(reference), "--store", str(tmp_path / "s")])  # fmt: skip
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    m = read_manifest(Path(out.strip()))
    rows = read_table(Path(out.strip()), "rows").to_list()
    assert m["scoring"]["mode"] == "native" and not m["benchmark"]["parallel"]
    assert len(rows) == 6 and all(
        r["cross_lingual_chosen"] is None for r in rows if r["lang"] == "de"
    )
    for lang in ("en", "de"):
        got, mine = m["results"][lang], [r for r in rows if r["lang"] == lang]
        k = sum(r["native_chosen"] > r["native_rejected"] for r in mine)
        assert got["accuracy"] == pytest.approx(k / 3, abs=1e-12) and got["gap"] is None
        assert got["modes"] is None and list(got["by_category"]) == ["chat"]


def test_a_hub_benchmark_that_cannot_be_reached_is_one_error_before_any_load(monkeypatch):
    """Offline, a Hub id is refused before datasets.load_dataset (whose own retries take 20-30 s
    here before a traceback), naming the way out."""
    import datasets

    from icr_data.stages import x_alpacaeval
    from icr_data.stages.prompts import PromptError

    def load(*a, **k):
        raise AssertionError("load_dataset was called")

    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = r"from the Hub: HF_HUB_OFFLINE is set and it is not in the local Hub cache; download it"
    with pytest.raises(BenchmarkError, match=rf"^cannot load {M_REWARDBENCH} {hub}"):
        load_benchmark("m-rewardbench", ["es"])
    with pytest.raises(BenchmarkError, match=rf"^cannot load prometheus-eval/MM-Eval {hub}"):
        load_benchmark("mm-eval", ["es"])
    with pytest.raises(PromptError, match=r"zhihz0535/X-AlpacaEval: cannot load it: HF_HUB_OFF"):
        x_alpacaeval.from_hub("es")
