"""A local build vs the same build through Ray (icr_data/core/ray_exec.py), and what Ray buys at scale.

    python benchmarks/ray_build.py                          # 8 prompt ids x 5 languages = 40 prompts
    python benchmarks/ray_build.py --prompt-ids 10 --actors 2 --backend vllm
    python benchmarks/ray_build.py --estimate-only --gen-tps 3000 --shard-prompts 16

Measured, in this run: recipes/demo_tiny.yaml's prompts with the tiny (policy, reference) pair,
built once with the local executor and once with `executor="ray"` on a local Ray started here
(all this machine's CPUs, shared by `--actors` actors), into two stores. It prints the wall time
of each stage, the ratio Ray / local, Ray's start-up, and checks that both runs wrote the same
work files (keys, Parquet bytes, markers). On one small machine Ray can only lose: every stage
starts a pool of actors that import torch and load the model, and the actors split the same cores.

Estimated, not measured: the paper's setting (3000 prompts x 5 languages x 10 samples of up to
2400 tokens, generator and policy Llama-3-8B-SFT-DPO, reference Llama-3-8B-SFT) on N GPUs with
one actor per GPU, from per-GPU throughputs and lengths given as flags. Every number that goes
in is an ASSUMPTION, printed as such; the arithmetic (shards, waves of shards over actors,
start-up per actor pool) is the executor's.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def measure(args: argparse.Namespace) -> None:
    import ray

    from icr_data.base.config import load_recipe
    from icr_data.base.console import stderr_console
    from icr_data.commands.build import build
    from icr_data.stages.tiny import build_tiny_pair

    work = Path(tempfile.mkdtemp(prefix="icr-ray-bench-"))
    policy, reference = build_tiny_pair(work / "models")
    sets = {"models.generator": policy, "models.policy": policy, "models.reference": reference,
            "sampling.backend": args.backend, "sampling.n": args.n, "sampling.max_tokens": args.max_tokens,
            "sampling.dtype": "float32", "prompts.limit": args.prompt_ids,
            "shard_prompts": args.shard_prompts_small, "ray.num_actors": args.actors}  # fmt: skip

    def recipe(store: str):
        return load_recipe(ROOT / "recipes" / "demo_tiny.yaml",
                           [f"{k}={v}" for k, v in {**sets, "store": work / store}.items()])  # fmt: skip

    quiet = stderr_console()
    quiet.quiet = True
    runs, wall = {}, {}
    t0 = time.perf_counter()
    runs["local"] = build(recipe("local"), console=quiet)
    wall["local"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)  # actors' own logs stay in Ray's files
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs["ray"] = build(recipe("ray"), console=quiet, executor="ray")
    wall["ray"] = time.perf_counter() - t0
    ray.shutdown()

    m = runs["local"].manifest
    print(f"measured here: {m['totals']['prompts']} prompts ({args.prompt_ids} ids x "
          f"{len(m['counts'])} languages), {args.n} samples of up to {args.max_tokens} tokens, "
          f"{args.backend} backend, {m['hardware']['cpu_threads']} CPU threads; "
          f"Ray: {args.actors} actor(s) per stage, local Ray started in {ray_start:.1f} s")  # fmt: skip
    print(f"{'':8}{'generate s':>12}{'score s':>10}{'build s':>10}")
    for name, r in runs.items():
        t = r.manifest["timings"]
        print(f"{name:8}{t['generate_s']:>12.1f}{t['score_s']:>10.1f}{wall[name]:>10.1f}")
    print(f"ratio ray / local (whole build): {wall['ray'] / wall['local']:.2f}")
    same = files(work / "local" / "demo-tiny" / ".work") == files(
        work / "ray" / "demo-tiny" / ".work"
    )
    print(f"same work files (keys, Parquet bytes, markers): {same}")


def estimate(args: argparse.Namespace) -> None:
    prompts, langs, n = 3000, 5, 10
    responses = prompts * langs * n
    shards = math.ceil(prompts / args.shard_prompts)
    per_shard = args.shard_prompts * langs * n  # responses
    gen_shard_s = per_shard * args.mean_response / args.gen_tps
    score_shard_s = per_shard * (args.prompt_tokens + args.mean_response) / args.score_tps
    print("\nESTIMATE for the paper's setting, from ASSUMPTIONS (not measured here):")
    print(f"  {prompts} prompts x {langs} languages x {n} samples = {responses:,} responses in "
          f"{shards} shards of {args.shard_prompts} prompt ids")  # fmt: skip
    print(f"  assumed: mean response {args.mean_response} tokens (cap 2400), scoring prompt "
          f"{args.prompt_tokens} tokens; per GPU, 8B model in bf16: vLLM sampling "
          f"{args.gen_tps:,.0f} output tok/s, scoring forward {args.score_tps:,.0f} tok/s per "
          f"model; {args.startup:.0f} s to start a pool (engine or model load), 3 pools")  # fmt: skip

    def hours(gpus: int) -> tuple[int, float, float]:
        waves = math.ceil(shards / gpus)  # one actor per GPU; a shard is never split
        gen = args.startup + waves * gen_shard_s
        score = 2 * (args.startup + waves * score_shard_s)  # policy pass, then reference pass
        return waves, gen / 3600, score / 3600

    one = sum(hours(1)[1:])
    print(
        f"  {'GPUs':>5}{'waves':>7}{'generate h':>12}{'score h':>9}{'total h':>9}{'speed-up':>10}"
    )
    for gpus in args.gpus:
        waves, gen, score = hours(gpus)
        print(f"  {gpus:>5}{waves:>7}{gen:>12.2f}{score:>9.2f}{gen + score:>9.2f}"
              f"{one / (gen + score):>9.1f}x")  # fmt: skip
    print("  waves: shards per actor, all shards taken as equally long (real lengths vary: a tail)")
    if max(args.gpus) > shards:
        print(f"  more GPUs than shards ({shards}): the extra GPUs idle; lower shard_prompts "
              "(e.g. 16) on a large cluster")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prompt-ids", type=int, default=8, help="prompt ids (x 5 languages)")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--shard-prompts-small", type=int, default=2, help="prompt ids per shard here")
    ap.add_argument("--actors", type=int, default=2, help="Ray actors per stage here")
    ap.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    ap.add_argument("--estimate-only", action="store_true")
    est = ap.add_argument_group("estimate (assumptions)")
    est.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    est.add_argument("--gen-tps", type=float, default=4000.0,
                     help="assumed vLLM output tokens/s per GPU, 8B bf16, ~3000 concurrent sequences")  # fmt: skip
    est.add_argument("--score-tps", type=float, default=20000.0,
                     help="assumed scoring tokens/s per GPU per 8B model (forward only, bf16)")  # fmt: skip
    est.add_argument("--mean-response", type=int, default=800, help="assumed mean response tokens")
    est.add_argument("--prompt-tokens", type=int, default=150, help="assumed scoring prompt tokens")
    est.add_argument("--startup", type=float, default=120.0, help="assumed seconds to start a pool")
    est.add_argument("--shard-prompts", type=int, default=64, help="the recipe's shard_prompts")
    args = ap.parse_args()
    if not args.estimate_only:
        measure(args)
    estimate(args)


if __name__ == "__main__":
    main()
