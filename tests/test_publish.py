"""Publishing a version: the pure plan, the dry run read back, and the executor against an
autospec'd HfApi (call order and arguments), offline. A live test runs only when
ICR_DATA_TEST_HUB_ENDPOINT and ICR_DATA_TEST_HUB_TOKEN are set."""

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from unittest import mock

import httpx2
import pytest
import requests
from datasets import load_dataset
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    DatasetCard,
    HfApi,
    RepoUrl,
    constants,
)
from huggingface_hub.hf_api import CommitInfo, DatasetInfo, GitRefInfo, GitRefs
from huggingface_hub.utils import hf_raise_for_status
from synthetic import digest, tables

from icr_data.cli import main
from icr_data.commands import publish
from icr_data.store import store
from icr_data.store.card import render_card

TOKEN = "hf_secret_xyz"
OID = "0123456789abcdef0123456789abcdef01234567"
HEAD = "e" * 40  # main before the commit


def write(store_dir: Path, shift: float = 0.0) -> Path:
    """A version with 4 pairs and 12 candidates in en and de (rewards shifted by `shift`)."""
    tabs, manifest = tables(shift)
    return store.write_version(store_dir, "t", tabs, manifest, render_card)


@pytest.fixture
def versions(tmp_path) -> tuple[Path, Path]:
    return write(tmp_path / "store"), write(tmp_path / "store", shift=1.0)


@pytest.fixture(autouse=True)
def _token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)


def fake_api(remote: list[str], tag_files: list[str], readme: str | None = None, tags=()):
    """An autospec'd HfApi: main holds `remote`, the new tag holds `tag_files`."""
    api = mock.create_autospec(HfApi, instance=True)
    api.create_repo.return_value = RepoUrl("https://huggingface.co/datasets/me/icr")
    api.repo_info.return_value = DatasetInfo(id="me/icr", private=True)
    api.list_repo_refs.return_value = GitRefs(
        branches=[GitRefInfo("main", "refs/heads/main", HEAD)], converts=[],
        tags=[GitRefInfo(t, f"refs/tags/{t}", "f" * 40) for t in tags],
    )  # fmt: skip
    api.list_repo_files.side_effect = [remote, [".gitattributes", *tag_files]]
    api.create_commit.return_value = CommitInfo(
        commit_url=f"https://huggingface.co/datasets/me/icr/commit/{OID}",
        commit_message="m", commit_description="", oid=OID,
    )  # fmt: skip

    def download(repo_id, filename, *, cache_dir, **kw):
        path = Path(cache_dir) / filename
        path.write_text(readme, encoding="utf-8")
        return str(path)

    api.hf_hub_download.side_effect = download
    return api


def published_bytes(version: Path, path: str, repo: str = "me/icr") -> bytes:
    """A file as publishing to `repo` uploads it: the card's load snippet names the repo."""
    data = (version / path).read_bytes()
    if path == "README.md":
        data = data.replace(b'"<this folder or Hub repo>"', f'"{repo}"'.encode())
    return data


def test_plan_lists_the_version_files_with_size_and_sha256(versions, tmp_path):
    v1, _ = versions
    manifest = store.read_manifest(v1)
    plan = publish.plan_publish(v1, "me/icr")
    pairs_file, cands_file = manifest["files"]["pairs"][0], manifest["files"]["candidates"][0]
    assert [op.path_in_repo for op in plan.operations] == sorted(
        ["README.md", "manifest.json", pairs_file, cands_file]
    )
    for op in plan.operations:
        data = published_bytes(v1, op.path_in_repo)
        assert (op.op, op.size, op.sha256) == ("add", len(data), hashlib.sha256(data).hexdigest())
    assert pairs_file.startswith("data/pairs/train-00000-of-00001-") and op.size > 0
    assert (plan.repo_id, plan.repo_type, plan.tag, plan.private) == (
        "me/icr",
        "dataset",
        "v1",
        False,
    )
    assert plan.commit_message == "t v1: 4 pairs in 2 languages (icr-data)"
    # deterministic, and free of local paths: a copy of the folder elsewhere plans the same JSON
    copy = shutil.copytree(v1, tmp_path / "elsewhere" / "v1")
    assert publish.plan_publish(copy, "me/icr").to_json() == plan.to_json()
    assert str(tmp_path) not in plan.to_json()
    card = published_bytes(v1, "README.md")
    assert json.loads(plan.to_json())["operations"][0] == {
        "op": "add", "path_in_repo": "README.md", "size": len(card),
        "sha256": hashlib.sha256(card).hexdigest(),
    }  # fmt: skip
    assert publish.plan_publish(v1, "me/icr", private=True).private is True


def test_repo_ids():
    assert publish.parse_repo_id("datasets/me/icr") == "me/icr"
    assert publish.parse_repo_id("https://huggingface.co/datasets/me/icr/") == "me/icr"
    for bad, why in [("models/me/icr", "is a model repo"), ("spaces/me/icr", "is a space repo"),
                     ("icr", "not a dataset repo id"), ("me/icr/x", "not a dataset repo id"),
                     ("me/bad name", "not a dataset repo id")]:  # fmt: skip
        with pytest.raises(publish.PublishError, match=why):
            publish.parse_repo_id(bad)


def test_remote_files_of_an_earlier_version_are_deleted(versions):
    v1, v2 = versions
    p1, p2 = publish.plan_publish(v1, "me/icr"), publish.plan_publish(v2, "me/icr")
    remote = [".gitattributes", *(op.path_in_repo for op in p1.adds)]
    plan = publish.with_remote_files(p2, remote)
    stale = sorted({op.path_in_repo for op in p1.adds} - {op.path_in_repo for op in p2.adds})
    assert len(stale) == 2 and all(s.endswith(".parquet") for s in stale)  # content changed
    assert [op.path_in_repo for op in plan.operations if op.op == "delete"] == stale
    assert plan.adds == p2.adds


def test_dry_run_writes_what_would_be_uploaded(versions, tmp_path):
    v1, _ = versions
    before = digest(v1)
    plan = publish.plan_publish(v1, "me/icr")
    out = publish.dry_run(plan, tmp_path / "out")
    readme = hashlib.sha256(published_bytes(v1, "README.md")).hexdigest()
    assert digest(out) == {**before, "README.md": readme, "plan.json": digest(out)["plan.json"]}
    assert (out / "plan.json").read_text() == plan.to_json()
    pairs = load_dataset(str(out), "pairs", split="train")
    local = store.read_table(v1, "pairs")
    assert len(pairs) == 4 and pairs.column_names == local.column_names
    assert pairs["margin"] == pytest.approx(local["margin"])
    assert sorted(pairs["margin"]) == pytest.approx([0.6] * 4)
    assert pairs["chosen"] == local["chosen"] and pairs["prompt_id"] == local["prompt_id"]
    assert len(load_dataset(str(out), "candidates", split="train")) == 12
    card = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["pairs", "candidates"]
    assert (
        card.data.configs[0]["data_files"][0]["path"]
        == store.read_manifest(v1)["files"]["pairs"][0]
    )
    with pytest.raises(publish.PublishError, match="is not empty"):
        publish.dry_run(plan, out)
    with pytest.raises(publish.PublishError, match="inside the version"):
        publish.dry_run(plan, v1 / "out")
    assert digest(v1) == before


def test_first_version_is_one_commit_then_a_tag(versions):
    v1, _ = versions
    plan = publish.plan_publish(v1, "me/icr", private=True)
    api = fake_api([".gitattributes"], [op.path_in_repo for op in plan.adds])
    result = publish.execute(plan, api)
    assert [c[0] for c in api.mock_calls] == ["create_repo", "repo_info", "list_repo_refs",
                                              "list_repo_files", "create_commit", "create_tag",
                                              "list_repo_files"]  # fmt: skip
    api.create_repo.assert_called_once_with(
        "me/icr", private=True, exist_ok=True, repo_type="dataset"
    )
    args, kw = api.create_commit.call_args
    ops = kw.pop("operations")
    assert args == ("me/icr",)
    assert kw == {"commit_message": plan.commit_message, "revision": "main",
                  "parent_commit": HEAD, "repo_type": "dataset"}  # fmt: skip
    assert api.list_repo_files.call_args_list[0].kwargs["revision"] == HEAD
    assert all(isinstance(op, CommitOperationAdd) for op in ops)
    assert [op.path_in_repo for op in ops] == [op.path_in_repo for op in plan.adds]
    assert [op.upload_info.sha256.hex() for op in ops] == [op.sha256 for op in plan.adds]
    assert [op.upload_info.size for op in ops] == [op.size for op in plan.adds]
    assert ops[0].path_or_fileobj == published_bytes(v1, "README.md")  # no README on the Hub yet
    api.create_tag.assert_called_once_with(
        "me/icr", tag="v1", revision=OID, tag_message=plan.commit_message, repo_type="dataset"
    )
    api.hf_hub_download.assert_not_called()
    assert result == publish.PublishResult("https://huggingface.co/datasets/me/icr", OID, "v1", ())


def test_second_version_deletes_the_first_versions_files(versions):
    v1, v2 = versions
    p1, p2 = publish.plan_publish(v1, "me/icr"), publish.plan_publish(v2, "me/icr")
    old = [op.path_in_repo for op in p1.adds]
    api = fake_api([".gitattributes", *old], [op.path_in_repo for op in p2.adds],
                   readme=(v1 / "README.md").read_text(), tags=["v1"])  # fmt: skip
    result = publish.execute(p2, api)
    ops = api.create_commit.call_args.kwargs["operations"]
    deletes = [op.path_in_repo for op in ops if isinstance(op, CommitOperationDelete)]
    assert deletes == sorted(p for p in old if p.endswith(".parquet")) and len(deletes) == 2
    assert result.deleted == tuple(deletes)
    # v1's card has nothing ours lacks: v2's card goes up byte for byte
    assert ops[0].path_in_repo == "README.md" and ops[0].path_or_fileobj == published_bytes(
        v2, "README.md"
    )
    api.create_tag.assert_called_once()
    assert api.create_tag.call_args.kwargs["tag"] == "v2"
    assert api.list_repo_files.call_args_list[-1].kwargs["revision"] == "v2"


def test_existing_readme_metadata_is_merged(versions):
    v1, _ = versions
    theirs = (
        "---\nlicense: mit\nannotations_creators:\n- machine-generated\ntags:\n- mine\n"
        "dataset_info:\n  splits:\n  - name: train\n    num_examples: 99\n---\n\nMy notes.\n"
    )
    plan = publish.plan_publish(v1, "me/icr")
    remote = [".gitattributes", "README.md", "notes.txt"]
    api = fake_api(remote, [op.path_in_repo for op in plan.adds], readme=theirs)
    publish.execute(plan, api)
    assert api.hf_hub_download.call_args.args == ("me/icr", "README.md")
    assert api.hf_hub_download.call_args.kwargs["revision"] == HEAD
    ops = api.create_commit.call_args.kwargs["operations"]
    card = DatasetCard(ops[0].path_or_fileobj.decode())
    ours = DatasetCard(published_bytes(v1, "README.md").decode())
    assert card.data.license == "apache-2.0"  # ours wins
    assert card.data.annotations_creators == ["machine-generated"]  # theirs kept
    assert card.data.tags == [*ours.data.tags, "mine"]
    assert (
        card.data.configs == ours.data.configs and card.data.to_dict().get("dataset_info") is None
    )
    assert card.text == ours.text and "My notes" not in card.text
    assert [op.path_in_repo for op in ops if isinstance(op, CommitOperationDelete)] == ["notes.txt"]


@pytest.mark.parametrize(("theirs", "kind"), [
    ("---\n- a\n- b\n---\nbody\n", "ValueError: repo card metadata block should be a dict"),
    ("---\nkey: [unclosed\n---\nbody\n", "ParserError: while parsing a flow sequence"),
])  # fmt: skip
def test_unmergeable_readme_is_one_line_and_commits_nothing(versions, theirs, kind):
    v1, _ = versions
    before = digest(v1)
    api = fake_api([".gitattributes", "README.md"], [], readme=theirs)
    with pytest.raises(publish.PublishError) as info:
        publish.execute(publish.plan_publish(v1, "me/icr"), api)
    message = str(info.value)
    assert message.startswith("me/icr's README.md cannot be merged with our card (" + kind)
    assert "nothing was committed" in message and "\n" not in message
    api.create_commit.assert_not_called()
    assert digest(v1) == before


def test_public_unless_private_is_asked_leaves_the_default_to_the_hub(versions):
    v1, _ = versions
    api = fake_api(
        [".gitattributes"], [op.path_in_repo for op in publish.plan_publish(v1, "me/icr").adds]
    )
    publish.execute(publish.plan_publish(v1, "me/icr"), api)
    api.create_repo.assert_called_once_with(
        "me/icr", private=None, exist_ok=True, repo_type="dataset"
    )


def test_refusals_before_any_commit(versions):
    v1, _ = versions
    before = digest(v1)
    api = fake_api([".gitattributes"], [], tags=["v1"])
    with pytest.raises(publish.PublishError, match="already has tag v1 \\(commit ffffffffffff\\)"):
        publish.execute(publish.plan_publish(v1, "me/icr"), api)
    api = fake_api([".gitattributes"], [])
    api.repo_info.return_value = DatasetInfo(id="me/icr", private=False)
    with pytest.raises(publish.PublishError, match="exists and is public"):
        publish.execute(publish.plan_publish(v1, "me/icr", private=True), api)
    api.create_commit.assert_not_called()
    assert digest(v1) == before


def http_error(status: int) -> Exception:
    request = httpx2.Request("POST", f"https://huggingface.co/api/repos/create?t={TOKEN}")
    response = httpx2.Response(status, request=request, json={"error": f"bad token {TOKEN}"})
    try:
        hf_raise_for_status(response)
    except Exception as e:  # the real error huggingface_hub raises for this answer
        return e
    raise AssertionError(status)


HUB_ERRORS = [
    ("create_repo", http_error(401), "the Hub rejected the token (401 Unauthorized)"),
    ("create_repo", http_error(403), "no write access to dataset repo me/icr (403 Forbidden)"),
    ("create_commit", http_error(500), "the Hub answered 500: bad token *** while committing to main"),
    ("create_commit", http_error(412), "main of dataset repo me/icr moved while publishing"),
    ("create_repo", ConnectionError(f"no route (hf_OtherToken42 {TOKEN})"),
     "cannot reach the Hub (ConnectionError: no route (hf_*** ***)); check the network"),
    ("list_repo_refs", requests.ConnectionError("refused"), "cannot reach the Hub (ConnectionError"),
    ("create_repo", httpx2.ConnectError("down"), "cannot reach the Hub (ConnectError: down)"),
    ("create_tag", httpx2.ConnectError("down"), f"while tagging commit {OID[:12]} as v1 (re-run"),
]  # fmt: skip
try:  # httpx (not huggingface_hub's own client) is there when another library brought it
    import httpx

    HUB_ERRORS.append(("create_repo", httpx.ConnectError("off"), "(ConnectError: off); check"))
except ImportError:  # pragma: no cover
    pass


@pytest.mark.parametrize(("method", "error", "expected"), HUB_ERRORS)
def test_hub_errors_are_one_line_without_the_token(versions, method, error, expected):
    v1, _ = versions
    before = digest(v1)
    api = fake_api([".gitattributes"], [])
    getattr(api, method).side_effect = error
    with pytest.raises(publish.PublishError) as info:
        publish.execute(publish.plan_publish(v1, "me/icr"), api)
    message = str(info.value)
    assert expected in message and "\n" not in message and TOKEN not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert digest(v1) == before


def test_no_token(versions, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    api = fake_api([], [])
    with pytest.raises(publish.PublishError, match="no Hugging Face token: set HF_TOKEN"):
        publish.execute(publish.plan_publish(versions[0], "me/icr"), api)
    assert api.mock_calls == []


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_cli_dry_run_and_errors(versions, tmp_path, capsys, monkeypatch):
    v1, _ = versions
    out = tmp_path / "dry"
    assert run_cli(["publish", str(v1), "--repo", "me/icr", "--dry-run", str(out)]) == 0
    captured = capsys.readouterr()
    assert (
        captured.out == f"{out}\n"
        and "4 files" in captured.err
        and "nothing was sent" in captured.err
    )
    assert json.loads((out / "plan.json").read_text())["tag"] == "v1"
    store_dir = str(v1.parents[1])  # dataset/vN is looked up in --store
    assert (
        run_cli(
            [
                "publish",
                "t/v2",
                "--store",
                store_dir,
                "--repo",
                "me/icr",
                "--dry-run",
                str(tmp_path / "d2"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "d2" / "plan.json").read_text())["tag"] == "v2"
    capsys.readouterr()
    assert run_cli(["publish", str(v1), "--repo", "me/icr", "--dry-run", str(out)]) == 2
    assert "error: --dry-run folder" in capsys.readouterr().err
    assert run_cli(["publish", str(v1), "--repo", "models/me/icr"]) == 2
    assert "is a model repo" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert run_cli(["publish", str(v1), "--repo", "me/icr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Hugging Face token") and err.count("\n") == 1


@pytest.mark.skipif(
    not all(os.environ.get(k) for k in ("ICR_DATA_TEST_HUB_ENDPOINT", "ICR_DATA_TEST_HUB_TOKEN")),
    reason="live Hub test: set ICR_DATA_TEST_HUB_ENDPOINT and ICR_DATA_TEST_HUB_TOKEN",
)
def test_live_publish_two_versions(versions, monkeypatch, tmp_path):
    from datasets import config as datasets_config

    v1, v2 = versions
    endpoint, token = (
        os.environ["ICR_DATA_TEST_HUB_ENDPOINT"],
        os.environ["ICR_DATA_TEST_HUB_TOKEN"],
    )
    api = HfApi(endpoint=endpoint, token=token)
    for where in (constants, datasets_config):  # load_dataset reads that endpoint
        monkeypatch.setattr(where, "ENDPOINT" if where is constants else "HF_ENDPOINT", endpoint)
    repo = f"{api.whoami()['name']}/icr-data-test-{uuid.uuid4().hex[:8]}"
    try:
        plans = [publish.plan_publish(v, repo, private=True) for v in (v1, v2)]
        results = [publish.execute(plan, api) for plan in plans]
        assert results[1].deleted and results[0].commit_oid != results[1].commit_oid
        for plan in plans:
            files = set(api.list_repo_files(repo, repo_type="dataset", revision=plan.tag))
            assert files - {".gitattributes"} == {op.path_in_repo for op in plan.adds}
        for v, plan in zip((v1, v2), plans):  # each tag loads as that version's pairs
            pairs = load_dataset(repo, "pairs", split="train", revision=plan.tag, token=token,
                                 cache_dir=str(tmp_path / "cache"))  # fmt: skip
            assert pairs["margin"] == store.read_table(v, "pairs")["margin"]
        main_files = set(api.list_repo_files(repo, repo_type="dataset")) - {".gitattributes"}
        assert main_files == {op.path_in_repo for op in plans[1].adds}
    finally:
        api.delete_repo(repo, repo_type="dataset", missing_ok=True)
