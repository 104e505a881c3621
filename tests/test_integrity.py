"""Versions that cannot be broken quietly: `icr-data verify`, damaged manifests and data files named
in one line by every command that reads them, and identical builds that write identical bytes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from synthetic import cli_exit, write_synthetic

from icr_data.store import integrity, store

write, run = write_synthetic, cli_exit


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def alter(path: Path) -> None:  # same size, one byte of a value changed: the footer still reads
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def stray(path: Path) -> None:
    shutil.copyfile(path, path.with_name("train-00001-of-00001-0123456789abcdef.parquet"))


DAMAGE = {"truncated": truncate, "altered": alter, "removed": Path.unlink, "stray": stray}


def test_a_whole_version_verifies(tmp_path, capsys):
    v = write(tmp_path)
    assert integrity.check(v, full=True) == []
    code, err = run(capsys, "verify", str(v))
    assert code == 0 and "whole" in err


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("config", ["pairs", "candidates"])
def test_any_damaged_file_fails_verify_and_publish_naming_it(tmp_path, capsys, damage, config):
    v = write(tmp_path)
    (f,) = store.config_files(v, config)
    DAMAGE[damage](f)
    code, err = run(capsys, "verify", str(v))
    assert code == 2 and f"data/{config}/" in err and err.startswith("error:"), err
    code, err = run(capsys, "publish", str(v), "--repo", "me/icr", "--dry-run",
                    str(tmp_path / "out"))  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and f"data/{config}/" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "removed"])
@pytest.mark.parametrize("config", ["pairs", "candidates"])
def test_every_reader_names_a_damaged_file_in_one_line(tmp_path, capsys, tiny_pair, damage,
                                                        config):  # fmt: skip
    """pair, score VERSION, export and train verify (sizes, footers, row counts) what they read
    before any work or model; publish (full digests) is tested above."""
    v = write(tmp_path)
    (f,) = store.config_files(v, config)
    DAMAGE[damage](f)
    train_cfg = tmp_path / "dpo.yaml"
    train_cfg.write_text(f"data: {{source: {v}}}\nmodel: {tiny_pair[0]}\n"
                         f"output_dir: {tmp_path / 'model'}\n")  # fmt: skip
    for args in (["pair", str(v), "--strategy", "max_min"], ["score", str(v), "--beta", "2"],
                 ["export", str(v), "--format", "jsonl", "--out", str(tmp_path / "o")],
                 ["train", str(train_cfg)]):  # fmt: skip
        code, err = run(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and f"{f.parent}/" in err, (args, err)
    assert store.versions(v.parent) == ["v1"]  # nothing written
    assert not any((tmp_path / d).exists() for d in ("o", "model"))


@pytest.mark.parametrize(
    "text, says",
    [("{not json", "not valid JSON"), ("[1, 2]", "holds a JSON list"), ("", "not valid JSON"),
     (json.dumps({"dataset": "t"}), "has no 'version'")],
)  # fmt: skip
def test_a_damaged_manifest_is_one_line_in_every_reader(tmp_path, capsys, text, says):
    v = write(tmp_path)
    (v / "manifest.json").write_text(text, encoding="utf-8")
    commands = [["verify", str(v)], ["inspect", str(v)], ["pair", str(v), "--strategy", "max_min"],
                ["export", str(v), "--format", "jsonl", "--out", str(tmp_path / "o")],
                ["publish", str(v), "--repo", "me/icr", "--dry-run", str(tmp_path / "d")]]  # fmt: skip
    for args in commands:
        code, err = run(capsys, *args)
        lines = err.count("\n")
        assert code == 2 and err.startswith("error:") and (lines == 1 or args[0] == "verify"), (
            args,
            err,
        )
        assert "manifest.json" in err and (says in err or "has no" in err), (args, err)


def test_identical_builds_write_identical_bytes(build_tiny, tmp_path):
    """Language ID's confidences are rounded where they are stored (lingua's threads sum in a
    varying order), so two builds of one recipe write the same files, byte for byte."""
    a = build_tiny(tmp_path / "a", "sampling.max_tokens=6", "prompts.limit=2",
                   "prompts.languages=[en, de, fr]")  # fmt: skip
    b = build_tiny(tmp_path / "b", "sampling.max_tokens=6", "prompts.limit=2",
                   "prompts.languages=[en, de, fr]")  # fmt: skip
    for config in ("candidates", "pairs"):
        fa, fb = store.config_files(a, config), store.config_files(b, config)
        assert [f.name for f in fa] == [f.name for f in fb]  # content-addressed: same digests
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
    scores = store.read_table(a, "candidates")["lid_score"]
    assert all(s == round(s, 6) for s in scores)


TRAIN = """data: {source: pairs.jsonl}
model: builtin:tiny-reference
output_dir: out
"""
BAD_TRAIN = [
    ("beta: 0", "'beta' must be > 0"), ("beta: -1", "'beta' must be > 0"),
    ("beta: .nan", "'beta' must be a finite number"), ("beta: .inf", "'beta' must be a finite"),
    ("learning_rate: -1.0e-7", "'learning_rate' must be > 0"),
    ("max_steps: -1", "'max_steps' must be >= 1"), ("nll_weight: -0.5", "'nll_weight' must be >= 0"),
    ("lora: {r: 0}", "'lora.r' must be >= 1"), ("lora: {dropout: 2}", "'lora.dropout' must be in"),
    ("lora: {target_modules: []}", "'lora.target_modules' must be"),
    ("warmup_ratio: 1.5", "'warmup_ratio' must be in [0, 1]"),
    ("max_grad_norm: 0", "'max_grad_norm' must be > 0"), ("log_every: 0", "'log_every' must be"),
    ("data: {source: pairs.jsonl, limit: -1}", "'data.limit' must be >= 1"),
]  # fmt: skip


@pytest.mark.parametrize("line, says", BAD_TRAIN)
def test_training_settings_are_checked_before_any_model(tmp_path, line, says):
    from icr_data.base.train_config import TrainError, load_train_config

    path = tmp_path / "dpo.yaml"
    path.write_text(TRAIN + line + "\n")
    with pytest.raises(TrainError, match=re.escape(says)) as e:
        load_train_config(path)
    assert str(e.value).startswith(str(path)) and len(str(e.value)) < 300


def test_scientific_notation_is_a_float(tmp_path):
    from icr_data.base.train_config import load_train_config

    path = tmp_path / "dpo.yaml"
    path.write_text(TRAIN + "learning_rate: 5.0e-7\n")
    assert load_train_config(path).learning_rate == 5e-7


def test_train_refuses_an_output_dir_inside_a_version(tmp_path):
    from icr_data.base.train_config import DataConfig, TrainConfig, TrainError
    from icr_data.commands.train import train

    v = write(tmp_path)
    for out in (v, v / "model", v / "data" / "x"):
        cfg = TrainConfig(data=DataConfig(source=str(v)), model="builtin:tiny-reference",
                          output_dir=str(out))  # fmt: skip
        with pytest.raises(TrainError, match="is inside the version"):
            train(cfg)
    assert integrity.check(v, full=True) == []  # nothing written into it


def test_an_eval_named_as_a_dataset_is_refused(tmp_path):
    from icr_data.commands.evaluation import EvalConfig, EvalError, check_record_name

    write(tmp_path)  # dataset "t"
    with pytest.raises(EvalError, match="'t' is a dataset"):
        check_record_name(EvalConfig(name="t", store=str(tmp_path)))
    check_record_name(EvalConfig(name="t-eval", store=str(tmp_path)))


def test_a_yaml_alias_bomb_is_one_short_line_at_once(tmp_path):
    """Nine levels of nine aliases: PyYAML shares the lists, but repr of the value would expand
    387 million items; the error shows its first items only."""
    import time

    from icr_data.base.config import RecipeError, load_recipe

    levels = ["  - &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(["dataset:", *levels]) + "\n")  # a list where a name is meant
    t0 = time.perf_counter()
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert time.perf_counter() - t0 < 10 and len(str(e.value)) < 400


@pytest.mark.parametrize("command", ["pair", "export"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, command):
    import errno

    v = write(tmp_path)

    def full(fd):  # every file is flushed to disk before it is renamed into place
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("icr_data.base.files.os.fsync", full)
    out = tmp_path / "o"
    args = (["pair", str(v), "--strategy", "max_min"] if command == "pair" else
            ["export", str(v), "--format", "jsonl", "--out", str(out)])  # fmt: skip
    code, err = run(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "disk full" in err, err
    assert store.versions(v.parent) == ["v1"] and not list(v.parent.glob(".tmp-*"))
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_a_fifo_as_prompts_source_is_refused_at_once(tmp_path):
    import os

    from icr_data.stages.prompts import PromptError, read_rows

    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(PromptError, match="not a regular file"):
        read_rows(str(fifo))  # before the fix: blocked forever on open()


EVAL = """name: e
candidate: builtin:tiny-policy
baseline: builtin:tiny-reference
judges: ["implicit:p,r"]
prompts: {source: p.jsonl}
"""
BAD_EVAL = [
    ("prompts: {source: p.jsonl, limit: -1}", "'prompts.limit' must be >= 1"),
    ("sampling: {n: 1, top_p: 2}", "'sampling.top_p' must be in (0, 1]"),
    ("sampling: {n: 1, temperature: -1}", "'sampling.temperature' must be a finite"),
    ("sampling: {n: 1, temperature: .nan}", "'sampling.temperature' must be a finite"),
    ("sampling: {n: 1, max_tokens: 0}", "'sampling.max_tokens' must be >= 1"),
    ("shard_prompts: 0", "'shard_prompts' and 'judge_max_tokens' must be >= 1"),
    ("beta: .inf", "'beta' must be a finite number"),
]  # fmt: skip


@pytest.mark.parametrize("line, says", BAD_EVAL)
def test_eval_settings_are_checked_before_any_model(tmp_path, line, says):
    from icr_data.commands.evaluation import EvalError, load_eval

    path = tmp_path / "eval.yaml"
    path.write_text(EVAL + line + "\n")
    with pytest.raises(EvalError, match=re.escape(says)):
        load_eval(path)


@pytest.mark.parametrize("value", [".inf", ".nan", "0", "-1"])
def test_a_recipe_beta_that_makes_no_reward_is_refused(tmp_path, value):
    import yaml

    from icr_data.base.config import RecipeError, ScoringConfig, validate_scoring

    with pytest.raises(RecipeError, match="'scoring.beta' must be a finite number > 0"):
        validate_scoring(ScoringConfig(beta=yaml.safe_load(value)), "r.yaml")
