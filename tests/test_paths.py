"""Paths must not escape (issue 19, section 3): version and dataset names, write targets inside
their folders, export/plot/dry-run targets outside every version, no symlinks published, and
modes that follow the umask."""

import json
import os
import stat
from pathlib import Path

import pytest
from synthetic import digest, tables

from icr_data.base.files import atomic_write_text
from icr_data.cli import main
from icr_data.commands import export, publish
from icr_data.store import store
from icr_data.store.card import render_card


def write(store_dir: Path, name: str | None = None, dataset: str = "t") -> Path:
    tabs, manifest = tables()
    return store.write_version(store_dir, dataset, tabs, manifest, render_card, name=name)


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("name", ["../../escaped", "latest", "v1/../../x", "v01x", "", "/tmp/v1"])
def test_version_name_must_be_v_n(tmp_path, name):
    root = tmp_path / "root"
    (root / "store").mkdir(parents=True)
    with pytest.raises(store.StoreError, match=r"--version .* is not a version name: use v<N>"):
        write(root / "store", name=name)
    assert files_under(root) == ["store"]  # nothing written, inside the store or outside it


@pytest.mark.parametrize("dataset", ["..", "../x", "a/b", ".hidden", "-x", "/abs"])
def test_dataset_name_is_one_plain_folder(tmp_path, dataset):
    (tmp_path / "store").mkdir()
    with pytest.raises(store.StoreError, match="is not a dataset name"):
        write(tmp_path / "store", dataset=dataset)
    assert files_under(tmp_path) == ["store"]


def test_cli_build_refuses_a_bad_version_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo_tiny.yaml"
    for bad in ("../../escaped", "latest"):
        assert run_cli(["build", str(recipe), "--store", "s", "--version", bad]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"error: --version '{bad}' is not a version name")
            and err.count("\n") == 1
        )
    assert files_under(tmp_path) == []


def test_rescore_and_repair_refuse_a_bad_name_first(tmp_path):
    from icr_data.commands.derive import repair, rescore

    v1 = write(tmp_path / "store")
    for fn in (repair, rescore):
        with pytest.raises(store.StoreError, match="--version 'latest' is not a version name"):
            fn(v1, name="latest")
    assert store.versions(tmp_path / "store" / "t") == ["v1"]


@pytest.mark.parametrize("where", ["version", "subfolder", "new-subfolder", "other-version"])
def test_export_into_any_version_folder_is_refused(tmp_path, where):
    v1 = write(tmp_path / "store")
    other = write(tmp_path / "elsewhere", dataset="u")
    out = {"version": v1, "subfolder": v1 / "data" / "pairs", "new-subfolder": v1 / "x" / "y",
           "other-version": other / "data"}[where]  # fmt: skip
    before = digest(v1), digest(other)
    for fmt in export.FORMATS:
        with pytest.raises(export.ExportError, match="--out .* is inside the version"):
            export.export(v1, fmt, out)
    assert (digest(v1), digest(other)) == before and not (v1 / "x").exists()


def test_cli_export_into_a_version_is_one_line(tmp_path, capsys):
    v1 = write(tmp_path / "store")
    before = digest(v1)
    assert run_cli(["export", str(v1), "--format", "jsonl", "--out", str(v1 / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "is inside the version" in err
    assert err.count("\n") == 1 and digest(v1) == before


def test_export_names_from_a_manifest_stay_inside_out(tmp_path):
    v1 = write(tmp_path / "store")
    m = store.read_manifest(v1)
    m["dataset"] = "../../../escaped"
    (v1 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(export.ExportError, match="would be written outside"):
        export.export(v1, "llamafactory", tmp_path / "out")
    assert not list(tmp_path.rglob("*escaped*"))


def test_plot_inside_any_version_is_refused(tmp_path, capsys):
    from icr_data.commands import inspection as ins

    v1, v2 = write(tmp_path / "store"), write(tmp_path / "store")
    before = digest(v1), digest(v2)
    for target in (v2 / "m.png", v1 / "data" / "m.png", v2 / "new" / "m.png"):
        assert run_cli(["inspect", str(v1), "--plot", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --plot") and "is inside the version" in err
    report = ins.inspect_version(v1)
    with pytest.raises(store.StoreError, match="is inside the version"):
        ins.plot(report.df, report.hist, v2 / "m.png", report.unit)
    assert (digest(v1), digest(v2)) == before and not (v2 / "new").exists()
    assert run_cli(["inspect", str(v1), "--plot", str(tmp_path / "ok" / "m.png")]) == 0
    assert (tmp_path / "ok" / "m.png").is_file()


@pytest.mark.parametrize("kind", ["file", "folder", "hidden", "data"])
def test_publish_refuses_symlinks(tmp_path, kind):
    v1 = write(tmp_path / "store")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "a.txt").write_text("key\n")
    link = {"file": v1 / "passwd", "folder": v1 / "extra", "hidden": v1 / ".x",
            "data": v1 / "data" / "pairs" / "more.parquet"}[kind]  # fmt: skip
    link.symlink_to(tmp_path / "secrets" if kind == "folder" else secret)
    with pytest.raises(publish.PublishError, match=f"{link.name} is a symlink"):
        publish.plan_publish(v1, "me/icr")
    assert run_cli(["publish", str(v1), "--repo", "me/icr", "--dry-run", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


def test_a_link_swapped_in_after_planning_is_not_read(tmp_path, monkeypatch):
    from unittest import mock

    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", "hf_secret_xyz")
    v1 = write(tmp_path / "store")
    plan = publish.plan_publish(v1, "me/icr")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (v1 / "manifest.json").unlink()
    (v1 / "manifest.json").symlink_to(secret)
    with pytest.raises(publish.PublishError, match="manifest.json is a symlink"):
        publish.dry_run(plan, tmp_path / "dry")
    api = mock.create_autospec(HfApi, instance=True)
    api.list_repo_refs.return_value = mock.Mock(tags=[], branches=[])
    api.list_repo_files.return_value = []
    with pytest.raises(publish.PublishError, match="manifest.json is a symlink"):
        publish.execute(plan, api)
    api.create_commit.assert_not_called()


def test_a_version_reached_through_a_link_publishes_its_own_files(tmp_path):
    v1 = write(tmp_path / "store")
    (tmp_path / "latest").symlink_to(v1)  # a link *to* a version is the user's pointer
    plan = publish.plan_publish(tmp_path / "latest", "me/icr")
    assert plan.to_json() == publish.plan_publish(v1, "me/icr").to_json()


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_modes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        v1 = write(tmp_path / "store")
        atomic_write_text(tmp_path / "new.txt", "x")
        (tmp_path / "kept.txt").write_text("old")
        os.chmod(tmp_path / "kept.txt", 0o640)
        atomic_write_text(tmp_path / "kept.txt", "new")
    finally:
        os.umask(old)
    dirs = [v1, *(p for p in v1.rglob("*") if p.is_dir())]
    files = [p for p in v1.rglob("*") if p.is_file()]
    assert {_mode(d) for d in dirs} == {0o777 & ~mask}
    assert {_mode(f) for f in files} == {0o666 & ~mask} and len(files) == 4
    assert _mode(tmp_path / "new.txt") == 0o666 & ~mask
    assert _mode(tmp_path / "kept.txt") == 0o640  # a replaced file keeps its mode


def test_dry_run_into_another_version_is_refused(tmp_path):
    v1, v2 = write(tmp_path / "store"), write(tmp_path / "store")
    before = digest(v2)
    with pytest.raises(publish.PublishError, match="--dry-run folder .* is inside the version"):
        publish.dry_run(publish.plan_publish(v1, "me/icr"), v2 / "data" / "dry")
    assert digest(v2) == before and not (v2 / "data" / "dry").exists()


def test_a_dataset_folder_linked_elsewhere_still_takes_versions(tmp_path):
    """The name checks are by name: a link the user made (a bigger disk) is theirs to make."""
    (tmp_path / "big" / "t").mkdir(parents=True)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "t").symlink_to(tmp_path / "big" / "t")
    v1 = write(tmp_path / "store")
    assert (tmp_path / "big" / "t" / "v1" / "manifest.json").is_file() and v1.name == "v1"


def test_shipped_training_outputs_are_ignored_by_git():
    """`icr-data train recipes/dpo_demo_tiny.yaml` writes its config's output_dir (runs/...),
    relative to the working directory as the store is: git ignores both in a checkout."""
    import shutil
    import subprocess

    import yaml

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    configs = [yaml.safe_load(f.read_text()) for f in (root / "recipes").glob("*.yaml")]
    outs = [c["output_dir"] for c in configs if c.get("output_dir")] + ["icr_store/demo/v1"]
    assert any(o.startswith("runs/") for o in outs)
    for out in outs:
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{out}/model.safetensors"],
                           cwd=root)  # fmt: skip
        assert r.returncode == 0, f"{out} is not ignored by .gitignore"
