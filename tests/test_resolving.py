"""Every command resolves models one way (prepare.resolve_models) and versions one way
(store.resolve_version): an uncached Hub id offline is one line naming the option, in seconds;
`dataset/vN` with --store works wherever a version is read."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from synthetic import cli_run as run_cli
from synthetic import model_configs, tables

from icr_data.store import store
from icr_data.store.card import render_card

ROOT = Path(__file__).resolve().parents[1]
NOBODY = "nobody/no-such-model"


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> Path:
    """A small synthetic version t/v1 (en, de; 12 candidates, 4 pairs) in its own store."""
    data, manifest = tables()
    return store.write_version(tmp_path_factory.mktemp("store"), "t", data, manifest, render_card)


def _commands(tmp_path: Path, version: Path) -> dict[str, tuple[list[str], str]]:
    """Each command that takes a model, given NOBODY: (its arguments, the option it names)."""
    model_configs(tmp_path, NOBODY, tmp_path / "run", tmp_path / "evals")
    pairs = str(ROOT / "recipes" / "data" / "check_pairs.jsonl")
    prompts = str(ROOT / "recipes" / "data" / "demo_prompts.jsonl")
    return {
        "check-reward": (["check-reward", "--policy", NOBODY, "--reference",
                          "builtin:tiny-reference", "--pairs", pairs], "--policy"),
        "score VERSION": (["score", "t/v1", "--store", str(version.parents[1]), "--policy",
                           NOBODY], "--policy"),
        "train": (["train", str(tmp_path / "train.yaml")], "model"),
        "eval": (["eval", str(tmp_path / "eval.yaml")], "candidate"),
        "translate": (["translate", prompts, "--to", "es", "--model", NOBODY, "--out",
                       str(tmp_path / "prompts")], "--model"),
        "build": (["build", str(ROOT / "recipes" / "demo_tiny.yaml"), "--store",
                   str(tmp_path / "built"), "--set", f"models.policy={NOBODY}"], "models.policy"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["check-reward", "score VERSION", "train", "eval", "translate", "build"]
)
def test_an_uncached_model_offline_is_one_line(command, version, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "300")  # one line, not one line wrapped by rich
    monkeypatch.chdir(tmp_path)  # whatever a command might write lands here
    args, option = _commands(tmp_path, version)[command]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "icr_data.cli", *args], capture_output=True,
                       text=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {option}: model {NOBODY} is not a local folder"), lines
    assert "HF_HUB_OFFLINE" in lines[0] and r.stdout == ""
    assert seconds < 30, f"{command} took {seconds:.0f}s to refuse an unreachable model"
    # nothing was written: no version, no work folder, no training output, no prompts
    assert not any(p.suffix in (".parquet", ".json") for p in tmp_path.rglob("*")), sorted(
        tmp_path.rglob("*")
    )


def test_a_missing_folder_or_an_unprepared_train_config_names_the_option(tmp_path, monkeypatch):
    from icr_data.commands.prepare import resolve_models
    from icr_data.stages.models import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ICR_DATA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match=r"^--policy: model path not found: \./nowhere$"):
        resolve_models({"--policy": "./nowhere", "--reference": "builtin:tiny-reference"})
    # what a train: config starts from is checked before anything is trained
    cfg = yaml.safe_load((ROOT / "recipes" / "dpo_demo_tiny.yaml").read_text())
    cfg["data"]["source"] = str(ROOT / "recipes" / cfg["data"]["source"])
    cfg["model"] = NOBODY
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    spec = f"train:{tmp_path / 't.yaml'}"
    with pytest.raises(ModelError, match=rf"^models.policy \({spec}: model\): model {NOBODY} is "
                       "not a local folder"):  # fmt: skip
        resolve_models({"models.policy": spec})
    assert not (tmp_path / "cache").exists()  # nothing built, nothing trained


# --- dataset/vN with --store, wherever a version is read ---------------------------------------


def test_export_takes_dataset_slash_version(version, tmp_path, capsys):
    store_dir = str(version.parents[1])
    code, out, err = run_cli(capsys, "export", "t/v1", "--store", store_dir, "--format", "jsonl",
                             "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    written = [Path(line) for line in out.splitlines()]
    assert written and all(p.is_file() for p in written)
    rows = [json.loads(x) for x in written[0].read_text().splitlines()]
    assert len(rows) == len(store.read_table(version, "pairs"))
    code, _, err = run_cli(capsys, "export", "t/v9", "--store", store_dir, "--out",
                           str(tmp_path / "o2"))  # fmt: skip
    assert code == 2 and f"not a version folder (no manifest.json): t/v9, nor is {store_dir}" in err


def test_pair_takes_dataset_slash_version(tmp_path, capsys):
    data, manifest = tables()
    v1 = store.write_version(tmp_path, "t", data, manifest, render_card)
    code, out, err = run_cli(capsys, "pair", "t/v1", "--store", str(tmp_path), "--strategy",
                             "max_random")  # fmt: skip
    assert code == 0, err
    assert out.strip() == str(tmp_path / "t" / "v2")
    assert store.read_manifest(v1.parent / "v2")["parent"] == "t/v1"


def test_score_takes_dataset_slash_version(tmp_path, tiny_pair, capsys):
    data, manifest = tables()
    store.write_version(tmp_path, "t", data, manifest, render_card)
    policy, reference = tiny_pair
    code, out, err = run_cli(capsys, "score", "t/v1", "--store", str(tmp_path), "--policy",
                             policy, "--reference", reference)  # fmt: skip
    assert code == 0, err
    assert out.strip() == str(tmp_path / "t" / "v2")
    assert store.read_manifest(tmp_path / "t" / "v2")["parent"] == "t/v1"
    # neither a recipe file nor a version: said as such, not as a missing recipe
    code, _, err = run_cli(capsys, "score", "t/v7", "--store", str(tmp_path))
    assert code == 2 and "not a version folder" in err and "nor a recipe file" in err
