"""Versions are immutable, written atomically, readable by datasets and by the Hub's card parser."""

import errno
import os
from pathlib import Path

import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from synthetic import digest, tables

from icr_data.base.files import atomic_write, atomic_write_text
from icr_data.store import store
from icr_data.store.card import render_card


def test_second_version_leaves_first_byte_identical(tmp_path):
    t, m = tables()
    v1 = store.write_version(tmp_path, "t", t, m, render_card)
    before = digest(v1)
    t2, m2 = tables(shift=1.0)
    v2 = store.write_version(tmp_path, "t", t2, m2, render_card)
    assert (v1.name, v2.name) == ("v1", "v2")
    assert digest(v1) == before
    assert store.versions(tmp_path / "t") == ["v1", "v2"]
    assert store.read_manifest(v2)["version"] == "v2"


def test_existing_version_name_refused(tmp_path):
    t, m = tables()
    v1 = store.write_version(tmp_path, "t", t, m, render_card, name="v1")
    before = digest(v1)
    with pytest.raises(store.StoreError, match="v1 already exists"):
        store.write_version(tmp_path, "t", t, m, render_card, name="v1")
    assert digest(v1) == before


def test_interrupted_write_leaves_no_visible_version(tmp_path):
    t, m = tables()

    def broken_card(manifest):
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError):
        store.write_version(tmp_path, "t", t, m, broken_card)
    assert store.versions(tmp_path / "t") == []
    assert list((tmp_path / "t").iterdir()) == []  # the temporary folder is cleaned up
    # a process killed mid-write leaves only a hidden temporary folder, never a version
    (tmp_path / "t" / ".tmp-killed" / "data").mkdir(parents=True)
    assert store.versions(tmp_path / "t") == [] and store.next_version(tmp_path / "t") == "v1"


def test_reading_two_equal_shape_versions_is_not_fooled_by_a_cache(tmp_path):
    t, m = tables()
    v1 = store.write_version(tmp_path, "t", t, m, render_card)
    t2, m2 = tables(shift=10.0)
    v2 = store.write_version(tmp_path, "t", t2, m2, render_card)
    r1 = store.read_table(v1, "candidates")["reward"]
    r2 = store.read_table(v2, "candidates")["reward"]
    assert r2 == pytest.approx([r + 10.0 for r in r1])


def test_load_dataset_and_card(tmp_path):
    t, m = tables()
    v1 = store.write_version(tmp_path, "t", t, m, render_card)
    pairs = load_dataset(str(v1), "pairs", split="train")
    cands = load_dataset(str(v1), "candidates", split="train")
    assert len(pairs) == 4 and len(cands) == 12
    assert sorted(pairs["margin"]) == pytest.approx([0.6] * 4)
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "r1r1"}]
    card = DatasetCard.load(v1 / "README.md")
    assert card.data.language == ["en", "de"]
    assert card.data.license == "apache-2.0"
    assert card.data.size_categories == ["n<1K"]
    assert [c["config_name"] for c in card.data.configs] == ["pairs", "candidates"]
    assert "| de | 2 | 6 | 2 |" in card.text
    assert render_card(store.read_manifest(v1)) == (v1 / "README.md").read_text()  # pure


def test_load_dataset_tells_same_named_versions_apart(tmp_path):
    """Two stores each holding t/v1 of the same shape: load_dataset must return each one's rows."""
    t, m = tables()
    a = store.write_version(tmp_path / "a", "t", t, m, render_card)
    t2, m2 = tables(shift=10.0)
    b = store.write_version(tmp_path / "b", "t", t2, m2, render_card)
    ra = load_dataset(str(a), "candidates", split="train")["reward"]
    rb = load_dataset(str(b), "candidates", split="train")["reward"]
    assert rb == pytest.approx([r + 10.0 for r in ra])


def _claims(tmp_path, monkeypatch, on_claim):
    """Patch os.rename so that renames onto a version name in tmp_path/t go through on_claim."""
    import os

    real = os.rename
    calls = []

    def rename(src, dst):
        dst = Path(dst)
        if dst.parent == tmp_path / "t" and store.VERSION_RE.match(dst.name):
            calls.append(dst.name)
            return on_claim(real, src, dst)
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_claim_reraises_what_is_not_a_name_collision(tmp_path, monkeypatch):
    """A rename that fails for another reason than a taken name is not retried: StoreError naming
    the folder and the reason, and the temporary folder is gone."""

    def refuse(real, src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))

    calls = _claims(tmp_path, monkeypatch, refuse)
    t, m = tables()
    with pytest.raises(
        store.StoreError, match=r"cannot move the new version into .*v1: Permission denied"
    ):
        store.write_version(tmp_path, "t", t, m, render_card)
    assert calls == ["v1"]  # tried once: it is not a taken name, so no other name is tried
    assert list((tmp_path / "t").iterdir()) == []


def test_claim_retries_when_another_writer_takes_the_name(tmp_path, monkeypatch):
    """A writer that claims v1 between our choice of the name and our rename: we take v2."""

    def race(real, src, dst):
        if dst.name == "v1":
            (dst / "data").mkdir(parents=True)  # the other writer's version, non-empty
        return real(src, dst)

    calls = _claims(tmp_path, monkeypatch, race)
    t, m = tables()
    v = store.write_version(tmp_path, "t", t, m, render_card)
    assert calls == ["v1", "v2"] and v.name == "v2" and store.read_manifest(v)["version"] == "v2"
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["v1", "v2"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "info.json"
    target.write_text("old")

    def half(tmp):
        Path(tmp).write_text("half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["info.json"]  # no temporary file left
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["info.json"]
