"""One prepared accelerator check: every CUDA path of icr-data that one GPU can run, in a table.

    python benchmarks/gpu_check.py                        # on the accelerator: 8B-shaped, bf16
    python benchmarks/gpu_check.py --device cpu --tiny    # anywhere, in a minute (a test runs it)

On a machine lent by the `device` tool (one NVIDIA H200; Python 3.12 with torch, transformers,
accelerate, peft, pyarrow and rich, but no datasets or trl), carry the wheels first:

    sh benchmarks/gpu_wheels.sh          # here: downloads benchmarks/gpu_wheels.txt into .whl/
    # there, with carry [".whl"]:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
        && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json

What it runs, each a row (ok, FAIL with the error, or skipped with the reason):
- models: a random-initialised Llama-3-8B-shaped model (hidden 4096, 32 layers, GQA 32/8, vocab
  128256; --tiny: a small one) made from its config in bfloat16 and saved once (no download; the
  weights' values do not matter for speed or memory), and the tiny test pair for equality;
- score (bf16): the transformers scorer's loop (models.load_causal_lm, score.sequence_logps) on
  --rows sequences of --seq tokens: tokens/s, the share of the GPU's bf16 matmul peak it reaches
  (2 x parameters FLOPs a token), peak memory;
- score bf16 vs fp32: the same rows on the tiny pair in both dtypes: the largest difference of a
  sequence's summed log-prob (bf16 rounds each weight to 8 bits of mantissa: a drift, not a bug);
- generate (bf16): the transformers generation backend (generate.TransformersBackend): tokens/s;
- train (LoRA, gradient checkpointing): one DPO step through icr-data's recipe (TRL's
  DPOTrainer) on the 8B shape: step time and peak memory.
What it cannot run on that machine is listed as skipped, with the reason: vLLM (its wheels are
far over the 64 MiB a run can carry), language ID (lingua's model, likewise), Ray on several GPUs.
It exits non-zero when a row FAILs. Figures are printed (and written with --json), never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
"""Dense bf16 tensor-core peaks (FLOP/s) by the name's family; the device tool measured about
790e12 for an 8192-cube bf16 matmul on its H200 (docs/benchmarks.md)."""

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
               max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, vocab_size=None,
                 max_position_embeddings=2048),
}  # fmt: skip


class Check:
    """The table's rows: name -> status, seconds, figures, note."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, fn, *args):
        t0 = time.perf_counter()
        try:
            figures = fn(*args)
            figures = figures if isinstance(figures, dict) else {}
            row = {"check": name, "status": "ok", "seconds": round(time.perf_counter() - t0, 2),
                   **figures}  # fmt: skip
        except Exception as e:  # a failing path is a row, the others still run
            traceback.print_exc()
            row = {"check": name, "status": "FAIL", "seconds": round(time.perf_counter() - t0, 2),
                   "note": f"{type(e).__name__}: {e}"[:300]}  # fmt: skip
        self.rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    def skip(self, name: str, why: str):
        self.rows.append({"check": name, "status": "skipped", "note": why})


def peak_memory(device: str) -> float | None:
    """GiB: the GPU's peak allocation since the last reset (None on CPU)."""
    import torch

    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_flops(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def make_model(shape: str, tokenizer_dir: Path, out: Path, device: str) -> dict:
    """A random model of `shape` in bfloat16, saved with the tiny pair's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tok)
    if dims["vocab_size"] > len(tok):  # every id the model can sample decodes (placeholders)
        tok.add_tokens([f"<x{i}>" for i in range(len(tok), dims["vocab_size"])])
    cfg = LlamaConfig(**dims, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return {"params": params, "vocab": dims["vocab_size"]}


def encoded_rows(n: int, seq: int, vocab: int):
    """n (prompt, response) token sequences of `seq` tokens (a quarter prompt), random ids."""
    import random

    from icr_data.stages.chat import Encoded

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(seq)]
        rows.append(Encoded(prompt_ids=ids[: seq // 4], response_ids=ids[seq // 4 :]))
    return rows


def score_speed(path: Path, device: str, rows, params: int) -> dict:
    import torch

    from icr_data.stages.models import load_causal_lm
    from icr_data.stages.score import ScoreStats, default_token_budget, sequence_logps

    model = load_causal_lm(str(path), device, torch.bfloat16)
    sequence_logps(model, rows[:2], 0, device)  # warm-up: kernels, allocator
    reset_peak(device)
    stats = ScoreStats()
    t0 = time.perf_counter()
    sums = sequence_logps(model, rows, 0, device, default_token_budget(device), stats=stats)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    out = {"tokens_per_s": round(tokens / seconds, 1), "peak_gib": peak_memory(device),
           "padding_waste": round(stats.padding_waste, 3),
           "finite": all(map(lambda v: v == v and abs(v) != float("inf"), sums))}  # fmt: skip
    if (peak := peak_flops(device)) is not None:
        out["share_of_bf16_peak"] = round(2 * params * tokens / seconds / peak, 3)
    del model
    if not out["finite"]:
        raise ValueError("a summed log-prob is not finite")
    return out


def bf16_vs_fp32(path: Path, device: str, rows) -> dict:
    import torch

    from icr_data.stages.models import load_causal_lm
    from icr_data.stages.score import sequence_logps

    got = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_causal_lm(str(path), device, dtype)
        got[dtype] = sequence_logps(model, rows, 0, device)
        del model
    diffs = [abs(a - b) for a, b in zip(got[torch.float32], got[torch.bfloat16])]
    per_token = max(d / len(r.response_ids) for d, r in zip(diffs, rows))
    return {"max_abs_diff_nats": round(max(diffs), 4), "max_per_token": round(per_token, 5)}


def generate_speed(path: Path, device: str, prompts: int, max_tokens: int) -> dict:
    import torch

    from icr_data.base.config import SamplingConfig
    from icr_data.stages.generate import TransformersBackend
    from icr_data.stages.models import load_tokenizer

    tok = load_tokenizer(str(path))
    cfg = SamplingConfig(backend="transformers", n=1, temperature=1.0, top_p=1.0,
                         max_tokens=max_tokens, dtype="bfloat16")  # fmt: skip
    backend = TransformersBackend(str(path), cfg, tok)
    reset_peak(device)
    ids = [[5 + i] * 16 for i in range(prompts)]
    t0 = time.perf_counter()
    out = backend.generate(ids, list(range(prompts)))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    made = sum(len(tok(text, add_special_tokens=False)["input_ids"]) for s in out for text, _ in s)
    backend.close()
    return {"tokens_per_s": round(made / seconds, 1), "tokens": made,
            "peak_gib": peak_memory(device)}  # fmt: skip


def train_step(path: Path, device: str, work: Path) -> dict:
    from icr_data.base.train_config import DataConfig, LoraSettings, TrainConfig
    from icr_data.commands.train import train

    pairs = work / "pairs.jsonl"
    with pairs.open("w", encoding="utf-8") as f:
        for i in range(4):
            f.write(json.dumps({
                "prompt": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
                "chosen": [{"role": "assistant", "content": f"{i} + {i} = {2 * i}."}],
                "rejected": [{"role": "assistant", "content": "I do not know, sorry."}],
            }) + "\n")  # fmt: skip
    cfg = TrainConfig(data=DataConfig(source=str(pairs)), model=str(path),
                      output_dir=str(work / "trained"), finetune="lora",
                      lora=LoraSettings(r=16, alpha=32, merge=False), beta=0.1,
                      learning_rate=1e-5, max_steps=1, batch_size=2, grad_accum=1,
                      warmup_ratio=0.0, device=device, dtype="bfloat16",
                      trainer={"gradient_checkpointing": True})  # fmt: skip
    reset_peak(device)
    t0 = time.perf_counter()
    record = train(cfg)
    return {"step_s": round(time.perf_counter() - t0, 1), "peak_gib": peak_memory(device),
            "loss": (record.get("log") or [{}])[-1].get("loss")}  # fmt: skip


def table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="icr-data accelerator check")
    for c in ("check", "status", "seconds", "figures"):
        t.add_column(c, overflow="fold")
    for r in rows:
        figures = ", ".join(f"{k} {v}" for k, v in r.items()
                            if k not in ("check", "status", "seconds", "note"))  # fmt: skip
        t.add_row(r["check"], r["status"], str(r.get("seconds", "")),
                  figures or r.get("note", ""))  # fmt: skip
    Console(stderr=True, width=100).print(t)


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small model instead of the 8B shape")
    ap.add_argument("--rows", type=int, default=64, help="sequences scored")
    ap.add_argument("--seq", type=int, default=1024, help="tokens per scored sequence")
    ap.add_argument("--gen-prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.rows, args.seq = min(args.rows, 8), min(args.seq, 64)
        args.gen_prompts, args.gen_tokens = min(args.gen_prompts, 2), min(args.gen_tokens, 8)

    import torch
    import transformers

    check = Check()
    env = {"torch": torch.__version__, "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "python": sys.version.split()[0]}  # fmt: skip
    check.rows.append({"check": "environment", "status": "ok", **env})
    work = Path(tempfile.mkdtemp(prefix="icr-gpu-check-"))
    from icr_data.stages.tiny import build_tiny_pair

    tiny = check.run("models: tiny pair", build_tiny_pair, work / "tiny")
    shape = "tiny" if args.tiny else "8b"
    big = work / f"model-{shape}"
    made = check.run(f"models: {shape}-shaped, random, bf16", make_model, shape,
                     work / "tiny" / "tiny-policy", big, args.device)  # fmt: skip
    if made["status"] == "ok":
        rows = encoded_rows(args.rows, args.seq, min(made["vocab"], 32000))
        check.run("score (bf16)", score_speed, big, args.device, rows, made["params"])
        check.run("generate (bf16)", generate_speed, big, args.device, args.gen_prompts,
                  args.gen_tokens)  # fmt: skip
        if args.skip_train:
            check.skip("train (LoRA, gradient checkpointing)", "--skip-train")
        elif not all(importlib.util.find_spec(m) for m in ("trl", "datasets")):
            check.skip("train (LoRA, gradient checkpointing)",
                       "trl or datasets not installed: carry benchmarks/gpu_wheels.txt")  # fmt: skip
        else:
            check.run("train (LoRA, gradient checkpointing)", train_step, big, args.device, work)
    if tiny["status"] == "ok":
        rows = encoded_rows(8, 64, 200)
        check.run("score bf16 vs fp32 (tiny pair)", bf16_vs_fp32, work / "tiny" / "tiny-policy",
                  args.device, rows)  # fmt: skip
    check.skip("vLLM generation and scoring", "its wheels are far over the 64 MiB a run carries")
    check.skip("language ID", "lingua's wheel and model are over the 64 MiB a run carries")
    check.skip("Ray with GPU actors", "one machine, one GPU: docs/ray.md")
    table(check.rows)
    if args.json:
        args.json.write_text(json.dumps(check.rows, indent=1) + "\n", encoding="utf-8")
    return 1 if any(r["status"] == "FAIL" for r in check.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
