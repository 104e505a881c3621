"""Bad input: one clear error naming the file, row or option, and nothing written."""

import errno
import json
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icr_data.base.config import PromptsConfig, RecipeError, ScoringConfig, load_recipe
from icr_data.base.languages import DIRECTIVE, LANGUAGES
from icr_data.commands import build as build_mod
from icr_data.commands.build import build
from icr_data.stages.chat import TemplateError
from icr_data.stages.models import ModelError
from icr_data.stages.prompts import PromptError, load_prompts
from icr_data.store import store

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo_tiny.yaml"


def recipe(tmp_path, tiny_pair, **extra):
    policy, reference = tiny_pair
    base = {"store": tmp_path / "store", "models.generator": policy, "models.policy": policy,
            "models.reference": reference, "sampling.backend": "transformers", "sampling.n": 2,
            "sampling.max_tokens": 6, "prompts.limit": 2, "prompts.languages": "[en, de]"}  # fmt: skip
    base.update(extra)
    return load_recipe(DEMO, [f"{k}={v}" for k, v in base.items()])


def nothing_written(tmp_path):
    return not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.parquet"))


def test_missing_english_skip_is_counted(tmp_path, tiny_pair):
    src = tmp_path / "p.jsonl"
    rows = [
        json.loads(x) for x in (ROOT / "recipes/data/demo_prompts.jsonl").read_text().splitlines()
    ]
    rows = [r for r in rows if not (r["lang"] == "en" and r["prompt_id"] == "demo-002")]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PromptError, match="prompt_id demo-002 \\(de\\) has no English row"):
        build(recipe(tmp_path, tiny_pair, **{"prompts.source": src, "prompts.limit": "null"}))
    assert nothing_written(tmp_path)
    skip = {"prompts.source": src, "prompts.limit": "null", "prompts.missing_english": "skip",
            "sampling.n": 1}  # fmt: skip
    result = build(recipe(tmp_path, tiny_pair, **skip))
    assert result.manifest["counts"]["de"]["prompts"] == 9
    assert result.manifest["counts"]["en"]["prompts"] == 9
    assert result.manifest["funnel"]["de"]["prompts_skipped"] == {"no_english_row": 1}


def test_malformed_parquet_is_named(tmp_path):
    bad = tmp_path / "p.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PromptError, match=r"p.parquet: not a readable Parquet file"):
        load_prompts(PromptsConfig(source=str(bad)), ScoringConfig())


def test_model_without_chat_template(tmp_path, tiny_pair):
    from transformers import AutoTokenizer

    bare = tmp_path / "bare"
    policy = tiny_pair[0]
    for f in policy.iterdir():
        (bare / f.name).parent.mkdir(exist_ok=True)
        (bare / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    assert not AutoTokenizer.from_pretrained(bare).chat_template
    models = {"models.generator": bare, "models.policy": bare, "models.reference": bare}
    with pytest.raises(TemplateError, match="has no chat template"):
        build(recipe(tmp_path, tiny_pair, **models))
    assert nothing_written(tmp_path)
    template = AutoTokenizer.from_pretrained(policy).chat_template
    (tmp_path / "chatml.jinja").write_text(template)
    result = build(
        recipe(tmp_path, tiny_pair, **models, **{"models.chat_template": tmp_path / "chatml.jinja"})
    )
    assert result.manifest["totals"]["candidates"] == 8


def test_missing_model_and_existing_version(tmp_path, tiny_pair):
    with pytest.raises(ModelError, match="models.reference: model path not found: ./nope"):
        build(recipe(tmp_path, tiny_pair, **{"models.reference": "./nope"}))
    assert not (tmp_path / "store").exists()
    build(recipe(tmp_path, tiny_pair), version="v1")
    with pytest.raises(store.StoreError, match="version v1 already exists"):
        build(recipe(tmp_path, tiny_pair), version="v1")


def test_read_only_store(tmp_path, tiny_pair, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(build_mod.tempfile, "TemporaryFile", refuse)
    with pytest.raises(
        store.StoreError, match=r"store is not writable: .*demo-tiny \(Read-only file system\)"
    ):
        build(recipe(tmp_path, tiny_pair))
    assert nothing_written(tmp_path)


def test_full_disk_mid_run_keeps_no_partial_shard(tmp_path, tiny_pair, monkeypatch):
    import pyarrow.parquet as pq

    real = pq.write_table
    calls = []

    def fill_up(table, where, *a, **k):
        calls.append(where)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", fill_up)
    r = recipe(tmp_path, tiny_pair, shard_prompts=1)
    with pytest.raises(
        store.StoreError, match=r"cannot write .*\.work: No space left on device \(disk full\)"
    ):
        build(r)
    work = tmp_path / "store" / "demo-tiny" / ".work" / "generate"
    assert len(list(work.glob("*.done"))) == 1 and len(list(work.glob("*.parquet"))) == 1
    assert not list(work.glob(".part-*"))  # the half-written file is gone
    monkeypatch.setattr(pq, "write_table", real)
    assert build(r).report["generate"] == {"done": 1, "skipped": 1}


# --- property-based: the prompt loader -------------------------------------------------------

LANGS = sorted(LANGUAGES)
text = st.text(alphabet=string.ascii_letters + " .,?!äöüßñéèçЖжзи", min_size=1, max_size=30).filter(
    str.strip
)


@st.composite
def prompt_sets(draw):
    ids = draw(st.lists(st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8),
                        min_size=1, max_size=6, unique=True))  # fmt: skip
    rows = []
    for pid in ids:
        for lang in ["en"] + draw(st.lists(st.sampled_from(LANGS[:12]), max_size=4, unique=True)):
            if lang == "en" and any(r["prompt_id"] == pid and r["lang"] == "en" for r in rows):
                continue
            rows.append({"prompt_id": pid, "lang": lang, "instruction": draw(text)})
    return draw(st.permutations(rows))


@settings(max_examples=60, deadline=None)
@given(
    rows=prompt_sets(),
    langs=st.lists(st.sampled_from(LANGS[:12]), min_size=1, max_size=4, unique=True),
)
def test_loader_property(tmp_path_factory, rows, langs):
    path = tmp_path_factory.mktemp("p") / "p.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    wanted = [r for r in rows if r["lang"] in langs]
    if not wanted:
        with pytest.raises(PromptError, match="no prompts in languages"):
            load_prompts(PromptsConfig(source=str(path), languages=langs), ScoringConfig())
        return
    ds = load_prompts(PromptsConfig(source=str(path), languages=langs), ScoringConfig())
    english = {r["prompt_id"]: r["instruction"] for r in rows if r["lang"] == "en"}
    got = ds.to_list()
    # exactly the rows in the asked languages, each once, joined to its own English row by id
    assert sorted((r["prompt_id"], r["lang"], r["instruction"]) for r in got) == sorted(
        (r["prompt_id"], r["lang"], r["instruction"]) for r in wanted
    )
    for r in got:
        prefix = "" if r["lang"] == "en" else DIRECTIVE.format(language=LANGUAGES[r["lang"]])
        assert r["scoring_prompt"] == prefix + english[r["prompt_id"]]
    # grouped by language in the recipe's order
    assert [langs.index(r["lang"]) for r in got] == sorted(langs.index(r["lang"]) for r in got)
    # dropping one English row makes the loader name that prompt
    victim = next((r for r in wanted if r["lang"] != "en"), None)
    if victim:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows
                                if not (r["lang"] == "en" and r["prompt_id"] == victim["prompt_id"])))  # fmt: skip
        with pytest.raises(
            PromptError, match=f"prompt_id {victim['prompt_id']} .* has no English row"
        ):
            load_prompts(PromptsConfig(source=str(path), languages=langs), ScoringConfig())


def test_different_chat_templates_refused(tmp_path, tiny_pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other-template"
    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    tok.chat_template = tok.chat_template + "{# a variant #}"
    AutoModelForCausalLM.from_pretrained(tiny_pair[1]).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ModelError, match="policy and reference have different chat templates"):
        build(recipe(tmp_path, tiny_pair, **{"models.reference": other}))
    assert nothing_written(tmp_path)


def test_cli_bad_shard_spec(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "icr_data.cli", "generate", str(DEMO), "--shard", "3/2",
                        "--store", str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "--shard 3/2: need 0 <= I < N" in r.stderr


# --- recipe values and files that used to pass or raise a traceback -------------------------

BASE = """
dataset: t
prompts: {source: p.jsonl, languages: [en, es]}
models: {generator: g, policy: p, reference: r}
"""


@pytest.mark.parametrize(
    "override, message",
    [("scoring.beta=0", "'scoring.beta' must be a finite number > 0"),
     ("scoring.beta=-0.5", "'scoring.beta' must be a finite number > 0"),
     ("prompts.limit=-1", "'prompts.limit' must be >= 1"),
     ("sampling.chunk_prompts=0", "'sampling.chunk_prompts' must be >= 1"),
     ("sampling.max_model_len=0", "'sampling.max_model_len' must be >= 1"),
     ("scoring.device=tpu9", "'scoring.device' must be auto, cpu, cuda")],
)  # fmt: skip
def test_recipe_values_refused_by_name(tmp_path, override, message):
    (tmp_path / "r.yaml").write_text(BASE)
    with pytest.raises(RecipeError, match=f"r.yaml: {message}"):
        load_recipe(tmp_path / "r.yaml", [override])


def test_unknown_or_absent_device_is_one_error():
    from icr_data.stages.models import pick_device

    with pytest.raises(ModelError, match="scoring.device: unknown device 'tpu9'"):
        pick_device("tpu9", "scoring.device")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="device: 'cuda:0' asked for, but torch sees 0"):
            pick_device("cuda:0")


def test_recipe_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "r.yaml").write_bytes((BASE + "description: café\n").encode("latin-1"))
    with pytest.raises(RecipeError, match=r"r.yaml:5: not UTF-8 text \(byte 0xe9\)"):
        load_recipe(tmp_path / "r.yaml")


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_recipe_top_level_not_a_mapping(tmp_path, text, kind):
    (tmp_path / "r.yaml").write_text(text)
    for overrides in ([], ["sampling.n=2"]):
        with pytest.raises(RecipeError, match=f"r.yaml: a recipe is a mapping .* holds a {kind}"):
            load_recipe(tmp_path / "r.yaml", overrides)


def test_prompts_not_utf8_names_file_and_line(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_bytes(b'{"prompt_id": "a", "lang": "en", "instruction": "ok"}\n'
                    b'{"prompt_id": "b", "lang": "en", "instruction": "caf\xe9"}\n')  # fmt: skip
    with pytest.raises(PromptError, match=r"p.jsonl:2: not UTF-8 text \(byte 0xe9 at column 53\)"):
        load_prompts(PromptsConfig(source=str(src), languages=["en"]), ScoringConfig())
    src.write_bytes(b"\xef\xbb\xbf" + b'{"prompt_id": "a", "lang": "en", "instruction": "ok"}\n')
    assert len(load_prompts(PromptsConfig(source=str(src), languages=["en"]), ScoringConfig())) == 1


def test_lang_as_a_list_names_the_row(tmp_path):
    src = tmp_path / "p.jsonl"
    rows = [{"prompt_id": "a", "lang": "en", "instruction": "hi"},
            {"prompt_id": "a", "lang": ["de"], "instruction": "hallo"}]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PromptError, match=r"p.jsonl: row 2 \(prompt_id a\): lang must be one "):
        load_prompts(PromptsConfig(source=str(src), languages=["en", "de"]), ScoringConfig())


# --- refused before any engine starts ---------------------------------------------------------


def test_hub_id_without_network_names_the_key(tmp_path, tiny_pair, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="models.generator: model nobody/nothing is not a local "
                       "folder and the Hub cannot be reached"):  # fmt: skip
        build(recipe(tmp_path, tiny_pair, **{"models.generator": "nobody/nothing"}))
    assert not (tmp_path / "store").exists()


def test_instruction_longer_than_the_context_names_the_row(tmp_path, tiny_pair, monkeypatch):
    import icr_data.stages.generate as generate

    def no_engine(*a, **k):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(generate, "open_backend", no_engine)
    src = tmp_path / "p.jsonl"
    rows = [{"prompt_id": "short", "lang": "en", "instruction": "Say hi."},
            {"prompt_id": "long", "lang": "en", "instruction": "word " * 300}]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"prompts.source": src, "prompts.languages": "[en]"}
    with pytest.raises(PromptError, match=r"p.jsonl: prompt_id long \(en\): the instruction is "
                       r"\d+ tokens .* the context is 64 tokens \(sampling.max_model_len\)"):  # fmt: skip
        build(recipe(tmp_path, tiny_pair, **base, **{"sampling.max_model_len": 64}))
    assert nothing_written(tmp_path)
    # without max_model_len: the generator's config (the tiny models have 4096 positions)
    rows[1]["instruction"] = "word " * 5000
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PromptError, match=r"prompt_id long \(en\): .* the context is 4096 tokens "
                       r"\(the generator's config"):  # fmt: skip
        build(recipe(tmp_path, tiny_pair, **base))
    assert nothing_written(tmp_path)


def test_truncated_shard_is_recomputed_with_a_warning(tmp_path, tiny_pair, capsys):
    r = recipe(tmp_path, tiny_pair, shard_prompts=1)
    first = build(r)
    work = tmp_path / "store" / "demo-tiny" / ".work" / "generate"
    victim = sorted(work.glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # after its marker
    capsys.readouterr()
    again = build(r)
    err = capsys.readouterr().err
    assert f"work file {victim}" in err.replace("\n", "") and "computed again" in err
    assert again.report["generate"] == {"done": 1, "skipped": 1}
    assert store.read_table(again.path, "candidates").to_list() == (
        store.read_table(first.path, "candidates").to_list()
    )


def test_languages_without_prompts_are_warned_and_store_is_cwd_relative(
    tmp_path, tiny_pair, capsys, monkeypatch
):
    from rich.console import Console

    from icr_data.commands.reports import summary_table

    src = tmp_path / "p.jsonl"
    rows = [{"prompt_id": f"p{i}", "lang": "en", "instruction": f"Say {i}."} for i in range(2)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    result = build(recipe(tmp_path, tiny_pair, **{"prompts.source": src, "store": "rel",
                                                  "prompts.languages": "[en, de, fr]"}))  # fmt: skip
    err = capsys.readouterr().err
    for lang in ("de", "fr"):
        assert f"warning: no prompts in language '{lang}'" in err
    assert result.path.resolve() == (tmp_path / "rel" / "demo-tiny" / "v1").resolve()
    assert "store 'rel' is relative to the working directory" in err
    out = Console(record=True, width=300)
    out.print(summary_table(result.manifest))
    assert "no prompts in de, fr (asked for in prompts.languages)" in out.export_text()


def test_stdout_carries_only_the_version_path(tmp_path, tiny_pair):
    """`V=$(icr-data build ...)` gets the version's path and nothing else; with --if-changed an
    identical re-run writes nothing and prints the existing version's path."""
    import subprocess
    import sys

    policy, reference = tiny_pair
    sets = [f"store={tmp_path / 'store'}", f"models.generator={policy}", f"models.policy={policy}",
            f"models.reference={reference}", "sampling.backend=transformers", "sampling.n=2",
            "sampling.max_tokens=6", "prompts.limit=2", "prompts.languages=[en, de]"]  # fmt: skip
    cmd = [sys.executable, "-m", "icr_data.cli", "build", str(DEMO)]
    cmd += [a for s in sets for a in ("--set", s)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    v1 = tmp_path / "store" / "demo-tiny" / "v1"
    assert r.stdout.splitlines() == [str(v1)]
    r = subprocess.run([*cmd, "--if-changed"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(v1)]
    assert "identical to v1; nothing written (--if-changed)" in r.stderr.replace("\n", " ")
    assert store.versions(v1.parent) == ["v1"]


def test_hub_id_unreachable_or_unknown_without_offline_flag(monkeypatch):
    """Without HF_HUB_OFFLINE: a connection error and an unknown repo are each one line."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    from icr_data.stages.models import check_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_network(self, repo_id, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", no_network)
    with pytest.raises(ModelError, match="models.policy: model nobody/nothing is not a local folder "
                       "and the Hub cannot be reached \\(OSError: .*not known\\)"):  # fmt: skip
        check_reachable("nobody/nothing", "nobody/nothing", "models.policy")

    class Gone(RepositoryNotFoundError):
        def __init__(self):  # the Hub's 404, without an HTTP response to build it from
            Exception.__init__(self, "404 Repository Not Found")

    def unknown(self, repo_id, **k):
        raise Gone()

    monkeypatch.setattr(HfApi, "model_info", unknown)
    with pytest.raises(ModelError, match="models.policy: model nobody/nothing is neither a local "
                       "folder nor a model on the Hub"):  # fmt: skip
        check_reachable("nobody/nothing", "nobody/nothing", "models.policy")


def test_workdir_verifies_what_it_reuses(tmp_path, capsys):
    from datasets import Dataset

    from icr_data.store.shards import WorkDir

    work = WorkDir(tmp_path / ".work")
    work.save("generate", "k", Dataset.from_dict({"x": list(range(100))}), {"what": "test"})
    assert work.done("generate", "k") and work.load("generate", "k")["x"][-1] == 99
    data = tmp_path / ".work" / "generate" / "k.parquet"
    whole = data.read_bytes()
    data.write_bytes(whole[:-8])  # the footer's tail is gone
    with pytest.raises(store.StoreError, match=r"work file .*k.parquet cannot be read"):
        work.load("generate", "k")
    capsys.readouterr()
    assert not work.done("generate", "k")  # damaged: removed, to be computed again
    assert "is damaged" in capsys.readouterr().err
    assert not data.exists() and not data.with_suffix(".done").exists()
