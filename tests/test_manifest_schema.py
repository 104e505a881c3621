"""The manifest's schema version (issue 29): written as `"schema": 1`, an older manifest without it
read as schema 1, a newer or nonsensical one refused, and a manifest missing keys named with all of
them, in one line, by every command that reads a version.

    pytest tests/test_manifest_schema.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import cli_exit, write_synthetic

from icr_data.store import integrity, store

write, run = write_synthetic, cli_exit


def edit(v: Path, change) -> None:
    manifest = json.loads((v / "manifest.json").read_text(encoding="utf-8"))
    change(manifest)
    (v / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def readers(v: Path, out: Path) -> list[list[str]]:
    return [["verify", str(v)], ["inspect", str(v)], ["pair", str(v), "--strategy", "max_min"],
            ["export", str(v), "--format", "jsonl", "--out", str(out / "o")],
            ["publish", str(v), "--repo", "me/icr", "--dry-run", str(out / "d")]]  # fmt: skip


def test_a_written_manifest_opens_with_its_schema(tmp_path):
    v = write(tmp_path)
    on_disk = json.loads((v / "manifest.json").read_text(encoding="utf-8"))
    assert next(iter(on_disk)) == "schema" and on_disk["schema"] == store.MANIFEST_SCHEMA == 1
    assert store.read_manifest(v).missing() == []


def test_a_manifest_written_before_schemas_reads_as_schema_1(tmp_path, capsys):
    v = write(tmp_path)
    edit(v, lambda m: m.pop("schema"))
    assert store.read_manifest(v)["dataset"] == "t"
    assert integrity.check(v, full=True) == []
    code, err = run(capsys, "pair", str(v), "--strategy", "max_min")
    assert code == 0 and store.versions(v.parent) == ["v1", "v2"], err
    assert store.read_manifest(v.parent / "v2")["schema"] == 1  # what it writes carries one


@pytest.mark.parametrize("schema", [2, 7, 10**6])
def test_a_newer_schema_is_refused_by_every_reader(tmp_path, capsys, schema):
    v = write(tmp_path)
    edit(v, lambda m: m.update(schema=schema))
    for args in readers(v, tmp_path):
        code, err = run(capsys, *args)
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1, (args, err)
        assert f"manifest schema {schema}, newer than" in err and "manifest.json" in err, err
    assert store.versions(v.parent) == ["v1"] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("schema", ["1", 0, -1, 1.0, 1.5, True, None, [1], {"v": 1}, "x" * 500])
def test_a_schema_that_is_no_number_is_refused(tmp_path, schema):
    v = write(tmp_path)
    edit(v, lambda m: m.update(schema=schema))
    with pytest.raises(store.StoreError, match="not a schema number") as e:
        store.read_manifest(v)
    assert str(e.value).startswith(str(v / "manifest.json")) and len(str(e.value)) < 200


@pytest.mark.parametrize(
    "removed",
    [("files",), ("totals",), ("recipe", "models"), ("scoring", "pairing", "counts", "margins"),
     ("dataset", "version", "files")],
)  # fmt: skip
def test_missing_keys_are_all_named_in_one_line(tmp_path, capsys, removed):
    v = write(tmp_path)
    edit(v, lambda m: [m.pop(k) for k in removed])
    assert store.read_manifest(v).missing() == list(removed)  # in REQUIRED_KEYS' order
    named = ", ".join(repr(k) for k in removed)
    for args in readers(v, tmp_path):
        code, err = run(capsys, *args)
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1, (args, err)
        assert f"manifest.json: has no {named} (" in err, (args, err)
    assert store.versions(v.parent) == ["v1"]


def test_an_optional_key_read_as_required_names_itself(tmp_path):
    v = write(tmp_path)
    m = store.read_manifest(v)
    with pytest.raises(store.StoreError, match=r"has no 'nothing_such' \(damaged"):
        m["nothing_such"]
    edit(v, lambda m: [m.pop(k) for k in ("totals", "margins")])
    m = store.read_manifest(v)
    assert m["counts"]["de"]["pairs"] == 2  # what is there reads
    with pytest.raises(store.StoreError, match=r"has no 'margins', 'totals' \("):
        m["totals"]  # a required key: every missing one is named


@pytest.mark.parametrize("kind, keys", [(k, v) for k, v in store.REQUIRED_KEYS.items()])
def test_each_kind_requires_its_own_keys(tmp_path, kind, keys):
    v = tmp_path / "x" / "v1"
    v.mkdir(parents=True)
    (v / "manifest.json").write_text(json.dumps({"schema": 1, "kind": kind}))
    m = store.read_manifest(v)
    assert m.missing() == [k for k in keys if k != "kind"] and "files" in keys
    (v / "manifest.json").write_text(json.dumps({"kind": kind, **{k: 0 for k in keys}}))
    assert store.read_manifest(v).missing() == []
