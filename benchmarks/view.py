"""Speed of `icr-data view` on a million pairs: each page's response time, before and after the
view's text cache (icr_data/view/textcache.py) is built.

    python benchmarks/view.py                  # 1,000,000 pairs in a temporary store, removed after
    python benchmarks/view.py --keep           # the store kept in the system's temporary folder
                                               # (icr-data-view-bench/<pairs>) and reused next time
    python benchmarks/view.py --pairs 200000 --repeats 5

The version: inspect_version.py's synthetic pairs (5 languages, responses of 20..500 characters,
row groups of 131,072 pairs), and two candidates per pair made from them (the chosen and the
rejected response, their rewards and tokens, language ID), written through the store
(store.write_version, a manifest from make_manifest: it passes the view's integrity checks).
Lengths are in tokens, so the dashboard reads one integer column of the candidates, as it does
for a built version through its text-features sidecar (characters).

The app runs in this process behind Starlette's TestClient: times are the server's (routing,
reading, rendering; no network, no browser). Each page is fetched once cold (first), then
--repeats times (the median); a deep page and a text search are sorted once and kept by the
view, so their first fetch is the one a user waits for. Two rounds, each from cold in-memory
caches: (1) before the text cache exists (the pairs pages decode the Parquet row groups that
hold their rows; the cache's build is held off), (2) after it is built (its build timed). The
text cache goes to a fresh temporary ICR_DATA_CACHE, never the user's. It prints a markdown
table, the machine's cores and load average before and after. Times are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inspect_version import LANGS  # noqa: E402
from inspect_version import write_version as write_pairs  # noqa: E402

DATASET = "bench"


def write_store(root: Path, n: int) -> Path:
    """A store at `root` with one version bench/v1 of n pairs and 2n candidates; returns it."""
    import polars as pl
    import pyarrow.parquet as pq
    from datasets import Dataset

    from icr_data.base.config import Recipe
    from icr_data.commands.versioning import run_facts
    from icr_data.pairing.pairs import PairStats
    from icr_data.store import store
    from icr_data.store.card import render_card
    from icr_data.store.manifest import make_manifest, margin_summary

    scratch = root.parent / f".{root.name}-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    pairs_file = next((write_pairs(scratch, n) / "data" / "pairs").glob("*.parquet"))
    cands_file = scratch / "candidates.parquet"
    content = lambda c: pl.col(c).list.last().struct.field("content")  # noqa: E731
    source = pq.ParquetFile(pairs_file)
    writer = None
    for g in range(source.num_row_groups):  # one row group at a time: memory stays flat
        pairs = pl.from_arrow(source.read_row_group(g))
        sides = [
            pairs.select(
                "prompt_id", "lang", instruction=content("prompt"),
                scoring_prompt=content("prompt"), sample_idx=pl.lit(i, pl.Int64),
                response=content(side), finish_reason=pl.lit("stop"),
                response_tokens=pl.col(f"{side}_tokens"), reward=pl.col(f"{side}_reward"),
                lid_lang=pl.col("lang"), lid_score=pl.lit(0.9),
            )
            for i, side in enumerate(("chosen", "rejected"))
        ]  # fmt: skip
        table = pl.concat(sides).sort("prompt_id", "sample_idx").to_arrow()
        writer = writer or pq.ParquetWriter(cands_file, table.schema)
        writer.write_table(table)
    writer.close()
    files = {}
    for config, f in (("pairs", pairs_file), ("candidates", cands_file)):
        named = scratch / config / f"train-00000-of-00001-{store.sha256_file(f)[:16]}.parquet"
        named.parent.mkdir()
        f.rename(named)
        files[config] = [named]

    recipe = Recipe(dataset=DATASET, license="other")
    recipe.prompts.languages = list(LANGS)
    recipe.prompts.source = "synthetic.jsonl"
    recipe.pairing.length_unit = "tokens"
    langs = Dataset(pq.read_table(files["pairs"][0], columns=["lang", "margin"]), fingerprint="p")
    cand_langs = Dataset(pq.read_table(files["candidates"][0], columns=["lang"]), fingerprint="c")
    counts, margins = margin_summary(langs, cand_langs, langs, list(LANGS))
    ids = {r: {"name": "synthetic", "sha256": "0" * 64} for r in ("generator", "policy", "reference")}  # fmt: skip
    facts = run_facts(recipe, ids, PairStats(), None)
    manifest = make_manifest(recipe, ids, facts, counts, margins, {})
    version = store.write_version(root, DATASET, files, manifest, render_card, name="v1")
    shutil.rmtree(scratch)
    return version


def pages(version: Path, search: str) -> list[tuple[str, str]]:
    """(what, URL) of each page timed."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(next((version / "data" / "pairs").glob("*.parquet")))
    n = meta.num_rows
    middle = pq.read_table(next((version / "data" / "pairs").glob("*.parquet")),
                           columns=["prompt_id", "lang"]).slice(n // 2, 1).to_pylist()[0]  # fmt: skip
    base = f"/v/{DATASET}/v1"
    deep = max(1, n // 2 // 25)
    return [
        ("store page", "/"),
        ("version page (dashboard)", base),
        ("pairs: first page", f"{base}/pairs"),
        (f"pairs: deep page ({deep:,} of {-(-n // 25):,})", f"{base}/pairs?page={deep}"),
        ("pairs: language filter (de)", f"{base}/pairs?lang=de"),
        ("pairs: margin sort, lowest first", f"{base}/pairs?sort=margin&order=asc"),
        ("pairs: length-difference sort", f"{base}/pairs?sort=length_diff"),
        (f"pairs: text search ({search!r})", f"{base}/pairs?q={search}"),
        ("prompt page", f"{base}/prompt?prompt_id={middle['prompt_id']}&lang={middle['lang']}"),
    ]


def time_pages(client, urls: list[tuple[str, str]], repeats: int) -> dict[str, tuple]:
    """{what: (first seconds, median seconds of `repeats` more, KB of HTML, pairs matching)}."""
    import re

    out = {}
    for what, url in urls:
        t0 = time.perf_counter()
        r = client.get(url)
        first = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")
        rest = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.get(url)
            rest.append(time.perf_counter() - t0)
        total = re.search(r'data-total="(\d+)"', r.text)
        out[what] = (first, statistics.median(rest), len(r.content) / 1024,
                     int(total.group(1)) if total and "/pairs" in url else None)  # fmt: skip
        print(f"  {what}: first {first:.3f} s, median {out[what][1]:.3f} s", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5, help="requests after the first, per page")
    ap.add_argument("--keep", action="store_true", help="keep the store and reuse it next time")
    ap.add_argument("--search", default="qxz", help="the text searched for")
    args = ap.parse_args()

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="icr-view-bench-"))
    os.environ["ICR_DATA_CACHE"] = str(work / "cache")  # the text cache: fresh, not the user's
    if args.keep:
        root = Path(tempfile.gettempdir()) / "icr-data-view-bench" / str(args.pairs)
    else:
        root = work / "store"
    try:
        version = root / DATASET / "v1"
        if (version / "manifest.json").is_file():
            print(f"reusing the kept store ({args.pairs:,} pairs)", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
            t0 = time.perf_counter()
            version = write_store(root, args.pairs)
            print(
                f"wrote {args.pairs:,} pairs in {time.perf_counter() - t0:.0f} s", file=sys.stderr
            )
        size = {c: sum(f.stat().st_size for f in (version / "data" / c).glob("*.parquet")) / 2**20
                for c in ("pairs", "candidates")}  # fmt: skip
        results, cache = run(root, version, pages(version, args.search), args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    report(args, results, cache, size, load_before, load_after)


def run(root: Path, version: Path, urls, repeats: int) -> tuple[dict, tuple[float, float]]:
    """Both rounds: ({round: {what: timings}}, (cache build seconds, cache MB))."""
    from starlette.testclient import TestClient

    from icr_data.view import pairs_query
    from icr_data.view.app import create_app
    from icr_data.view.textcache import TextCache

    def cold() -> None:  # the view's in-memory caches, as a fresh server has them
        pairs_query._cache.clear()
        pairs_query._orders.clear()

    results = {}
    client = TestClient(create_app(root))
    held, pairs_query.CACHE_FROM = pairs_query.CACHE_FROM, float("inf")  # no build in round 1
    try:
        cold()
        print("before the text cache:", file=sys.stderr)
        results["before"] = time_pages(client, urls, repeats)
    finally:
        pairs_query.CACHE_FROM = held
    text = TextCache(version)
    t0 = time.perf_counter()
    text.build()
    built = (time.perf_counter() - t0, text.path.stat().st_size / 2**20)
    cold()
    print(f"text cache built in {built[0]:.1f} s; after it:", file=sys.stderr)
    results["after"] = time_pages(client, urls, repeats)
    return results, built


def report(args, results, cache, size, load_before, load_after) -> None:
    before, after = results["before"], results["after"]
    print(f"\n`icr-data view` on {args.pairs:,} pairs ({size['pairs']:,.0f} MiB of pairs, "
          f"{size['candidates']:,.0f} MiB of candidates); text cache built in {cache[0]:.1f} s "
          f"({cache[1]:,.0f} MiB); {os.cpu_count()} cores, load average "
          f"{load_before[0]:.1f} before and {load_after[0]:.1f} after "
          f"(1 min); seconds, first request and median of {args.repeats} more:\n")  # fmt: skip
    print("| page | before cache: first | before: median | after cache: first | after: median "
          "| HTML | pairs matching |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for what in before:
        b, a = before[what], after[what]
        matching = "-" if a[3] is None else f"{a[3]:,}"
        print(f"| {what} | {b[0]:.3f} | {b[1]:.3f} | {a[0]:.3f} | {a[1]:.3f} | {a[2]:.0f} KB "
              f"| {matching} |")  # fmt: skip
    slow = [w for w in before if max(after[w][:2]) >= 1.0]
    print(f"\npages at or over a second after the cache: {', '.join(slow) or 'none'}")


if __name__ == "__main__":
    main()
