"""How long the README's demos take on this machine, from an empty cache, phase by phase.

    python benchmarks/demo.py                 # demo_tiny, then the SmolLM2 demo (tens of minutes)
    python benchmarks/demo.py --only tiny     # demo_tiny only
    python benchmarks/demo.py --with-checks   # also check-reward and translate on the demo models

Each phase runs as the command a user runs, in its own process under /usr/bin/time, with the model
cache (ICR_DATA_CACHE) and the store in a fresh temporary folder, so nothing is reused:
- `icr-data build recipes/demo_tiny.yaml`: builds the tiny models, generates, scores, pairs;
- `icr-data prepare builtin:smollm2-135m-instruct`: converts the reference shipped on PyPI;
- `icr-data prepare train:recipes/dpo_demo.yaml`: the demo's English LoRA DPO (the policy), with
  its reference pass and its steps as training.json records them;
- `icr-data build recipes/demo.yaml`: generation, scoring (and its native agreement pass),
  pairing, with the stage times the manifest records;
- with `--with-checks`, after the demo: `icr-data check-reward` on the shipped labelled pairs
  (recipes/data/check_pairs.jsonl, the demo's reward pair, models prepared) and `icr-data
  translate` of 3 demo prompts into es and de (6 translations) with the demo's 135M reference.
It prints wall seconds, peak RSS and the machine (cores, load average before and after): figures
from a loaded machine are not those of an idle one, so the load is part of the result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of `cmd` under /usr/bin/time -v."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, cwd=ROOT, text=True,
                          capture_output=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, int(rss.group(1)) / 1024 if rss else float("nan"), proc.stdout


def stage_times(version: Path) -> str:
    timings = json.loads((version / "manifest.json").read_text())["timings"]
    parts = [f"{k} {v:.0f}s" for k, v in timings.items() if isinstance(v, (int, float))]
    return ", ".join(parts)


def checks(icr: str, env: dict, tmp: Path) -> list[tuple]:
    """check-reward on the shipped pairs and 6 translations, with the demo's models prepared."""
    pairs = ROOT / "recipes/data/check_pairs.jsonl"
    n = sum(1 for line in pairs.read_text().splitlines() if line.strip())
    wall, rss, _ = run([icr, "check-reward", "--policy", "train:recipes/dpo_demo.yaml",
                        "--reference", "builtin:smollm2-135m-instruct", "--pairs", str(pairs),
                        "--json", str(tmp / "check.json")], env)  # fmt: skip
    out = [("check-reward --pairs recipes/data/check_pairs.jsonl", wall, rss,
            f"{n} labelled pairs, {2 * n} responses x 2 models, cross-lingual")]  # fmt: skip
    wall, rss, _ = run([icr, "translate", "recipes/data/demo_prompts.jsonl", "--to", "es,de",
                        "--limit", "3", "--model", "builtin:smollm2-135m-instruct",
                        "--out", str(tmp / "store"), "--name", "translated"], env)  # fmt: skip
    out.append(
        (
            "translate --limit 3 --to es,de",
            wall,
            rss,
            "6 translations, greedy, vLLM start-up included",
        )
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["tiny", "smollm2"], help="run one demo only")
    ap.add_argument(
        "--with-checks",
        action="store_true",
        help="also time check-reward and translate (after the SmolLM2 demo)",
    )
    ap.add_argument("--keep", type=Path, help="an empty folder for the cache and store, kept after")
    args = ap.parse_args()
    icr = str(Path(sys.executable).with_name("icr-data"))
    print(f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep.resolve() if args.keep else Path(scratch)
        env = {**os.environ, "ICR_DATA_CACHE": str(Path(tmp) / "cache")}
        store = Path(tmp) / "store"
        if args.only in (None, "tiny"):
            wall, rss, out = run([icr, "build", "recipes/demo_tiny.yaml", "--set",
                                  f"store={store}"], env)  # fmt: skip
            rows.append(("build demo_tiny.yaml", wall, rss, stage_times(Path(out.split()[-1]))))
        if args.only in (None, "smollm2"):
            wall, rss, _ = run([icr, "prepare", "builtin:smollm2-135m-instruct"], env)
            rows.append(("prepare builtin:smollm2-135m-instruct", wall, rss, "GGUF -> float32"))
            wall, rss, _ = run([icr, "prepare", "train:recipes/dpo_demo.yaml"], env)
            record = next((Path(tmp) / "cache" / "trained").glob("dpo_demo-*/training.json"))
            trained = json.loads(record.read_text())
            rows.append(("prepare train:recipes/dpo_demo.yaml", wall, rss,
                         f"{trained['steps']} DPO steps, reference log-probs: "
                         f"{trained['reference_logps']['source']}; trainer {trained['seconds']:.0f}s"))  # fmt: skip
            wall, rss, out = run([icr, "build", "recipes/demo.yaml", "--set",
                                  f"store={store}"], env)  # fmt: skip
            rows.append(("build demo.yaml (models prepared)", wall, rss,
                         stage_times(Path(out.split()[-1]))))  # fmt: skip
            if args.with_checks:
                rows += checks(icr, env, Path(tmp))
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print("| command | seconds | peak RSS | what |\n| --- | ---: | ---: | --- |")
    for name, wall, rss, what in rows:
        print(f"| `{name}` | {wall:.0f} | {rss:,.0f} MB | {what} |")


if __name__ == "__main__":
    main()
