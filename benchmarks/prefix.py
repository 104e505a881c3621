"""Does reusing the shared scoring prompt pay? Prefix-cache scoring vs icr_data's scorer.

    python benchmarks/prefix.py [--model smollm2|tiny] [--responses-per-prompt 10]

The N responses to one prompt share their scoring prompt. The variant measured here runs each
prompt once, repeats its KV cache over the prompt's N responses and scores only the response
tokens (one batch per prompt). icr_data's scorer instead recomputes the prompt per row but sorts
all rows by length and fills batches to a token budget. Both compute the same quantity; the
script checks they agree and prints tokens/s for each, with the prompt share of the tokens and
the padding each one pays. The prefix variant lives here, not in the package, because it lost
where measured (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def prefix_shared_logps(model, rows, pad_id: int) -> tuple[list[float], int]:
    import torch

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[tuple(r.prompt_ids)].append(i)
    out = [0.0] * len(rows)
    padded = 0
    with torch.inference_mode():
        for prompt, idx in groups.items():
            first = model(input_ids=torch.tensor([prompt]), use_cache=True)
            cache = first.past_key_values
            head_logp = first.logits[0, -1].float().log_softmax(-1)
            cache.batch_repeat_interleave(len(idx))
            resp = [rows[i].response_ids for i in idx]
            width = max(len(r) for r in resp)
            padded += len(prompt) + len(idx) * width  # positions actually forwarded
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), len(prompt) + width), dtype=torch.long)
            mask[:, : len(prompt)] = 1
            for b, r in enumerate(resp):
                ids[b, : len(r)] = torch.tensor(r)
                mask[b, len(prompt) : len(prompt) + len(r)] = 1
            pos = torch.arange(len(prompt), len(prompt) + width)[None].expand(len(idx), -1)
            hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                      past_key_values=cache).last_hidden_state  # fmt: skip
            head = model.get_output_embeddings()
            for b, (i, r) in enumerate(zip(idx, resp)):
                total = head_logp[r[0]].double().item()
                if len(r) > 1:
                    logits = head(hidden[b, : len(r) - 1]).float().log_softmax(-1)
                    total += logits.gather(1, torch.tensor(r[1:])[:, None]).double().sum().item()
                out[i] = total
    return out, padded


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--candidates", type=int, default=200)
    args = ap.parse_args()

    import tempfile

    import torch
    from score import candidates, model_path

    from icr_data.stages.models import load_causal_lm, load_tokenizer
    from icr_data.stages.score import ScoreStats, sequence_logps

    with tempfile.TemporaryDirectory() as tmp:
        path = model_path(args.model, Path(tmp))
        tok = load_tokenizer(path)
        model = load_causal_lm(path, "cpu", torch.float32)
        rows = candidates(tok, args.candidates)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
        prompt_share = sum(len(r.prompt_ids) for r in rows) / tokens
        sequence_logps(model, rows[:2], pad, "cpu")  # warm-up

        t0 = time.perf_counter()
        stats = ScoreStats()
        ours = sequence_logps(model, rows, pad, "cpu", stats=stats)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        shared, padded = prefix_shared_logps(model, rows, pad)
        t_shared = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(ours, shared))
    print(f"{args.model}: {len(rows)} candidates, {tokens} tokens, prompt share {prompt_share:.1%}")
    print(
        f"  icr_data scorer : {tokens / t_ours:8.0f} tokens/s  (padding waste {stats.padding_waste:.1%})"
    )
    print(
        f"  prefix reuse    : {tokens / t_shared:8.0f} tokens/s  (forwarded positions / tokens {padded / tokens:.2f})"
    )
    print(f"  ratio prefix/ours {t_ours / t_shared:.2f}x; max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
