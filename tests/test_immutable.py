"""No command writes inside a version (issue 29): every command of cli.py that writes (a version, a
store's work folder, a model, a file) is given a target inside a version folder and refuses in
one `error:` line naming it, before any model is looked up, and leaves the version's files as they
were (digests of every file before and after).

    pytest tests/test_immutable.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synthetic import digest, model_configs, tables

from icr_data import cli
from icr_data.store import store
from icr_data.store.card import render_card

ROOT = Path(__file__).resolve().parents[1]
NOBODY = "nobody/no-such-model"  # an uncached Hub id offline: a refusal after it would name it


@pytest.fixture
def version(tmp_path) -> Path:
    """t/v1, holding a copy of itself as a dataset folder (v1/nested/t/v1): a version whose new
    versions (pair, score, drop) would land inside v1."""
    data, manifest = tables()
    v = store.write_version(tmp_path / "s", "t", data, manifest, render_card)
    shutil.copytree(v, tmp_path / "copy")
    (v / "nested" / "t").mkdir(parents=True)
    shutil.move(tmp_path / "copy", v / "nested" / "t" / "v1")
    return v


def commands(v: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that writes, each with its target inside `v`."""
    nested = str(v / "nested" / "t" / "v1")
    prompts = str(ROOT / "recipes" / "data" / "demo_prompts.jsonl")
    recipe = ["--store", str(v / "inner"), "--set", f"models.policy={NOBODY}",
              "--set", f"models.generator={NOBODY}"]  # fmt: skip
    demo = str(ROOT / "recipes" / "demo_tiny.yaml")
    model_configs(tmp_path, NOBODY, v / "run", v / "evals")
    drops = tmp_path / "drops.jsonl"
    drops.write_text(json.dumps({"prompt_id": "a", "lang": "de", "chosen_sample_idx": 1,
                                 "rejected_sample_idx": 0, "reason": "test"}) + "\n")  # fmt: skip
    out = {
        "build": ["build", demo, *recipe],
        "generate": ["generate", demo, *recipe],
        "score RECIPE": ["score", demo, *recipe],
        "merge": ["merge", demo, *recipe],
        "pair": ["pair", nested, "--strategy", "max_min"],
        "score VERSION": ["score", nested, "--policy", NOBODY],
        "drop": ["drop", nested, "--pairs", str(drops)],
        "translate": ["translate", prompts, "--to", "es", "--model", NOBODY,
                      "--out", str(v / "inner")],
        "export": ["export", str(v), "--format", "jsonl", "--out", str(v / "data" / "x")],
        "inspect --plot": ["inspect", str(v), "--plot", str(v / "m.png")],
        "train": ["train", str(tmp_path / "train.yaml")],
        "eval": ["eval", str(tmp_path / "eval.yaml")],
        "check-reward --json": ["check-reward", "--policy", NOBODY, "--reference", NOBODY,
                                "--pairs", str(ROOT / "recipes" / "data" / "check_pairs.jsonl"),
                                "--json", str(v / "report.json")],
        "prepare": ["prepare", "builtin:tiny-policy"],  # into $ICR_DATA_CACHE, set inside v
        "publish --dry-run": ["publish", nested, "--repo", "me/icr", "--dry-run", str(v / "d")],
    }  # fmt: skip
    return out


def writing_commands() -> set[str]:
    """The commands cli.py registers, less those that only read."""
    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    return names - {"versions", "diff", "verify", "evals", "view"}


NAMES = ["build", "generate", "score RECIPE", "merge", "pair", "score VERSION", "drop",
         "translate", "export", "inspect --plot", "train", "eval", "check-reward --json",
         "prepare", "publish --dry-run"]  # fmt: skip


def test_every_writing_command_is_tried(tmp_path):
    tried = commands(tmp_path / "v", tmp_path)
    assert sorted(tried) == sorted(NAMES)
    missing = writing_commands() - {args[0] for args in tried.values()}
    assert not missing, f"commands that write but are not tried here: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_no_command_writes_inside_a_version(name, version, tmp_path, monkeypatch, capsys):
    args = commands(version, tmp_path)[name]
    if args[0] not in writing_commands():
        pytest.skip(f"icr-data {args[0]} does not exist in this checkout")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "300")  # one line, not one line wrapped by rich
    monkeypatch.setenv("ICR_DATA_CACHE", str(version / "cache"))
    monkeypatch.chdir(tmp_path)
    before = digest(version), sorted(version.rglob("*"))  # every file's bytes; every folder
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"is inside the version {version}" in err and NOBODY not in err, err
    assert (digest(version), sorted(version.rglob("*"))) == before


def test_the_store_itself_refuses_a_version_or_work_inside_a_version(version):
    """The backstops under every command: write_version and a work folder (WorkDir)."""
    from icr_data.store.shards import WorkDir

    before = digest(version)
    data, manifest = tables()
    for target in (version, version / "inner", version / "data" / "pairs"):
        with pytest.raises(store.StoreError, match=f"is inside the version {version};"):
            store.write_version(target, "t", data, manifest, render_card)
        with pytest.raises(store.StoreError, match=f"is inside the version {version};"):
            WorkDir(target / "t" / ".work")
    with pytest.raises(store.StoreError, match=f"is inside the version {version};"):
        store.write_version(version.parent, "v1", data, manifest, render_card)  # dataset v1
    assert digest(version) == before
    assert store.write_version(version.parents[1], "u", data, manifest, render_card).name == "v1"
