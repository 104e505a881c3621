"""The data plane against its I/O floor: pairing, language ID, exports and inspect at 10k to 1M
candidates, each timed as the command a user runs, beside the cost of just reading and writing
the same bytes.

    python benchmarks/dataplane.py                          # 10k and 100k candidates
    python benchmarks/dataplane.py --sizes 10000,100000,1000000

For each size it writes a synthetic version the way a build lays one out (5 languages, 10 samples
per prompt, responses of 200-2,000 characters of words of their language, rewards with a length
trend, 5% truncated and 5% off-target), then runs, each in its own process under /usr/bin/time:
- the I/O floor: read the candidates' Parquet and write a pairs-sized Parquet with pyarrow;
- `icr-data pair V --strategy max_min` and `--strategy threshold --threshold 2.5`;
- language ID of every candidate through the build's stage (lingua, its threads), and the same
  detector one text at a time on one thread;
- `icr-data export` in the trl, llamafactory and jsonl formats, and `icr-data inspect`.
It prints seconds, the multiple of the floor, peak RSS, and the growth from one size to the next
(a command that scales linearly grows 10x from 100k to 1M). Figures are printed, never asserted;
on a loaded machine read the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

LANGS = ("en", "es", "de", "fr", "ru")
WORDS = {
    "en": "the water is good and we like to read about people who live near the sea every day",
    "es": "el agua es buena y nos gusta leer sobre la gente que vive cerca del mar todos los días",
    "de": "das wasser ist gut und wir lesen gern über menschen die jeden tag am meer leben",
    "fr": "l'eau est bonne et nous aimons lire sur les gens qui vivent près de la mer chaque jour",
    "ru": "вода хорошая и мы любим читать о людях которые живут у моря каждый день",
}


def write_version(root: Path, n: int, seed: int = 0) -> Path:
    """A version of about n candidates (and no pairs yet), written through the store."""
    import numpy as np
    from datasets import Dataset

    from icr_data.card import render_card
    from icr_data.config import Recipe
    from icr_data.manifest import make_manifest, margin_summary
    from icr_data.pairs import PairStats, make_pairs
    from icr_data.store import write_version as write

    rng = np.random.default_rng(seed)
    per_prompt = 10
    prompts = max(1, n // (len(LANGS) * per_prompt))
    vocab = {lang: WORDS[lang].split() for lang in LANGS}
    cols: dict[str, list] = {c: [] for c in (
        "prompt_id", "lang", "instruction", "scoring_prompt", "sample_idx", "response",
        "finish_reason", "response_tokens", "logp_policy", "logp_ref", "reward", "reward_mean",
        "lid_lang", "lid_score")}  # fmt: skip
    for p in range(prompts):
        for lang in LANGS:
            for i in range(per_prompt):
                words = vocab[lang]
                target = int(rng.integers(200, 2000))
                text = " ".join(words[k] for k in rng.integers(0, len(words), target // 5))[:target]
                reward = float(rng.normal(0, 1) + 0.0004 * len(text))
                off = rng.random() < 0.05
                cols["prompt_id"].append(f"p{p:07d}")
                cols["lang"].append(lang)
                cols["instruction"].append(f"Question {p} in {lang}")
                cols["scoring_prompt"].append(f"Question {p}")
                cols["sample_idx"].append(i)
                cols["response"].append(text)
                cols["finish_reason"].append("length" if rng.random() < 0.05 else "stop")
                cols["response_tokens"].append(len(text) // 4)
                cols["logp_policy"].append(-float(len(text)) / 4)
                cols["logp_ref"].append(-float(len(text)) / 4 - reward)
                cols["reward"].append(reward)
                cols["reward_mean"].append(reward / max(1, len(text) // 4))
                cols["lid_lang"].append("en" if off and lang != "en" else lang)
                cols["lid_score"].append(0.9)
    candidates = Dataset.from_dict(cols)
    recipe = Recipe(dataset=f"bench-{n}", store=str(root), license="other")
    recipe.prompts.languages = list(LANGS)
    recipe.prompts.source = "synthetic.jsonl"
    empty, _ = make_pairs(candidates.select([]), recipe.pairing)
    prompt_rows = Dataset.from_dict({"lang": [lang for _ in range(prompts) for lang in LANGS]})
    counts, margins = margin_summary(empty, candidates, prompt_rows, list(LANGS))
    ids = {
        r: {"name": "synthetic", "sha256": "0" * 64} for r in ("generator", "policy", "reference")
    }
    manifest = make_manifest(recipe, ids, PairStats(), counts, margins, {})
    return write(
        root, recipe.dataset, {"pairs": empty, "candidates": candidates}, manifest, render_card
    )


FLOOR = """
import sys, pyarrow.parquet as pq, pyarrow as pa, glob
t = pq.read_table(glob.glob(sys.argv[1] + '/data/candidates/*.parquet')[0])
n = t.num_rows // 10  # about one pair per 10 candidates under max_min
cols = {c: t.column(c).slice(0, n) for c in ('prompt_id', 'lang', 'response', 'reward')}
cols['rejected'] = t.column('response').slice(n, n)
pq.write_table(pa.table(cols), sys.argv[2])
"""

LID = """
import sys, time, pyarrow.parquet as pq, glob
from icr_data.executor import run_once
from icr_data.stages import LangIdStage, Shard
from datasets import Dataset
t = pq.read_table(glob.glob(sys.argv[1] + '/data/candidates/*.parquet')[0], columns=['lang', 'response'])
rows = Dataset(t)
if sys.argv[2] == 'stage':
    run_once(LangIdStage(languages=tuple(sorted(set(rows['lang'])))), [Shard(0, rows)])
else:  # one text at a time, one thread: the baseline the stage is measured against
    from lingua import IsoCode639_1, LanguageDetectorBuilder
    codes = [getattr(IsoCode639_1, c.upper()) for c in sorted(set(rows['lang']))]
    det = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()
    for text in rows['response']:
        det.compute_language_confidence_values(text)
"""


def timed(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one command in its own process."""
    out = subprocess.run(["/usr/bin/time", "-f", "%e %M", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    seconds, kb = out.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kb) / 1024


def run_size(n: int, root: Path, lid_sample: int) -> dict[str, tuple[float, float]]:
    version = write_version(root / "store", n)
    cli = [sys.executable, "-m", "icr_data.cli"]
    out: dict[str, tuple[float, float]] = {}
    out["I/O floor"] = timed(
        [sys.executable, "-c", FLOOR, str(version), str(root / "floor.parquet")]
    )
    out["pair max_min"] = timed([*cli, "pair", str(version), "--strategy", "max_min"])
    paired = version.parent / "v2"
    if n <= 100_000:  # threshold pairs grow with the square of samples per prompt
        out["pair threshold"] = timed([*cli, "pair", str(version), "--strategy", "threshold",
                                       "--threshold", "2.5"])  # fmt: skip
    out["language ID (stage)"] = timed([sys.executable, "-c", LID, str(version), "stage"])
    if n <= lid_sample:
        out["language ID (1 thread)"] = timed([sys.executable, "-c", LID, str(version), "single"])
    for fmt in ("trl", "llamafactory", "jsonl"):
        out[f"export {fmt}"] = timed([*cli, "export", str(paired), "--format", fmt, "--out",
                                      str(root / f"export-{fmt}")])  # fmt: skip
    out["inspect"] = timed([*cli, "inspect", str(paired), "--store", str(root / "store")])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="candidate counts, comma-separated")
    ap.add_argument("--lid-single-up-to", type=int, default=100_000,
                    help="run the one-thread language-ID baseline up to this size")  # fmt: skip
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results[n] = run_size(n, Path(tmp), args.lid_single_up_to)
        print(json.dumps({str(n): results[n]}), file=sys.stderr)
    names = list(dict.fromkeys(k for r in results.values() for k in r))
    head = f"{'command':26}" + "".join(f"{f'{n:,} s':>12}{'x floor':>9}{'MB':>8}" for n in sizes)
    print(head + ("   growth" if len(sizes) > 1 else ""))
    for name in names:
        line = f"{name:26}"
        for n in sizes:
            if name in results[n]:
                s, mb = results[n][name]
                line += f"{s:12.2f}{s / results[n]['I/O floor'][0]:9.1f}{mb:8.0f}"
            else:
                line += f"{'-':>12}{'-':>9}{'-':>8}"
        if len(sizes) > 1 and all(name in results[n] for n in sizes[-2:]):
            a, b = (results[n][name][0] for n in sizes[-2:])
            line += f"   {b / a:5.1f}x"
        print(line)
    if all("language ID (1 thread)" in results[n] for n in sizes[:1]):
        n = sizes[0]
        speedup = results[n]["language ID (1 thread)"][0] / results[n]["language ID (stage)"][0]
        print(f"language ID stage vs one thread at {n:,}: {speedup:.2f}x")


if __name__ == "__main__":
    main()
