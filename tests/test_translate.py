"""Translate: the gates on hand-made translations, the prompt sources, and a translated version
that a build recipe reads as its prompts (tiny models through transformers and vLLM, and a
patched engine returning fixed translations for the 'kept' path)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from huggingface_hub import DatasetCard

from icr_data.base.config import PromptsConfig, ScoringConfig, load_recipe
from icr_data.commands import translate as tr
from icr_data.commands.translate import TranslateConfig, TranslateError
from icr_data.commands.translate_gates import (
    detect_languages,
    gate_reasons,
    near_key,
    protected_spans,
)
from icr_data.stages.prompts import load_prompts
from icr_data.store import store

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "es", "de", "fr", "ru"]

SKY = "Explain in two sentences why the sky is blue during the day."
SKY_ES = "Explica en dos frases por qué el cielo es azul durante el día."
LINK = "Visit https://example.com/guide and read section 4 before you reply with `yes` or {answer}."
LINK_ES = (
    "Visita https://example.com/guide y lee la sección 4 antes de responder con `yes` o {answer}."
)
CODE = "Fix the bug in this code:\n```python\ndef add(a, b):\n    return a - b\n```"
CODE_ES = "Corrige el error en este código:\n```python\ndef add(a, b):\n    return a - b\n```"
WALK = "The weather is lovely today, so we are going for a walk in the park."
WALK_ES = "Hoy hace un tiempo estupendo, así que vamos a pasear por el parque."
LONG_ANSWER_ES = (
    "El cielo es azul porque la luz del sol se dispersa en la atmósfera: las moléculas del aire "
    "dispersan mucho más la luz azul, de onda corta, que la roja. Por eso, durante el día, "
    "vemos ese color en todas las direcciones del cielo, y al atardecer el cielo se vuelve rojo."
)

# (source, translation into Spanish, finish_reason, expected reasons)
CASES = [
    (SKY, SKY_ES, "stop", []),
    (LINK, LINK_ES, "stop", []),
    (CODE, CODE_ES, "stop", []),
    (WALK, WALK_ES, "stop", []),
    (SKY, "Erkläre in zwei Sätzen, warum der Himmel tagsüber blau ist.", "stop", ["wrong_language"]),
    (WALK, WALK, "stop", ["wrong_language"]),  # copied, not translated
    ("Say hi to Ana.", "Say hi to Ana.", "stop", ["wrong_language"]),  # too short for lingua
    (SKY, "Claro, el cielo es azul porque la luz del sol se dispersa en el aire.", "stop",
     ["answered"]),
    (SKY, LONG_ANSWER_ES, "stop", ["answered", "length_ratio"]),
    (SKY, SKY + " The sky is blue because of Rayleigh scattering.", "stop",
     ["answered", "wrong_language"]),
    (SKY, "   ", "stop", ["empty"]),
    (SKY, SKY_ES, "length", ["truncated"]),
    (WALK, "Hace buen tiempo.", "stop", ["length_ratio"]),
    (WALK, WALK_ES + " " + WALK_ES + " " + WALK_ES, "stop", ["length_ratio"]),  # not a question
    (CODE, CODE_ES.replace("a - b", "a menos b"), "stop", ["code_block"]),
    (LINK, LINK_ES.replace("`yes`", "`sí`"), "stop", ["inline_code"]),
    (LINK, LINK_ES.replace("example.com", "ejemplo.com"), "stop", ["url"]),
    (LINK, LINK_ES.replace("{answer}", "{respuesta}"), "stop", ["placeholder"]),
    (LINK, LINK_ES.replace("sección 4", "sección cuatro"), "stop", ["number"]),
]  # fmt: skip


def reasons_of(cases, lang="es", bounds=(0.5, 2.5)):
    detected = detect_languages([out for _, out, _, _ in cases], [lang] * len(cases), LANGS)
    return [gate_reasons(src, out, lang, lid, fin, bounds)
            for (src, out, fin, _), lid in zip(cases, detected)]  # fmt: skip


def test_each_gate_on_hand_made_translations():
    got = reasons_of(CASES)
    for (_, out, _, want), reasons in zip(CASES, got):
        assert reasons == want, (out, reasons)
    first = Counter(r[0] if r else "kept" for r in got)
    assert first == {"kept": 4, "wrong_language": 3, "answered": 3, "empty": 1, "truncated": 1,
                     "length_ratio": 2, "code_block": 1, "inline_code": 1, "url": 1,
                     "placeholder": 1, "number": 1}  # fmt: skip


def test_per_language_bounds_and_locale_numbers():
    src = "Our team sold 1,000 units at 3.5 dollars each in 2023."
    out = "Unser Team hat 2023 1.000 Einheiten zu je 3,5 Dollar verkauft."
    assert gate_reasons(src, out, "de", "de") == []  # 1.000 / 3,5 are the same numbers
    assert gate_reasons(src, out.replace("2023", "2024"), "de", "de") == ["number"]
    assert gate_reasons(src, out, "de", "de", bounds=(1.2, 3.0)) == ["length_ratio"]
    assert gate_reasons("Hi.", "Bonjour à tous !", "fr", None) == []  # too short to judge a ratio
    fr = "Notre équipe a vendu 1 000 unités à 3,5 dollars chacune en 2023."
    assert gate_reasons(src, fr, "fr", "fr") == []  # French thousands: a space
    assert gate_reasons(src, fr.replace(" 000", "\u202f000"), "fr", "fr") == []  # narrow nbsp
    assert gate_reasons(src, fr.replace("1 000", "1 001"), "fr", "fr") == ["number"]
    # a grouped number inside code is the code's, not the sentence's
    assert gate_reasons(src, fr.replace("1 000", "`1 000`"), "fr", "fr") == ["number"]
    assert gate_reasons("List 5 200-word essays.", "Liste 5 essais de 200 mots.", "fr", "fr") == []


def test_language_id_leaves_undetectable_targets_unjudged():
    # lingua has no Norwegian: its text would be called Danish/English; it is not judged instead
    nb = "Forklar med to setninger hvorfor himmelen er blå om dagen."
    assert detect_languages([nb, SKY_ES], ["no", "es"], ["en", "no", "es"]) == [None, "es"]
    assert detect_languages([SKY], ["es"], ["en", "no", "es"]) == ["en"]


def test_repeated_target_language_is_refused():
    with pytest.raises(tr.TranslateError, match="es given more than once"):
        tr.check_config(TranslateConfig(source="x.jsonl", languages=["es", "de", "es"]))
    with pytest.raises(tr.TranslateError, match="--ratio: fr not among --to es,de"):
        tr.check_config(TranslateConfig(source="x.jsonl", languages=["es", "de"],
                                        ratio_by_lang={"fr": (0.5, 3.0)}))  # fmt: skip


def test_protected_spans_are_cut_out_in_order():
    spans, rest = protected_spans(
        "See https://a.org/v2/x. and ```x = 10``` with `y` {{name}} %s %(n)d <b>7</b> 1,500"
    )
    assert spans["url"] == {"https://a.org/v2/x": 1}  # the 2 inside is not also a number
    assert spans["code_block"] == {"```x = 10```": 1} and spans["inline_code"] == {"`y`": 1}
    assert spans["placeholder"] == {"{{name}}": 1, "%s": 1, "%(n)d": 1, "<b>": 1, "</b>": 1}
    assert spans["number"] == {"7": 1, "1500": 1}
    assert "https" not in rest and "10" not in rest


def test_near_identical_means_case_punctuation_and_space():
    assert near_key("Name  three fruits!") == near_key("name three fruits") == "name three fruits"
    assert near_key("Name four fruits.") != near_key("Name three fruits.")


# --- sources ---------------------------------------------------------------------------------

UF = [  # UltraFeedback's column names
    {"prompt_id": "a1", "prompt": "Name three fruits."},
    {"prompt_id": "a2", "prompt": "name three fruits"},  # near-duplicate of a1
    {"prompt_id": "a3", "prompt": "Write a haiku about rain."},
    {"prompt_id": "a4", "prompt": "  Name THREE fruits!!  "},  # near-duplicate of a1
    {"prompt_id": "a5", "prompt": "Explain recursion to a child."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def load_source(source, **kw):
    cfg = TranslateConfig(source=str(source), **kw)
    return tr.english_rows(tr.read_source(cfg), cfg.source, cfg.column_map)


def test_jsonl_parquet_and_datasets_folder_with_column_map(tmp_path):
    cmap = tr.parse_column_map("prompt=instruction, prompt_id=prompt_id")
    pq.write_table(pa.Table.from_pylist(UF), tmp_path / "uf.parquet")
    Dataset.from_list(UF).save_to_disk(str(tmp_path / "uf_ds"))
    jsonl = write_jsonl(tmp_path / "uf.jsonl", UF)
    for source in (jsonl, tmp_path / "uf.parquet", tmp_path / "uf_ds"):
        rows, other = load_source(source, column_map=cmap)
        assert [r["prompt_id"] for r in rows] == ["a1", "a2", "a3", "a4", "a5"] and other == 0
        assert rows[2]["instruction"] == "Write a haiku about rain."
    unique, removed = tr.dedup(rows)
    assert removed == 2 and [r["prompt_id"] for r in unique] == ["a1", "a3", "a5"]


def test_other_languages_skipped_and_missing_ids_hashed(tmp_path):
    import hashlib

    rows = [{"instruction": "Say hi.", "lang": "en"}, {"instruction": "Di hola.", "lang": "es"},
            {"instruction": "Say bye."}]  # fmt: skip
    got, other = load_source(write_jsonl(tmp_path / "p.jsonl", rows))
    assert other == 1 and [r["instruction"] for r in got] == ["Say hi.", "Say bye."]
    assert got[0]["prompt_id"] == hashlib.sha256(b"Say hi.").hexdigest()


@pytest.mark.parametrize(
    "rows, cmap, message",
    [
        ([UF[0], {"prompt_id": "a2", "text": "x"}], "prompt=instruction",
         r"p.jsonl: row 2 lacks column 'prompt' \(mapped to instruction\); it has prompt_id, text"),
        ([UF[0], {"prompt_id": "a2", "prompt": " "}], "prompt=instruction", r"p.jsonl: row 2: empty 'prompt'"),
        ([UF[0], UF[0]], "prompt=instruction", r"p.jsonl: row 2: prompt_id a1 is also row 1"),
        ([{"prompt": "x", "prompt_id": ""}], "prompt=instruction", r"row 1: prompt_id must be a non-empty"),
        ([UF[0]], "", r"row 1 lacks column 'instruction'"),
    ],
)  # fmt: skip
def test_bad_rows_are_named(tmp_path, rows, cmap, message):
    with pytest.raises(TranslateError, match=message):
        load_source(write_jsonl(tmp_path / "p.jsonl", rows), column_map=tr.parse_column_map(cmap))


def test_bad_options_are_named(tmp_path):
    with pytest.raises(TranslateError, match="--column-map: 'prompt' is not SOURCE=OURS"):
        tr.parse_column_map("prompt")
    with pytest.raises(TranslateError, match="--column-map: 'prompt=text'"):
        tr.parse_column_map("prompt=text")
    with pytest.raises(TranslateError, match="--ratio: 'ru=2' is not LO:HI"):
        tr.parse_ratios(["ru=2"])
    assert tr.parse_ratios(["0.4:3", "ru=0.6:2.8"]) == ((0.4, 3.0), {"ru": (0.6, 2.8)})
    with pytest.raises(
        TranslateError, match=r"--ratio \(ru\): need finite 0 <= LO < HI, got 3.0:1.0"
    ):
        tr.check_config(TranslateConfig(ratio_by_lang={"ru": (3.0, 1.0)}))
    with pytest.raises(TranslateError, match="--to: unknown language code 'xx'"):
        tr.check_config(TranslateConfig(languages=["es", "xx"]))
    with pytest.raises(TranslateError, match="--to: en is the source language"):
        tr.check_config(TranslateConfig(languages=["en", "es"]))
    with pytest.raises(TranslateError, match="prompts source not found: ./nowhere.jsonl"):
        tr.read_source(TranslateConfig(source="./nowhere.jsonl"))
    (tmp_path / "t.txt").write_text("Translate to {target_language}.")
    with pytest.raises(TranslateError, match=r"--template .*t.txt: has no \{text\} placeholder"):
        tr.load_template(str(tmp_path / "t.txt"))


def test_seeded_sample_is_deterministic():
    rows = [{"prompt_id": f"p{i}", "instruction": f"Prompt {i}"} for i in range(50)]
    a, b = tr.sample_rows(rows, 10, seed=3), tr.sample_rows(rows, 10, seed=3)
    assert a == b and len(a) == 10
    positions = [int(r["prompt_id"][1:]) for r in a]
    assert positions == sorted(positions)  # source order kept
    assert a != tr.sample_rows(rows, 10, seed=4)
    assert tr.sample_rows(rows, 80, seed=3) == rows


def test_request_names_both_languages_and_keeps_braces():
    text = tr.render_request(tr.DEFAULT_TEMPLATE, "Use {x} and {target_language}.", "de")
    assert text.startswith("Translate the following text from English to German. Translate only")
    assert "do not answer it" in text and text.endswith("\n\nUse {x} and {target_language}.")


# --- versions --------------------------------------------------------------------------------

SOURCES = [
    {"prompt_id": "sky", "instruction": SKY},
    {"prompt_id": "link", "instruction": LINK},
    {"prompt_id": "code", "instruction": CODE},
    {"prompt_id": "walk", "instruction": WALK},
    {"prompt_id": "walk2", "instruction": WALK.upper()},  # near-duplicate: never translated
]
FIXED = {  # (prompt_id, lang) -> what the patched engine answers
    ("sky", "es"): SKY_ES, ("link", "es"): LINK_ES, ("code", "es"): CODE_ES,
    ("walk", "es"): "Hace buen tiempo.",
    ("sky", "de"): SKY_ES,  # Spanish where German was asked for
    ("link", "de"): "Besuche https://example.com/guide und lies Abschnitt 4, bevor du mit `yes` "
                    "oder {answer} antwortest.",
    ("code", "de"): "Sure! Here is the fixed code:\n```python\ndef add(a, b):\n    return a + b\n```",
    ("walk", "de"): "",
}  # fmt: skip


def version_files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_fixed_translations_make_a_version_a_recipe_reads(tmp_path, monkeypatch):
    seen = []

    def engine(model_path, requests, cfg, executor=None, model_id=None):
        seen.extend(requests)
        return [(FIXED[(r["prompt_id"], r["lang"])], "stop") for r in requests]

    monkeypatch.setattr(tr, "run_engine", engine)
    src = write_jsonl(tmp_path / "en.jsonl", SOURCES)
    cfg = TranslateConfig(source=src, languages=["es", "de"], model="builtin:tiny-policy",
                          out=str(tmp_path / "store"), name="demo-prompts")  # fmt: skip
    path, m = tr.translate(cfg)
    assert path == tmp_path / "store" / "demo-prompts" / "v1"
    assert len(seen) == 8 and "from English to German" in seen[-1]["instruction"]
    assert m["dedup"]["removed"] == 1 and m["sampled"] == 4 and m["source"]["spec"] == "en.jsonl"
    assert m["counts"] == {
        "en": {"sources": 4, "kept": 4, "failed": 0, "reasons": {}},
        "es": {"sources": 4, "kept": 3, "failed": 1, "reasons": {"length_ratio": 1}},
        "de": {"sources": 4, "kept": 1, "failed": 3,
               "reasons": {"wrong_language": 1, "answered": 1, "empty": 1}},
    }  # fmt: skip
    # every gate a failure failed: the answered code is also English and lost the code block
    assert m["gate_failures"]["de"] == {"wrong_language": 2, "answered": 1, "code_block": 1,
                                        "empty": 1}  # fmt: skip
    assert m["model"]["name"] == "builtin:tiny-policy" and len(m["model"]["sha256"]) == 64
    kept = store.read_table(path, "prompts")
    assert sorted(zip(kept["lang"], kept["prompt_id"])) == [
        ("de", "link"), ("en", "code"), ("en", "link"), ("en", "sky"), ("en", "walk"),
        ("es", "code"), ("es", "link"), ("es", "sky")]  # fmt: skip
    failed = store.read_table(path, "failures")
    assert sorted(zip(failed["prompt_id"], failed["lang"], failed["reason"])) == [
        ("code", "de", "answered"), ("sky", "de", "wrong_language"), ("walk", "de", "empty"),
        ("walk", "es", "length_ratio")]  # fmt: skip

    # a recipe's prompt source, whole folder or its Parquet file
    recipe = load_recipe(ROOT / "recipes" / "demo_tiny.yaml",
                         [f"prompts.source={path}", "prompts.languages=[en, es, de]"])  # fmt: skip
    ds = load_prompts(recipe.prompts, recipe.scoring)
    assert len(ds) == 8
    de = ds.filter(lambda r: r["lang"] == "de")[0]
    assert de["instruction"] == FIXED[("link", "de")] and de["scoring_prompt"].endswith(LINK)
    parquet = next((path / "data" / "prompts").glob("*.parquet"))
    es = load_prompts(PromptsConfig(source=str(parquet), languages=["es"]), ScoringConfig())
    assert len(es) == 3

    card = DatasetCard.load(path / "README.md")
    assert card.data.language == ["en", "es", "de"]
    assert [c["config_name"] for c in card.data.configs] == ["prompts", "failures"]
    assert "| de | 4 | 1 | 3 |" in card.text

    before = {f: (path / f).read_bytes() for f in version_files(path)}
    again, _ = tr.translate(cfg)  # a new version; v1 is never touched
    assert again.name == "v2" and {f: (path / f).read_bytes() for f in before} == before
    assert version_files(again) == list(before)  # same content, same content-addressed names


def test_engine_is_greedy(monkeypatch):
    from icr_data.stages import generate

    seen = {}

    def fake_open(model, cfg, chat_template=None):
        seen.update(cfg=cfg, chat_template=chat_template)
        raise RuntimeError("stop here")

    monkeypatch.setattr(generate, "open_backend", fake_open)
    with pytest.raises(RuntimeError, match="stop here"):
        request = {"prompt_id": "a", "lang": "de", "instruction": "Translate: hi"}
        tr.run_engine("m", [request], TranslateConfig(max_tokens=7, backend="transformers"))
    cfg = seen["cfg"]
    assert (cfg.temperature, cfg.n, cfg.max_tokens, cfg.backend) == (0.0, 1, 7, "transformers")


def check_noise_version(path, m, n_sources, langs):
    """Tiny models write noise: nearly everything fails, and every failure is counted."""
    assert version_files(path)[:1] == ["README.md"] and "manifest.json" in version_files(path)
    assert [p.split("/")[1] for p in version_files(path) if p.startswith("data/")] == [
        "failures", "prompts"]  # fmt: skip
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    failed = store.read_table(path, "failures")
    for lang in langs:
        c = m["counts"][lang]
        assert c["sources"] == n_sources and c["kept"] + c["failed"] == n_sources
        assert sum(c["reasons"].values()) == c["failed"]
        assert c["reasons"] == dict(Counter(r for r, la in zip(failed["reason"], failed["lang"])
                                            if la == lang))  # fmt: skip
    assert m["counts"]["en"] == dict(sources=n_sources, kept=n_sources, failed=0, reasons={})
    assert sum(m["counts"][lang]["failed"] for lang in langs) >= len(langs) * n_sources - 1
    kept = store.read_table(path, "prompts")
    assert kept.filter(lambda r: r["lang"] == "en")["instruction"] == [
        s["instruction"] for s in SOURCES[:n_sources]]  # fmt: skip
    assert DatasetCard.load(path / "README.md").data.language == ["en", *langs]
    ds = load_prompts(PromptsConfig(source=str(path), languages=["en", *langs]), ScoringConfig())
    assert len(ds) == len(kept)


def test_tiny_model_through_transformers(tmp_path):
    src = write_jsonl(tmp_path / "en.jsonl", SOURCES[:3])
    cfg = TranslateConfig(source=src, languages=["es", "ru"], model="builtin:tiny-policy",
                          out=str(tmp_path / "store"), backend="transformers", max_tokens=6)  # fmt: skip
    import io

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=io.StringIO())) as progress:
        path, m = tr.translate(cfg, progress=progress)
        (task,) = progress.tasks
    assert (task.description, task.total, task.completed) == ("translate", 6, 6)
    assert m["decoding"]["temperature"] == 0.0
    check_noise_version(path, m, 3, ["es", "ru"])
    assert m["counts"]["es"]["reasons"].get("truncated") == 3  # 6 noise tokens never end a turn


@pytest.mark.vllm
def test_tiny_model_through_vllm_cli(tmp_path):
    src = write_jsonl(tmp_path / "en.jsonl", SOURCES)
    r = subprocess.run(
        [sys.executable, "-m", "icr_data.cli", "translate", src, "--to", "es,de",
         "--model", "builtin:tiny-policy", "--out", str(tmp_path / "store"), "--limit", "3",
         "--seed", "1", "--max-tokens", "12", "--name", "tr"],
        capture_output=True, text=True, env=dict(os.environ), timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "store" / "tr" / "v1"
    m = store.read_manifest(path)
    assert m["limit"] == 3 and m["dedup"]["removed"] == 1 and m["decoding"]["backend"] == "vllm"
    picked = tr.sample_rows(tr.dedup(SOURCES)[0], 3, seed=1)
    ids = store.read_table(path, "prompts").filter(lambda r: r["lang"] == "en")["prompt_id"]
    assert ids == [p["prompt_id"] for p in picked]
    for lang in ("es", "de"):
        c = m["counts"][lang]
        assert c["kept"] + c["failed"] == 3 and sum(c["reasons"].values()) == c["failed"]
    assert "failed by reason" in r.stderr and "wrote" in r.stderr


def test_cli_names_the_bad_row(tmp_path):
    src = write_jsonl(tmp_path / "uf.jsonl", [UF[0], {"prompt_id": "x", "text": "?"}])
    r = subprocess.run(
        [sys.executable, "-m", "icr_data.cli", "translate", src, "--to", "es",
         "--model", "builtin:tiny-policy", "--column-map", "prompt=instruction",
         "--out", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2
    assert "uf.jsonl: row 2 lacks column 'prompt' (mapped to instruction)" in r.stderr
    assert not (tmp_path / "store").exists()
