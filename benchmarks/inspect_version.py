"""Speed of `icr-data inspect` on a million pairs: icr_data.commands.inspection (polars) vs a pandas baseline.

    python benchmarks/inspect_version.py               # 1,000,000 pairs, lengths in characters
    python benchmarks/inspect_version.py --pairs 200000 --length-unit tokens

It writes a synthetic version in a temporary folder, in the store's layout (manifest.json and
data/pairs/train-*.parquet in TRL's message-list format, 5 languages, responses of 20..500
characters, rewards that grow with length), then times, on the same files:
  (a) pandas baseline: pd.read_parquet of the columns needed, text lengths by a per-row .map over
      the message lists (pandas has no vectorised way into list<struct> columns), groupby
      quantiles/means, a per-language Pearson corr, nlargest/nsmallest, np.histogram per language;
  (b) icr_data.commands.inspection: a polars scan keeping only numbers (numeric_view), language_stats,
      top/bottom selection (select_pairs + with_texts), margin_histogram.
Both compute the same statistics, and the script checks they agree. It prints seconds per step
(reading steps run once; in-memory steps report the best of --repeats runs, on both sides),
pairs/s and the ratio (a)/(b), and the PNG plot's time separately (matplotlib, not the analysis).
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

LANGS = ("en", "de", "fr", "es", "ru")
STEPS = ("read + lengths", "language stats", "top/bottom + texts", "histogram")


def write_version(root: Path, n: int, seed: int = 0) -> Path:
    """A plausible version folder of n pairs: store layout, manifest keys as make_manifest's."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz      ", dtype=np.uint8)

    def messages(role: str, lengths: np.ndarray) -> pa.Array:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        data = alphabet[np.frombuffer(rng.bytes(int(offsets[-1])), np.uint8) & 31].tobytes()
        text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
        roles = pa.repeat(pa.scalar(role), n)
        struct = pa.StructArray.from_arrays([roles, text.cast(pa.string())], ["role", "content"])
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), struct)

    which = rng.integers(0, len(LANGS), n)
    lang = np.array(LANGS)[which]
    lc, lr = rng.integers(20, 500, n), rng.integers(20, 500, n)
    # margins differ in scale per language and lean a little towards longer chosen responses
    scale = np.array([1.0, 0.8, 0.9, 0.7, 0.5])[which]
    margin = rng.exponential(scale) + 0.002 * np.maximum(lc - lr, 0)
    chosen_reward = rng.normal(0, 1, n) + 0.002 * lc
    rejected_reward = chosen_reward - margin
    table = pa.table({
        "prompt_id": pa.array([f"p{i:07d}" for i in range(n)]), "lang": pa.array(lang),
        "prompt": messages("user", rng.integers(30, 120, n)), "chosen": messages("assistant", lc),
        "rejected": messages("assistant", lr), "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward, "margin": margin,
        "chosen_tokens": lc // 4 + 1, "rejected_tokens": lr // 4 + 1,
        "chosen_sample_idx": np.zeros(n, np.int64), "rejected_sample_idx": np.ones(n, np.int64),
    })  # fmt: skip
    version = root / "bench" / "v1"
    (version / "data" / "pairs").mkdir(parents=True)
    pq.write_table(
        table, version / "data/pairs/train-00000-of-00001.parquet", row_group_size=1 << 17
    )
    counts = {x: {"prompts": int((lang == x).sum()), "candidates": 2 * int((lang == x).sum()),
                  "pairs": int((lang == x).sum())} for x in LANGS}  # fmt: skip
    manifest = {"dataset": "bench", "version": "v1", "parent": None, "created": "2025-01-01T00:00:00+00:00",
                "recipe": {"dataset": "bench"}, "pairing": {"length_unit": "chars"}, "counts": counts,
                "funnel": {x: {"off_target_rate": 0.01 * i} for i, x in enumerate(LANGS)}}  # fmt: skip
    (version / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return version


def timed(t: dict, step: str, fn, repeats: int = 1):
    """Run fn; record the fastest of `repeats` runs under `step`; return fn's value."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    t[step] = best
    return value


def run_polars(version: Path, unit: str, k: int, repeats: int) -> tuple[dict, dict]:
    from icr_data.commands import inspection as ins

    t, out = {}, {}
    lf = ins.scan_pairs(version)
    df = timed(t, "read + lengths", lambda: ins.numeric_view(lf, unit))
    out["stats"] = timed(t, "language stats", lambda: ins.language_stats(df), repeats)

    def extremes():
        return ins.with_texts(lf, ins.select_pairs(df, k), ins.select_pairs(df, k, bottom=True))

    top, bottom = timed(t, "top/bottom + texts", extremes)
    out["top"], out["bottom"] = top["prompt_id"].to_list(), bottom["prompt_id"].to_list()
    out["hist"] = timed(t, "histogram", lambda: ins.margin_histogram(df), repeats)
    out["df"] = df
    return t, out


def run_pandas(version: Path, unit: str, k: int, repeats: int, bins: int = 24) -> tuple[dict, dict]:
    import numpy as np
    import pandas as pd

    files = sorted((version / "data" / "pairs").glob("*.parquet"))
    t, out = {}, {}

    def read():
        cols = ["prompt_id", "lang", "margin", "chosen_reward", "rejected_reward"]
        if unit == "tokens":
            df = pd.concat([pd.read_parquet(f, columns=[*cols, "chosen_tokens", "rejected_tokens"]) for f in files])  # fmt: skip
            return df.rename(columns={"chosen_tokens": "chosen_len", "rejected_tokens": "rejected_len"}).reset_index(drop=True)  # fmt: skip
        df = pd.concat([pd.read_parquet(f, columns=[*cols, "chosen", "rejected"]) for f in files])
        for side in ("chosen", "rejected"):
            df[f"{side}_len"] = df.pop(side).map(lambda m: len(m[-1]["content"]))
        return df.reset_index(drop=True)

    def stats():
        g = df.assign(diff=df["chosen_len"] - df["rejected_len"]).groupby("lang", sort=False)
        return pd.DataFrame({
            "pairs": g.size(), "margin_p10": g["margin"].quantile(0.1), "margin_p50": g["margin"].quantile(0.5),
            "margin_p90": g["margin"].quantile(0.9), "margin_mean": g["margin"].mean(),
            "chosen_len": g["chosen_len"].mean(), "rejected_len": g["rejected_len"].mean(),
            "len_margin_corr": g.apply(lambda x: x["diff"].corr(x["margin"]), include_groups=False),
        })  # fmt: skip

    def extremes():
        top = df.nlargest(k, "margin", keep="first")
        bottom = df.nsmallest(k, "margin", keep="first")
        # the side-by-side view needs the texts of the selected rows
        texts = pd.concat([pd.read_parquet(f, columns=["prompt", "chosen", "rejected"]) for f in files])  # fmt: skip
        texts = texts.reset_index(drop=True).loc[top.index.append(bottom.index)]
        _ = [m[-1]["content"] for m in texts["chosen"]]
        return top["prompt_id"].tolist(), bottom["prompt_id"].tolist()

    def histogram():
        lo, hi = df["margin"].min(), df["margin"].max()
        return {lang: np.histogram(s, bins=bins, range=(lo, hi))[0].tolist()
                for lang, s in df.groupby("lang", sort=False)["margin"]}  # fmt: skip

    df = timed(t, "read + lengths", read)
    out["stats"] = timed(t, "language stats", stats, repeats)
    out["top"], out["bottom"] = timed(t, "top/bottom + texts", extremes)
    out["hist"] = timed(t, "histogram", histogram, repeats)
    return t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--length-unit", choices=("chars", "tokens"), default="chars")
    ap.add_argument("--top", type=int, default=5, help="pairs shown at each end")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the in-memory steps")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        version = write_version(Path(tmp), args.pairs)
        size = sum(f.stat().st_size for f in version.rglob("*.parquet")) / 2**20
        console.print(f"synthetic version: {args.pairs:,} pairs, {size:,.0f} MiB of Parquet, "
                      f"written in {time.perf_counter() - t0:.1f} s; lengths in {args.length_unit}")  # fmt: skip
        tb, ob = run_polars(version, args.length_unit, args.top, args.repeats)
        ta, oa = None, None
        if not args.skip_baseline:
            ta, oa = run_pandas(version, args.length_unit, args.top, args.repeats)
        t0 = time.perf_counter()
        from icr_data.commands import inspection as ins

        ins.plot(ob["df"], ob["hist"], Path(tmp) / "plot.png", args.length_unit)
        plot_s = time.perf_counter() - t0

    table = Table(title=f"inspect on {args.pairs:,} pairs (seconds)")
    for col in ("step", "(a) pandas", "(b) icr_data (polars)", "(a)/(b)"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for step in (*STEPS, "total"):
        b = sum(tb.values()) if step == "total" else tb[step]
        a = (sum(ta.values()) if step == "total" else ta[step]) if ta else None
        table.add_row(step, "-" if a is None else f"{a:.3f}", f"{b:.3f}", "-" if a is None else f"{a / b:.1f}x")  # fmt: skip
    console.print(table)
    total = sum(tb.values())
    console.print(f"icr_data: {args.pairs / total:,.0f} pairs/s; PNG plot (matplotlib, 20,000-point "
                  f"scatter sample) {plot_s:.2f} s extra")  # fmt: skip
    if oa:
        s = ob["stats"].to_pandas().set_index("lang").loc[oa["stats"].index]
        cols = [c for c in oa["stats"].columns if c != "pairs"]
        diff = (s[cols] - oa["stats"][cols]).abs().to_numpy().max()
        same = oa["top"] == ob["top"] and oa["bottom"] == ob["bottom"] and oa["hist"] == ob["hist"]["counts"]  # fmt: skip
        console.print(f"agreement: max |stat diff| {diff:.1e}; same top/bottom pairs and histogram counts: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
