"""Publish a version folder to the Hugging Face Hub: one commit on main, one tag named after it.
Over 400 lines: one job (the plan, its dry-run executor and its Hub executor, kept together).

    icr-data publish icr_store/demo/v1 --repo me/icr-demo [--private] [--dry-run out/]

`plan_publish` is pure: it reads the version folder and returns a `PublishPlan` (every file to add,
with its size and sha256, the commit message, the tag); the same version always gives the same
plan JSON. `dry_run` writes exactly the files that would be uploaded, at their repo paths, plus
plan.json, so `load_dataset(folder, "pairs")` shows what the Hub will serve. `execute` sends the
plan with huggingface_hub: create_repo, read the repo (visibility, tags, files, README.md),
create_commit on main (this version's files added, files of earlier versions deleted), create_tag
at that commit, then check the tag holds exactly the plan's files. After that,
`load_dataset(repo, "pairs", revision="v1")` loads v1, and earlier tags stay loadable.

Before anything is planned, the version is checked: a symlink anywhere in it, or a file that
resolves outside it, is refused (publishing would upload what it points to). The card's load
snippet gets the repo id. Every uploaded file but the Parquet data (the dataset's own rows) is
scanned for strings that look like absolute local paths (home folders, /tmp, ~/, drive letters,
file:// and other absolute paths of three or more parts); one is refused, naming the string and
the file, unless `allow_local_paths` (`--allow-local-paths`) says to upload it anyway.

The token is the one huggingface_hub finds (HF_TOKEN, or `hf auth login`); nothing here writes it
anywhere and it is scrubbed from every error message. Every failure is one `PublishError` line, and
the version folder is only ever read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from icr_data.base.errors import IcrError
from icr_data.store.card import for_repo
from icr_data.store.store import (
    VERSION_RE,
    enclosing_version,
    read_manifest,
    resolve_version,
    sha256_file,
    within,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

REPO_TYPE = "dataset"
HUB_FILES = frozenset({".gitattributes"})  # made by the Hub itself: never deleted, never compared
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_PATH_CHARS = r"[^\s\"'`<>|*?,;()\[\]{}]"
# A string that looks like an absolute path of some machine: a home or temporary folder, ~/...,
# a drive letter, a UNC share, a file:// URL, or any absolute path of three or more parts.
# Not preceded by a word character, '.' or '/', so a URL's path (https://host/a/b/c) is no match.
LOCAL_PATH_RE = re.compile(
    rf"""(?<![\w.~/\\-])(?:
        file://{_PATH_CHARS}+
      | ~[/\\]{_PATH_CHARS}+
      | [A-Za-z]:[\\/]{_PATH_CHARS}*
      | \\\\[\w.-]+\\[\w$.-]+{_PATH_CHARS}*
      | /(?:home|Users|root|tmp|var/tmp|var/folders|private/var|private/tmp|mnt|media|scratch)
        (?=[/\s"'`<>|,;)\]]|$){_PATH_CHARS}*
      | (?:/[\w.@+-]+){{3,}}/?
    )""",
    re.X,
)


class PublishError(IcrError):
    """Publishing failed or was refused; the message is one line and never holds the token."""


@dataclass(frozen=True)
class FileOp:
    op: str  # "add" (size and sha256 of the local file) or "delete" (a file of an earlier version)
    path_in_repo: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PublishPlan:
    repo_id: str
    tag: str
    commit_message: str
    operations: tuple[FileOp, ...]
    private: bool = False
    repo_type: str = REPO_TYPE
    # Where the files are read from; left out of the JSON so a plan names no local path.
    source: Path | None = field(default=None, compare=False, repr=False)
    # README.md as uploaded (the card with the repo id in its load snippet); its size and sha256
    # are the add operation's.
    card: str | None = field(default=None, compare=False, repr=False)

    @property
    def adds(self) -> list[FileOp]:
        return [op for op in self.operations if op.op == "add"]

    def to_json(self) -> str:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("source", "card")}
        return json.dumps(d, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class PublishResult:
    repo_url: str
    commit_oid: str
    tag: str
    deleted: tuple[str, ...]


def parse_repo_id(repo: str) -> str:
    """OWNER/NAME from `OWNER/NAME`, `datasets/OWNER/NAME` or a Hub dataset URL.

    Model and Space ids are refused: a version is a dataset. (On the Hub a model or Space of the
    same name is a separate repo; publishing never touches it.)"""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    rid = re.sub(r"^https?://[^/]+/", "", repo.strip()).strip("/")
    kind, _, rest = rid.partition("/")
    if kind in ("models", "spaces") and rest.count("/") == 1:
        raise PublishError(f"{repo} is a {kind[:-1]} repo; publish to a dataset repo OWNER/NAME")
    rid = rest if kind == "datasets" else rid
    try:
        if rid.count("/") != 1:
            raise HFValidationError("expected OWNER/NAME")
        validate_repo_id(rid)
    except HFValidationError as e:
        raise PublishError(f"--repo {repo!r} is not a dataset repo id OWNER/NAME ({e})") from None
    return rid


def plan_publish(
    version_dir: str | Path,
    repo: str,
    *,
    private: bool = False,
    store: str | Path | None = None,
    allow_local_paths: bool = False,
) -> PublishPlan:
    """The commit that publishes a version (a folder, or dataset/vN inside `store`): every file
    of the folder at its own relative path, README.md with the repo id in its load snippet.
    Refused: symlinks, files resolving outside the folder, and (unless `allow_local_paths`) a
    card, manifest or other non-data file holding an absolute local path."""
    src = resolve_version(version_dir, store).resolve()  # a link *to* the version is followed
    rid = parse_repo_id(repo)
    manifest = read_manifest(src)
    tag = manifest.get("version") or src.name
    if not VERSION_RE.match(tag):
        raise PublishError(f"{src}: version name {tag!r} is not vN, cannot be a tag")
    for p in src.rglob("*"):
        check_source(src, p.relative_to(src).as_posix())
    from icr_data.store.integrity import check

    if problems := check(src, full=True):  # every byte against its name: nothing damaged goes up
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PublishError(f"{problems[0]}{more}; `icr-data verify` lists every problem")
    # Hidden names are OS or editor droppings (.DS_Store) or the store's local-only file
    # (store.LOCAL_FILE, this machine's paths): never uploaded.
    paths = sorted(
        p.relative_to(src).as_posix()
        for p in src.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    listed = [f for files in manifest.get("files", {}).values() for f in files]
    if missing := sorted({"README.md", "manifest.json", *listed} - set(paths)):
        raise PublishError(f"{src} is incomplete, missing {', '.join(missing)}")
    card = for_repo((src / "README.md").read_text(encoding="utf-8"), rid)
    card_bytes = card.encode("utf-8")
    adds = tuple(
        FileOp("add", p, len(card_bytes), hashlib.sha256(card_bytes).hexdigest())
        if p == "README.md"
        else FileOp("add", p, (src / p).stat().st_size, sha256_file(src / p))
        for p in paths
    )
    if not allow_local_paths:
        for p in sorted(paths, key=lambda p: p == "README.md"):  # the manifest names the key
            if p.endswith(".parquet"):
                continue  # the rows are the dataset's content (an instruction may name /tmp)
            text = card if p == "README.md" else (src / p).read_text("utf-8", errors="replace")
            if found := local_paths_in(p, text):
                where, string = found[0]
                more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
                raise PublishError(
                    f"{p} ({where}) holds a local path {string!r}{more}: publishing would upload "
                    "this machine's folders; rebuild the version (manifests record paths relative "
                    "to the recipe), or pass --allow-local-paths to upload it as it is"
                )
    counts = manifest.get("counts", {})
    pairs = sum(c.get("pairs", 0) for c in counts.values())
    name = manifest.get("dataset", src.parent.name)
    message = f"{name} {tag}: {pairs} pairs in {len(counts)} languages (icr-data)"
    return PublishPlan(rid, tag, message, adds, private, source=src, card=card)


def local_paths(text: str) -> list[str]:
    """Strings of `text` that look like absolute local paths (LOCAL_PATH_RE), in order."""
    return [m.group(0) for m in LOCAL_PATH_RE.finditer(text)]


def local_paths_in(name: str, text: str) -> list[tuple[str, str]]:
    """(where, string) for each local path in a file: a JSON file's decoded strings by key path
    (JSON escapes would hide a C:\\ path and fake others), any other file's text by line."""
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            found: list[tuple[str, str]] = []

            def walk(obj, key: str) -> None:
                if isinstance(obj, dict):
                    for k, v in obj.items():
                        walk(k, key or "(key)")
                        walk(v, f"{key}.{k}" if key else str(k))
                elif isinstance(obj, list):
                    for i, v in enumerate(obj):
                        walk(v, f"{key}[{i}]")
                elif isinstance(obj, str):
                    found.extend((key or "(top)", s) for s in local_paths(obj))

            walk(data, "")
            return found
    return [(f"line {text.count(chr(10), 0, m.start()) + 1}", m.group(0))
            for m in LOCAL_PATH_RE.finditer(text)]  # fmt: skip


def check_source(src: Path, rel: str) -> Path:
    """`src / rel`, after checking that it is no symlink, that no folder on the way is one, and
    that it resolves inside `src`: publishing reads what it uploads from there."""
    path = src
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            raise PublishError(f"{path} is a symlink (to {os.readlink(path)}); a version holds "
                               "only its own files: replace the link by the file or remove it")  # fmt: skip
    if not within(path, src):
        raise PublishError(f"{path} resolves outside the version {src}; refused")
    return path


def with_remote_files(plan: PublishPlan, remote_files: list[str]) -> PublishPlan:
    """The plan plus deletions of what main holds beyond this version.

    Parquet names are content hashes and the card lists them exactly, so without deleting, main
    would pile up every version's files; earlier versions stay whole under their tags."""
    keep = {op.path_in_repo for op in plan.adds} | HUB_FILES
    deletes = tuple(FileOp("delete", p) for p in sorted(set(remote_files) - keep))
    return dataclasses.replace(plan, operations=(*plan.adds, *deletes))


def dry_run(plan: PublishPlan, folder: str | Path) -> Path:
    """Write the files the commit would add, at their repo paths, and plan.json into `folder`."""
    out, src = Path(folder), Path(plan.source)
    if within(out, src):
        raise PublishError(f"--dry-run folder {out} is inside the version; versions are immutable")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PublishError(f"--dry-run folder {out} is not empty; give a new or empty folder")
    if (version := enclosing_version(out)) is not None:  # any other version: all are immutable
        raise PublishError(f"--dry-run folder {out} is inside the version {version}; versions "
                           "are immutable")  # fmt: skip
    for op in plan.adds:
        target = out / op.path_in_repo
        if not within(target, out) or target.resolve() == out.resolve():
            raise PublishError(f"{op.path_in_repo} would be written outside {out}; refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        if op.path_in_repo == "README.md" and plan.card is not None:
            target.write_text(plan.card, encoding="utf-8")
        else:
            shutil.copyfile(check_source(src, op.path_in_repo), target)
    (out / "plan.json").write_text(plan.to_json(), encoding="utf-8")
    return out


def merge_card(ours: str, theirs: str) -> str:
    """Our card, keeping the metadata keys the repo's README.md has and ours lacks.

    Our keys win (configs, language, license, ...) and tags are the union. Their `dataset_info`
    is dropped: it describes earlier files, and `datasets` refuses split sizes that disagree with
    the data. The body is ours: it documents this version's counts, models and settings, and an
    earlier body would contradict the data (change prose in cards/dataset_card.md instead)."""
    from huggingface_hub import DatasetCard

    mine, other = DatasetCard(ours), DatasetCard(theirs, ignore_metadata_errors=True)
    meta, extra = mine.data.to_dict(), other.data.to_dict()
    extra.pop("dataset_info", None)
    if tags := [t for t in extra.get("tags") or [] if t not in meta.get("tags", [])]:
        meta["tags"] = [*meta.get("tags", []), *tags]
    meta |= {k: v for k, v in extra.items() if k not in meta}
    if meta == mine.data.to_dict():
        return ours  # nothing of theirs to keep: upload the local card byte for byte
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n{mine.text}"


def execute(plan: PublishPlan, api: HfApi | None = None) -> PublishResult:
    """Publish `plan`: create the repo if missing, commit to main, tag the commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    token = _find_token(api)
    api = (
        api if api is not None else HfApi()
    )  # finds the same token itself; we never pass it around
    rid, kw = plan.repo_id, {"repo_type": REPO_TYPE}
    step = "creating the repo"
    try:
        # private=None: a new repo gets the owner's default visibility unless --private asks
        api.create_repo(rid, private=plan.private or None, exist_ok=True, **kw)
        step = "reading the repo"
        if plan.private and api.repo_info(rid, **kw).private is False:
            raise PublishError(f"dataset repo {rid} exists and is public; --private does not "
                               "change an existing repo (make it private on the Hub first)")  # fmt: skip
        refs = api.list_repo_refs(rid, **kw)
        tags = {t.name: t.target_commit for t in refs.tags}
        # main's head now: the files to delete are read there, and the commit must sit on it
        # (the Hub refuses it with 412 if someone else committed in between)
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        if plan.tag in tags:
            raise PublishError(f"{rid} already has tag {plan.tag} (commit {tags[plan.tag][:12]}); "
                               "published versions are immutable")  # fmt: skip
        remote = api.list_repo_files(rid, revision=head or "main", **kw)
        plan = with_remote_files(plan, remote)
        readme = (
            plan.card
            if plan.card is not None
            else (plan.source / "README.md").read_text(encoding="utf-8")
        )
        if "README.md" in remote:
            step = "reading the repo's README.md"
            with tempfile.TemporaryDirectory() as tmp:
                theirs = api.hf_hub_download(rid, "README.md", revision=head or "main",
                                             cache_dir=tmp, **kw)  # fmt: skip
                try:
                    readme = merge_card(readme, Path(theirs).read_text(encoding="utf-8"))
                except (ValueError, yaml.YAMLError) as e:  # UnicodeDecodeError is a ValueError
                    raise PublishError(
                        f"{rid}'s README.md cannot be merged with our card ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); fix or delete it on the Hub, then "
                        "publish again (nothing was committed)"
                    ) from None
        ops = [
            CommitOperationDelete(op.path_in_repo)
            if op.op == "delete"
            else CommitOperationAdd(op.path_in_repo, readme.encode("utf-8"))
            if op.path_in_repo == "README.md"
            else CommitOperationAdd(
                op.path_in_repo, str(check_source(plan.source, op.path_in_repo))
            )
            for op in plan.operations
        ]
        step = "committing to main"
        commit = api.create_commit(rid, operations=ops, commit_message=plan.commit_message,
                                   revision="main", parent_commit=head, **kw)  # fmt: skip
        # A failed tag leaves the commit on main; re-running publishes nothing new and tags it.
        step = f"tagging commit {commit.oid[:12]} as {plan.tag} (re-run to tag it)"
        api.create_tag(
            rid, tag=plan.tag, revision=commit.oid, tag_message=plan.commit_message, **kw
        )
        step = "checking the published files"
        published = set(api.list_repo_files(rid, revision=plan.tag, **kw)) - HUB_FILES
    except PublishError:
        raise
    except _hub_errors() as e:
        raise PublishError(_describe(e, step, rid, token)) from None
    expected = {op.path_in_repo for op in plan.adds}
    if published != expected:
        raise PublishError(f"tag {plan.tag} of {rid} does not hold exactly the version: missing "
                           f"{sorted(expected - published)}, extra {sorted(published - expected)}")  # fmt: skip
    deleted = tuple(op.path_in_repo for op in plan.operations if op.op == "delete")
    return PublishResult(str(commit.repo_url), commit.oid, plan.tag, deleted)


def _find_token(api: HfApi | None) -> str:
    from huggingface_hub import get_token

    token = getattr(api, "token", None)  # an HfApi built with an explicit token
    try:
        token = token if isinstance(token, str) else get_token()
    except Exception as e:  # an OIDC token exchange (HF_OIDC_RESOURCE) that failed
        raise PublishError(f"could not get a Hugging Face token ({type(e).__name__})") from None
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                           "(the token needs write access)")  # fmt: skip
    return token


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HTTPError  # huggingface_hub's HTTP client's base error

    errors: tuple[type[BaseException], ...] = (HTTPError, OSError)  # OSError: ConnectionError,
    try:  # requests' errors, offline mode; httpx's transport errors are not OSErrors
        import httpx

        errors += (httpx.HTTPError,)
    except ImportError:  # pragma: no cover
        pass
    return errors


def _describe(e: BaseException, step: str, repo_id: str, token: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    status = e.response.status_code if isinstance(e, HfHubHTTPError) else None
    if status == 401:
        msg = "the Hub rejected the token (401 Unauthorized): check HF_TOKEN or `hf auth login`"
    elif status == 403:
        msg = (f"no write access to dataset repo {repo_id} (403 Forbidden): use a token with "
               f"write permission on '{repo_id.split('/')[0]}'")  # fmt: skip
    elif status == 412:
        msg = (f"main of dataset repo {repo_id} moved while publishing (another commit landed "
               "first); nothing of ours was committed: publish again")  # fmt: skip
    elif status is not None:
        msg = f"the Hub answered {status}: {getattr(e, 'server_message', None) or e}"
    elif isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
        msg = f"{type(e).__name__}: {e}"  # a local file, not the network
    else:
        msg = f"cannot reach the Hub ({type(e).__name__}: {e}); check the network and HF_ENDPOINT"
    text = " ".join(f"{msg} while {step}".split())  # one line, whatever the server sent
    if len(token) >= 8:  # a real token; a shorter string would mangle the message
        text = text.replace(token, "***")
    return _TOKEN_RE.sub("hf_***", text)[:400]
