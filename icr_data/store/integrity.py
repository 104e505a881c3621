"""Is a version whole? Its files against its manifest and their own names.

    icr-data verify icr_store/demo/v1            # every check, full digests: one line per problem
    problems = check(version_dir, full=False)    # what commands run before reading a version

A version's data files are named by a digest of their bytes (`...-<16 hex of sha256>.parquet`,
store._write_parquet) and listed in its manifest (`files`, and the text-features sidecar). The
checks, each naming the file:
- the manifest reads (store.read_manifest: JSON, an object, a schema this code reads) and
  has every key its kind must have (store.REQUIRED_KEYS), all missing ones named;
- every listed file exists, is a regular file inside the version, and its Parquet footer reads
  (a truncated file has lost it);
- no Parquet file lies under data/ that the manifest does not list;
- the rows of pairs and candidates are the manifest's totals (from the footers: cheap);
- with `full`, every file's bytes hash to the digest in its name (reads every byte: publish runs
  it; the cheap form runs before pair, score and export).
"""

from __future__ import annotations

import re
from pathlib import Path

from icr_data.store.store import StoreError, read_manifest, sha256_file

DIGEST_NAME = re.compile(r"-([0-9a-f]{16})\.parquet$")


def _files(manifest: dict) -> list[str]:
    listed = [f for files in (manifest.get("files") or {}).values() for f in files]
    sidecar = manifest.get("textfeatures")
    if isinstance(sidecar, dict) and sidecar.get("file"):
        listed.append(sidecar["file"])
    return listed


def check(version_dir: str | Path, full: bool = False) -> list[str]:
    """The problems of a version, one line each naming the file (empty: whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(version_dir)
    try:
        manifest = read_manifest(root)
    except StoreError as e:
        return [str(e)]
    if absent := manifest.missing():  # the rest is read against the manifest
        return [
            f"{root / 'manifest.json'}: has no {', '.join(repr(k) for k in absent)} (keys a "
            f"manifest of schema {manifest.get('schema', 1)} must have)"
        ]
    problems = []
    if not isinstance(manifest["files"], dict):
        return [f"{root / 'manifest.json'}: 'files' is not a mapping"]
    rows: dict[str, int] = {}
    listed = _files(manifest)
    for rel in listed:
        path = root / rel
        if ".." in Path(rel).parts or not path.is_file() or path.is_symlink():
            problems.append(f"{path}: listed in manifest.json but missing (or not a plain file)")
            continue
        try:
            meta = pq.read_metadata(path)
        except (OSError, pa.ArrowException) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            problems.append(f"{path}: not a readable Parquet file ({first}): damaged or truncated")
            continue
        config = Path(rel).parts[1] if Path(rel).parts[0] == "data" else None
        if config:
            rows[config] = rows.get(config, 0) + meta.num_rows
        m = DIGEST_NAME.search(path.name) if full else None
        if m and sha256_file(path)[:16] != m.group(1):
            problems.append(f"{path}: its bytes do not match the digest in its name "
                            "(altered after it was written)")  # fmt: skip
    unlisted = sorted(str(p) for p in (root / "data").rglob("*.parquet")
                      if p.relative_to(root).as_posix() not in listed)  # fmt: skip
    problems += [
        f"{p}: not listed in manifest.json (a stray or substituted file)" for p in unlisted
    ]
    totals = manifest.get("totals")
    if isinstance(totals, dict):
        for config in ("pairs", "candidates"):
            if (
                config in rows
                and isinstance(totals.get(config), int)
                and rows[config] != totals[config]
            ):
                problems.append(f"{root / 'data' / config}: {rows[config]} rows, but the "
                                f"manifest counts {totals[config]}")  # fmt: skip
    return problems


def require_whole(version_dir: str | Path, full: bool = False) -> None:
    """One StoreError naming the first problem (and how many more) unless the version is whole."""
    problems = check(version_dir, full)
    if problems:
        more = (
            f" (and {len(problems) - 1} more: `icr-data verify {version_dir}`)"
            if len(problems) > 1
            else ""
        )
        raise StoreError(problems[0] + more)
