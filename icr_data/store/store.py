"""The store: immutable, versioned dataset folders.

    <store>/<dataset>/v<N>/README.md             the dataset card
    <store>/<dataset>/v<N>/manifest.json         how the version was made
    <store>/<dataset>/v<N>/data/<config>/train-*.parquet   configs: candidates, pairs

A version is written into a hidden temporary folder beside its final place and renamed into place
only when complete, so a crash never leaves a visible half-written version; an existing version is
never overwritten. Reading goes straight to the Parquet files (not through the `datasets` cache,
which can confuse two version folders of the same layout).

Names are checked before anything is written: a version is `v<N>` (VERSION_RE), a dataset one
plain folder name (DATASET_RE), and every target is checked to lie inside its folder, so neither
`--version ../../x` nor a dataset named `..` writes outside the store. Modes follow the umask
(files.new_dir_mode / new_file_mode), as any other file the user writes.

What a version records of this machine (the recipe with its absolute paths, which a rescore or an
export needs to find the models again) goes to LOCAL_FILE, a hidden file of the version that is
never published; manifest.json and the card hold only portable forms (manifest.portable).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset

import icr_data
from icr_data.base.errors import IcrError
from icr_data.base.files import atomic_write, new_dir_mode, new_file_mode

VERSION_RE = re.compile(r"^v(\d+)$")
DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CONFIGS = ("pairs", "candidates")
LOCAL_FILE = ".local.json"  # this machine's paths; hidden, so never published
LOCAL_KEY = "_local"  # a manifest's key for LOCAL_FILE's content (popped before writing)
MANIFEST_SCHEMA = 1  # manifest.json's layout; a manifest without "schema" (older) is schema 1
REQUIRED_KEYS = {  # by the manifest's "kind": what every reader of that kind may index
    "data": ("dataset", "version", "files", "recipe", "models", "scoring", "pairing", "counts",
             "margins", "totals"),
    "eval": ("dataset", "version", "files", "models", "results", "languages", "totals"),
    "prompts": ("dataset", "version", "files", "source", "languages", "counts", "totals"),
}  # fmt: skip


class StoreError(IcrError):
    """A store operation that would lose or overwrite data."""


# An absolute path, whole or after a scheme such as `train:`: /..., ~/..., C:\... or C:/..., \\host.
_ABSOLUTE = re.compile(
    r"^(?P<prefix>[a-z][a-z0-9_+-]+:)?(?P<path>/|~[/\\\\]|[A-Za-z]:[/\\\\]|\\\\)"
)


def portable_path(value: str, recipe_dir: str | Path | None = None) -> str:
    """`value` without this machine's folders: an absolute path (or `train:` + one) becomes its
    path relative to `recipe_dir` if it lies inside it, else its last component; anything else
    (a relative path, a Hub id, `builtin:NAME`, text) is returned as it is."""
    m = _ABSOLUTE.match(value) if isinstance(value, str) and "\n" not in value else None
    if m is None or (m["prefix"] and value[len(m["prefix"]) :].startswith("//")):  # a URL
        return value
    prefix, path = m["prefix"] or "", value[len(m["prefix"] or "") :]
    if recipe_dir is not None and path.startswith("/"):
        base = Path(recipe_dir).resolve()
        p = Path(os.path.normpath(path))
        if base in p.parents:
            return prefix + p.relative_to(base).as_posix()
    parts = [part for part in re.split(r"[/\\\\]+", path) if part]
    return prefix + (parts[-1] if parts else "(root)")


def portable(obj, recipe_dir: str | Path | None = None):
    """`obj` (a manifest, or any part of one) with every string passed through portable_path."""
    if isinstance(obj, dict):
        return {k: portable(v, recipe_dir) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, recipe_dir) for v in obj]
    return portable_path(obj, recipe_dir) if isinstance(obj, str) else obj


def check_version_name(name: str, option: str = "--version") -> str:
    """`name` if it is a version name v<N>, else a StoreError naming the option."""
    if not isinstance(name, str) or not VERSION_RE.match(name):
        raise StoreError(f"{option} {name!r} is not a version name: use v<N>, e.g. v2 "
                         "(a version is a folder of its dataset; no paths or other names)")  # fmt: skip
    return name


def check_dataset_name(name: str, option: str = "dataset") -> str:
    """`name` if it is one plain folder name (letters, digits, . _ -, not starting with . or -)."""
    if not isinstance(name, str) or not DATASET_RE.match(name) or set(name) <= {"."}:
        raise StoreError(f"{option} {name!r} is not a dataset name: use letters, digits, '.', '_' "
                         "and '-' (one folder name, no '/', not starting with '.' or '-')")  # fmt: skip
    return name


def inside(path: str | Path, folder: str | Path, what: str) -> Path:
    """`path`, after checking it lies strictly inside `folder`, by its name (`..` and absolute
    parts resolved, links not: a dataset folder the user linked to a bigger disk stays usable)."""
    p, f = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    if f not in p.parents:
        raise StoreError(f"{what} {path} would be written outside {folder}; refused")
    return Path(path)


def enclosing_version(path: str | Path) -> Path | None:
    """The version folder `path` is or lies in (a folder holding manifest.json, at any level
    above it, links and `..` resolved), or None."""
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        if (folder / "manifest.json").is_file():
            return folder
    return None


def refuse_inside_version(path: str | Path, option: str, what: str = "") -> None:
    """A StoreError if `path` is or lies in a version folder: versions are immutable."""
    if (version := enclosing_version(path)) is not None:
        raise StoreError(f"{option} {path} is inside the version {version}; versions are "
                         f"immutable (and publish uploads the whole folder): write {what}"
                         "elsewhere")  # fmt: skip


def versions(dataset_dir: str | Path) -> list[str]:
    """Version names in a dataset folder, oldest first."""
    d = Path(dataset_dir)
    if not d.is_dir():
        return []
    found = [
        (int(m.group(1)), p.name)
        for p in d.iterdir()
        if (m := VERSION_RE.match(p.name)) and p.is_dir()
    ]
    return [name for _, name in sorted(found)]


def next_version(dataset_dir: str | Path) -> str:
    existing = versions(dataset_dir)
    return f"v{int(existing[-1][1:]) + 1}" if existing else "v1"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_parquet(ds: Dataset, folder: Path) -> str:
    """Write one config as a Parquet file named by a digest of its content; return the name.

    `datasets.load_dataset(version_dir)` keys its cache on the folder's name (`v1`) and the
    card's `configs` metadata, not on the files' bytes, so two versions whose cards use the same
    glob were served each other's rows. The card lists these content-addressed names instead.
    """
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    digest: list[str] = []

    def write(tmp: str) -> None:
        disable_progress_bar()
        try:
            ds.to_parquet(tmp)
        finally:
            enable_progress_bar()
        digest.append(sha256_file(tmp)[:16])

    # The name is the content's digest, known only once the file is written: it is written
    # (and flushed) under a fixed name, then renamed inside the still temporary version folder.
    written = atomic_write(folder / ".writing.parquet", write)
    name = f"train-00000-of-00001-{digest[0]}.parquet"
    os.rename(written, folder / name)
    return name


def _copy_parquet(files: list[Path], folder: Path) -> list[str]:
    """A config's Parquet files from another version, bytes and content-addressed names
    unchanged (a version reused whole: nothing is decoded); return the names. A file is a hard
    link to the other version's where the filesystem allows (no version's file is ever written
    again, and removing one version leaves the other whole), else a copy."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for f in files:
        if f.is_symlink():
            raise StoreError(f"{f} is a symbolic link; a version's files are its own")
        try:
            os.link(f, folder / f.name)
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(f, folder / f.name)
            os.chmod(folder / f.name, new_file_mode())
        names.append(f.name)
    return names


def write_version(
    store: str | Path,
    dataset: str,
    tables: dict[str, Dataset | list[Path]],
    manifest: dict,
    render_card: Callable[[dict], str],
    name: str | None = None,
    sidecars: dict[str, tuple[Dataset, Callable[[dict], dict]]] | None = None,
) -> Path:
    """Write a complete new version and return its folder.

    `manifest` gets `version` set; `render_card(manifest)` gives README.md. With `name` given,
    an existing version of that name is an error; without it the next free v<N> is used. A table
    given as a list of Parquet files (another version's config_files) is linked or copied as it is.
    A sidecar `name: (table, meta)` is a table that travels with the version but is no config of
    it (pairing's text features): written to `<name>/<digest>.parquet`, and recorded as
    manifest[name] = meta(manifest["files"]) plus its "file".
    """
    check_dataset_name(dataset)
    if name is not None:
        check_version_name(name)
    dataset_dir = inside(Path(store) / dataset, store, "dataset folder")
    refuse_inside_version(dataset_dir, "the dataset folder", "the new version ")
    local = manifest.pop(LOCAL_KEY, None)
    # Whatever wrote the manifest (a build, a rescore, translate), no absolute path of this
    # machine goes into manifest.json or the card; make_manifest already made its paths relative.
    clean = portable(manifest)
    manifest.clear()
    manifest.update({"schema": MANIFEST_SCHEMA, **clean})
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create {dataset_dir}: {e.strerror}") from None
    if name is not None and (dataset_dir / name).exists():
        raise StoreError(
            f"version {name} already exists at {dataset_dir / name}; versions are immutable"
        )
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dataset_dir))
    except OSError as e:
        raise StoreError(f"cannot write to {dataset_dir}: {e.strerror}") from None
    try:
        manifest["files"] = {
            config: [f"data/{config}/{n}" for n in _copy_parquet(ds, tmp / "data" / config)]
            if isinstance(ds, list) else [f"data/{config}/{_write_parquet(ds, tmp / 'data' / config)}"]
            for config, ds in tables.items()
        }  # fmt: skip
        for side, (ds, meta) in (sidecars or {}).items():
            manifest[side] = {
                **meta(manifest["files"]),
                "file": f"{side}/{_write_parquet(ds, tmp / side)}",
            }
        for _ in range(1000):
            version = name or next_version(dataset_dir)
            manifest["version"] = version
            (tmp / "manifest.json").write_text(
                json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            (tmp / "README.md").write_text(render_card(manifest), encoding="utf-8")
            if local is not None:
                (tmp / LOCAL_FILE).write_text(json.dumps(local, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")  # fmt: skip
            target = inside(dataset_dir / check_version_name(version), dataset_dir, "version")
            os.chmod(tmp, new_dir_mode())  # mkdtemp's 0700 was for the unfinished folder only
            try:
                if target.exists():
                    raise FileExistsError(errno.EEXIST, "exists", str(target))
                os.rename(tmp, target)  # atomic; fails if a non-empty folder took the name
                return target
            except OSError as e:
                if not _name_taken(e):
                    raise StoreError(f"cannot move the new version into {target}: "
                                     f"{e.strerror or e}") from None  # fmt: skip
                if name is not None:
                    raise StoreError(f"version {name} already exists at {target}") from None
                # another writer claimed this name first: try the next free one
        raise StoreError(f"could not claim a version name in {dataset_dir}")  # pragma: no cover
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _name_taken(e: OSError) -> bool:
    """Whether a rename onto a version name failed because that name is taken (another version,
    or a writer that claimed it first), not for another reason (permissions, a full disk...).
    os.rename onto an existing non-empty folder raises ENOTEMPTY, or EEXIST on some systems."""
    return isinstance(e, FileExistsError) or e.errno in (errno.EEXIST, errno.ENOTEMPTY)


def resolve_version(ref: str | Path, store: str | Path | None = None) -> Path:
    """A version folder from a path, or from `dataset/vN` relative to the store."""
    p = Path(ref)
    if (p / "manifest.json").is_file():
        return p
    if store is not None and (Path(store) / p / "manifest.json").is_file():
        return Path(store) / p
    tried = f", nor is {Path(store) / p}" if store is not None and not p.is_absolute() else ""
    raise StoreError(f"not a version folder (no manifest.json): {ref}{tried}")


def within(path: str | Path, folder: str | Path) -> bool:
    """`path` is `folder` or lies inside it (after resolving links and `..`): versions are
    immutable, so nothing is written there."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


class Manifest(dict):
    """A version's manifest.json as read: a dict whose missing top-level key is one StoreError
    naming the key and the file (a damaged or foreign manifest), not a KeyError."""

    path: Path

    def missing(self) -> list[str]:
        """The keys a manifest of its kind must have (REQUIRED_KEYS) that it lacks."""
        return [k for k in REQUIRED_KEYS.get(self.get("kind", "data"), ()) if k not in self]

    def __missing__(self, key):
        absent = self.missing()
        keys = ", ".join(repr(k) for k in (absent if key in absent else [key]))
        raise StoreError(f"{self.path}: has no {keys} (damaged, or not written by icr-data); "
                         "`icr-data verify` checks a version")  # fmt: skip


def read_manifest(version_dir: str | Path) -> Manifest:
    """A version's manifest: one StoreError naming the file when it is missing, unreadable, not
    JSON, not an object, or of a schema newer than this code reads (MANIFEST_SCHEMA; one without
    "schema", written before there was one, is schema 1). Missing keys are Manifest.missing()."""
    path = Path(version_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise StoreError(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise StoreError(f"{path}: not UTF-8 text (damaged)") from None
    except ValueError as e:
        raise StoreError(f"{path}: not valid JSON (line {getattr(e, 'lineno', '?')}): "
                         f"damaged or half-written") from None  # fmt: skip
    if not isinstance(data, dict):
        raise StoreError(f"{path}: holds a JSON {type(data).__name__}, not a manifest object")
    schema = data.get("schema", 1)
    if type(schema) is not int or schema < 1:
        raise StoreError(f"{path}: 'schema' is {str(schema)[:40]!r}, not a schema number "
                         "(1, 2, ...): damaged")  # fmt: skip
    if schema > MANIFEST_SCHEMA:
        raise StoreError(f"{path}: written with manifest schema {schema}, newer than this "
                         f"icr-data {icr_data.__version__} reads (up to {MANIFEST_SCHEMA}): upgrade "
                         "icr-data to read it")  # fmt: skip
    out = Manifest(data)
    out.path = path
    return out


def local_info(version_dir: str | Path) -> dict:
    """LOCAL_FILE of a version ({"recipe": as loaded, "recipe_dir": its folder}), or {}."""
    try:
        local = json.loads((Path(version_dir) / LOCAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return local if isinstance(local, dict) else {}


def local_recipe(version_dir: str | Path, manifest: dict | None = None) -> dict:
    """The recipe a version was built from as this machine knows it (LOCAL_FILE: its absolute
    paths), else the manifest's portable one (paths relative to the recipe's folder, or names)."""
    recipe = local_info(version_dir).get("recipe")
    if isinstance(recipe, dict):
        return recipe
    return (manifest if manifest is not None else read_manifest(version_dir))["recipe"]


def config_files(version_dir: str | Path, config: str) -> list[Path]:
    """The Parquet files of one config of a version, in order."""
    files = sorted((Path(version_dir) / "data" / config).glob("*.parquet"))
    if not files:
        raise StoreError(f"{version_dir}: no Parquet files for config {config!r}")
    return files


def read_table(version_dir: str | Path, config: str, columns: list[str] | None = None) -> Dataset:
    """One config of a version, read directly from its Parquet files (only `columns`, if given:
    the others are never decoded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = config_files(version_dir, config)
    table = pa.concat_tables([pq.read_table(f, columns=columns, memory_map=True) for f in files])
    # The files' names are digests of their bytes, so they (and the columns read) identify the
    # content. Without a fingerprint, datasets makes one by pickling and hashing the whole table:
    # seconds and several GB at a million candidates.
    ident = json.dumps([[f.name for f in files], columns])
    return Dataset(table, fingerprint=hashlib.sha256(ident.encode()).hexdigest()[:16])
