"""The command line: one base class of user errors becomes one line and exit 2, the pairing
rules offered are the registry's, and `icr-data --help` imports nothing heavy."""

import subprocess
import sys

import pytest
from synthetic import cli_run as run
from typer.testing import CliRunner

from icr_data import cli
from icr_data.base.config import FILTERS
from icr_data.base.errors import IcrError
from icr_data.base.registry import PAIRING_RULES
from icr_data.pairing import pairing_rules


class OddError(IcrError):
    """A subclass no list in cli.py names."""


def test_an_icr_error_from_any_command_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    import icr_data.commands.derive

    def refuse(*a, **k):
        raise OddError("the [parent] version has no candidates")

    monkeypatch.setattr(icr_data.commands.derive, "repair", refuse)
    (tmp_path / "manifest.json").write_text("{}")  # a version folder, as far as resolving goes
    code, out, err = run(capsys, "pair", str(tmp_path), "--strategy", "max_min")
    assert code == 2 and out == ""
    assert err == "error: the [parent] version has no candidates\n"  # brackets kept as text


def test_the_same_through_typers_test_runner(monkeypatch, tmp_path):
    import icr_data.commands.export

    def refuse(*a, **k):
        raise OddError("nothing to export")

    monkeypatch.setattr(icr_data.commands.export, "export", refuse)
    (tmp_path / "manifest.json").write_text("{}")
    r = CliRunner().invoke(cli.app, ["export", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.strip().splitlines() == ["error: nothing to export"]


def test_a_real_error_class_without_monkeypatching(capsys, tmp_path):
    code, _, err = run(capsys, "export", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--format", "csv")  # fmt: skip
    assert (
        code == 2
        and err.startswith("error: unknown format 'csv' (export --format)")
        and err.count("\n") == 1
    )
    code, _, err = run(capsys, "versions", "--store", str(tmp_path / "empty"))
    assert code == 2 and err.startswith("error: no dataset versions")


def test_other_exceptions_keep_their_traceback(monkeypatch, tmp_path):
    import icr_data.commands.derive

    def bug(*a, **k):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(icr_data.commands.derive, "repair", bug)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["pair", str(tmp_path)])


def test_strategy_choices_are_the_registry(capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, "pair", str(tmp_path), "--strategy", "best_worst")
    assert code == 2
    assert err.strip() == (f"error: --strategy must be one of {', '.join(PAIRING_RULES)}, "
                           "got 'best_worst'")  # fmt: skip
    monkeypatch.setitem(
        PAIRING_RULES._entries, "best_worst", pairing_rules.Rule(pairing_rules.max_min)
    )
    code, _, err = run(capsys, "pair", str(tmp_path), "--strategy", "nope")
    assert code == 2 and "max_min, max_random, top_bottom, threshold, best_worst, got 'nope'" in err
    # a registered rule passes the CLI and reaches the version (here: not a version folder)
    code, _, err = run(capsys, "pair", str(tmp_path), "--strategy", "best_worst")
    assert code == 2 and "not a version folder" in err


def test_pair_help_lists_the_registry():
    r = CliRunner().invoke(cli.app, ["pair", "--help"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    assert ", ".join(PAIRING_RULES) in r.output
    assert ",".join(FILTERS) in r.output


def test_help_imports_nothing_heavy():
    code = ("import sys, icr_data.cli; "
            "print(sorted(m for m in ('torch', 'datasets', 'numpy', 'polars', 'pyarrow', 'vllm') "
            "if m in sys.modules))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_export_formats_write_whole_files_only(capsys, tmp_path):
    """Each format's files are written through files.atomic_write: no temporary file is left, an
    existing dataset_info.json is updated (its other entries kept), and a second export into the
    same folder is refused without touching the first."""
    import json

    from synthetic import tables

    from icr_data.store import store
    from icr_data.store.card import render_card

    t, m = tables()
    v1 = store.write_version(tmp_path / "s", "t", t, m, render_card)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"theirs": {"file_name": "x.jsonl"}}))
    for fmt in ("trl", "llamafactory", "jsonl"):
        code, stdout, err = run(capsys, "export", str(v1), "--out", str(out), "--format", fmt)
        assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset_info.json", "pairs.jsonl", "t_v1.jsonl", "train.parquet"]  # fmt: skip
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"theirs", "t_v1"} and info["t_v1"]["ranking"] is True
    assert len((out / "pairs.jsonl").read_text().splitlines()) == len(t["pairs"])
    before = (out / "pairs.jsonl").read_bytes()
    code, _, err = run(capsys, "export", str(v1), "--out", str(out), "--format", "jsonl")
    assert code == 2 and "already exists" in err and (out / "pairs.jsonl").read_bytes() == before


def test_help_is_reflowed_and_the_command_list_gives_one_sentence_each():
    """`--help` reads as paragraphs the terminal wraps, not the docstrings' hard line breaks;
    the command list shows each command's first sentence."""
    from typer.testing import CliRunner

    out = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "100"}).output
    assert "candidates, their responses and scores are reused" in out  # one line, not two
    assert "(their starting models first) into the cache." in out
    assert "build, rescore, check-reward" not in out  # the rest of prepare's help stays there
    assert cli._reflowed("a\n    b\n\n    c") == "a b\n\nc"
    assert cli._first_sentence("One thing. Then more.\n\nElse.") == "One thing."
