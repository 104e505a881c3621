"""Curating by hand (`icr-data drop`, curate.drop_pairs): on a tiny built version, the child holds
exactly the parent's pairs less those named, its manifest and card name the parent, the pairs and
the reasons, the commands that read versions take it, and the parent's files are unchanged; a
key naming no pair, or a bad row of the drop file, is one error and writes nothing.

    pytest tests/test_curate.py
"""

import json

import numpy as np
import pytest
from datasets import load_dataset
from synthetic import cli_run, digest

from icr_data.commands.curate import (
    EMPTIED,
    HAND,
    KEY,
    CurateError,
    NoSuchPair,
    drop_pairs,
    read_drops,
)
from icr_data.store import store
from icr_data.store.integrity import check


@pytest.fixture(scope="module")
def v1(build_tiny, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("curate") / "store"
    return build_tiny(
        store_dir, "sampling.max_tokens=10", "prompts.limit=3", "prompts.languages=[en, fr]"
    )


def rows(version):
    return store.read_table(version, "pairs").to_list()


def key(row):
    return tuple(row[k] for k in KEY)


def test_child_holds_the_parents_pairs_less_those_dropped(v1):
    before = digest(v1)
    parent, parent_manifest = rows(v1), store.read_manifest(v1)
    assert len(parent) == 6  # max_min: one pair per prompt, 3 prompts x 2 languages
    en = next(r for r in parent if r["lang"] == "en")
    fr = [r for r in parent if r["lang"] == "fr"][:2]
    drops = {key(en): "off topic", key(fr[0]): "wrong language", key(fr[1]): "wrong language"}
    child, manifest = drop_pairs(v1, drops)

    assert child.parent == v1.parent and child.name == "v2"
    assert rows(child) == [r for r in parent if key(r) not in drops]  # order and content kept
    assert len(load_dataset(str(child), "pairs", split="train")) == 3
    assert manifest["parent"] == "demo-tiny/v1"
    derived = manifest["derived"]
    assert derived["operation"] == "drop"
    assert derived["dropped"] == [{**dict(zip(KEY, k)), "reason": drops[k]}
                                  for k in map(key, parent) if k in drops]  # fmt: skip
    assert {lang: c["pairs"] for lang, c in manifest["counts"].items()} == {"en": 2, "fr": 1}
    assert manifest["totals"]["pairs"] == 3 and manifest["totals"]["candidates"] == 18
    funnel = manifest["funnel"]
    assert funnel["en"]["pairs"] == 2 and funnel["en"]["dropped_pairs"] == {HAND: 1}
    assert funnel["fr"]["pairs"] == 1 and funnel["fr"]["dropped_pairs"] == {HAND: 2}
    assert funnel["fr"]["prompts_without_pair"] == {EMPTIED: 2}  # one pair per prompt
    assert funnel["fr"]["kept_candidates"] == parent_manifest["funnel"]["fr"]["kept_candidates"]
    left = [r["margin"] for r in parent if r["lang"] == "en" and key(r) not in drops]
    assert manifest["margins"]["en"]["mean"] == pytest.approx(np.mean(left), abs=1e-12)
    assert manifest["margins"]["fr"]["median"] == pytest.approx(
        [r["margin"] for r in parent if r["lang"] == "fr" and key(r) not in drops][0], abs=1e-12
    )
    # the candidates and their text features are the parent's files, unchanged
    assert manifest["files"]["candidates"] == parent_manifest["files"]["candidates"]
    assert manifest["textfeatures"] == parent_manifest["textfeatures"]
    card = (child / "README.md").read_text()
    assert "Curated by hand: 3 pair(s) of the parent version `demo-tiny/v1`" in card
    assert "| off topic | 1 |" in card and "| wrong language | 2 |" in card
    assert "| fr | 3 | 9 | 9 | 1 |" in card  # the funnel row: 1 pair left
    assert check(child, full=True) == []
    assert digest(v1) == before  # the parent is never edited

    # a drop of the child: the counts add up; pairing the child again still works
    grandchild, m3 = drop_pairs(child, {key(rows(child)[0]): "duplicate prompt"}, name="v7")
    assert grandchild.name == "v7" and m3["parent"] == "demo-tiny/v2"
    assert m3["funnel"]["en"]["dropped_pairs"] == {HAND: 2} and m3["totals"]["pairs"] == 2
    from icr_data.commands.derive import repair

    repaired, m4 = repair(grandchild)
    assert m4["totals"]["pairs"] == 6 and m4["derived"]["operation"] == "pair"


def test_a_key_naming_no_pair_is_one_error_and_nothing_is_written(v1):
    before, names = digest(v1.parent), store.versions(v1.parent)
    good = key(rows(v1)[0])
    bad = ("demo-001", "fr", 7, 0)
    with pytest.raises(NoSuchPair, match=r"no pair prompt_id='demo-001' lang='fr' "
                                         r"chosen_sample_idx=7 rejected_sample_idx=0"):  # fmt: skip
        drop_pairs(v1, {good: "ok", bad: "typo"})
    with pytest.raises(CurateError, match="nothing to drop"):
        drop_pairs(v1, {})
    with pytest.raises(CurateError, match="no reason given"):
        drop_pairs(v1, {good: "  "})
    with pytest.raises(CurateError, match="sample indices must be whole numbers"):
        drop_pairs(v1, {(*good[:3], "0"): "x"})
    assert store.versions(v1.parent) == names and digest(v1.parent) == before


def test_cli_drop_and_the_commands_that_read_versions(v1, tmp_path, capsys, monkeypatch):
    pairs = rows(v1)
    drops = tmp_path / "drops.csv"
    drops.write_text(
        "prompt_id,lang,chosen_sample_idx,rejected_sample_idx,reason,note\n"
        f"{pairs[1]['prompt_id']},en,{pairs[1]['chosen_sample_idx']},"
        f'{pairs[1]["rejected_sample_idx"]},"a | b",x\n'
        f"{pairs[4]['prompt_id']},fr,{pairs[4]['chosen_sample_idx']},"
        f"{pairs[4]['rejected_sample_idx']},,y\n"
    )
    store_dir = str(v1.parents[1])
    code, out, err = cli_run(capsys, "drop", "demo-tiny/v1", "--store", store_dir,
                             "--pairs", str(drops), "--reason", "too short", "--version", "v20")  # fmt: skip
    assert code in (0, None), err
    child = v1.parent / "v20"
    assert out.strip() == str(child)
    manifest = store.read_manifest(child)
    assert [d["reason"] for d in manifest["derived"]["dropped"]] == ["a | b", "too short"]
    assert "| a \\| b | 1 |" in (child / "README.md").read_text()

    code, out, err = cli_run(capsys, "verify", str(child))
    assert code in (0, None) and "whole" in err, err
    code, out, err = cli_run(capsys, "inspect", str(child), "--top", "0", "--bottom", "0")
    assert code in (0, None) and "demo-tiny/v20: 4 pairs" in out + err
    code, out, err = cli_run(capsys, "export", str(child), "--out", str(tmp_path / "exp"),
                             "--format", "jsonl")  # fmt: skip
    assert code in (0, None), err
    exported = (tmp_path / "exp" / "pairs.jsonl").read_text().splitlines()
    assert len(exported) == 4
    monkeypatch.setenv("HF_TOKEN", "hf_test_not_used")
    code, out, err = cli_run(capsys, "publish", str(child), "--repo", "me/icr",
                             "--dry-run", str(tmp_path / "dry"))  # fmt: skip
    assert code in (0, None) and "nothing was sent" in err, err
    plan = json.loads((tmp_path / "dry" / "plan.json").read_text())
    assert plan["tag"] == "v20"

    # a key of the file naming no pair: one line naming the file and its line; nothing written
    drops.write_text("prompt_id,lang,chosen_sample_idx,rejected_sample_idx\ndemo-009,en,0,1\n")
    names = store.versions(v1.parent)
    code, out, err = cli_run(capsys, "drop", str(v1), "--pairs", str(drops), "--reason", "x")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {drops}, line 2: ") and "prompt_id='demo-009'" in err
    assert store.versions(v1.parent) == names


@pytest.mark.parametrize(
    "name, text, reason, message",
    [
        ("d.csv", "prompt_id,lang,chosen_sample_idx\na,en,0\n", "x", "line 2: no rejected_sample_idx"),
        ("d.csv", "prompt_id,lang,chosen_sample_idx,rejected_sample_idx\na,en,0,1.5\n", "x",
         "line 2: rejected_sample_idx must be a whole number, got '1.5'"),
        ("d.csv", "prompt_id,lang,chosen_sample_idx,rejected_sample_idx\na,en,0,1\n", None,
         "line 2: no reason"),
        ("d.csv", "prompt_id,lang,chosen_sample_idx,rejected_sample_idx,reason\na,en,0,1,r\n"
         "b,en,0,1,r\na,en,0,1,s\n", None, "line 4: pair prompt_id='a' .* listed already \\(line 2\\)"),
        ("d.csv", "prompt_id,lang,chosen_sample_idx,rejected_sample_idx\n", "x", "names no pair"),
        ("d.jsonl", '{"prompt_id": "a", "lang": "en", "chosen_sample_idx": 0, '
         '"rejected_sample_idx": 1, "reason": "r"}\n\n{"prompt_id": "a",\n', None,
         "line 3: not JSON \\(Expecting property name enclosed in double quotes, column 19\\)"),
        ("d.jsonl", '{"prompt_id": 3, "lang": "en", "chosen_sample_idx": 0, '
         '"rejected_sample_idx": 1}\n', "r", "line 1: prompt_id must be text, got 3"),
        ("d.jsonl", "[1, 2]\n", "r", "line 1: not an object"),
        ("d.txt", "a,en,0,1\n", "r", "give a .jsonl or .csv file"),
    ],
)  # fmt: skip
def test_bad_drop_files_name_the_file_and_line(tmp_path, name, text, reason, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CurateError, match=message) as e:
        read_drops(path, reason)
    assert str(path) in str(e.value)


def test_a_good_jsonl_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt_id": "a", "lang": "en", "chosen_sample_idx": 2, "rejected_sample_idx": 0}\n'
        '{"prompt_id": "b", "lang": "de", "chosen_sample_idx": 0, "rejected_sample_idx": 1, '
        '"reason": " bad German ", "margin": 0.3}\n'
    )
    drops, lines = read_drops(path, "by default")
    assert drops == {("a", "en", 2, 0): "by default", ("b", "de", 0, 1): "bad German"}
    assert lines == {("a", "en", 2, 0): 1, ("b", "de", 0, 1): 2}


def test_a_full_disk_leaves_no_version(v1, monkeypatch):
    import errno

    names = store.versions(v1.parent)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_parquet", full)
    with pytest.raises(store.StoreError, match="disk full"):
        drop_pairs(v1, {key(rows(v1)[0]): "x"})
    assert store.versions(v1.parent) == names
    assert not [p for p in v1.parent.iterdir() if p.name.startswith(".tmp-")]
