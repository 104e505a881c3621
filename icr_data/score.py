"""Score stage: the implicit reward of every candidate from dual logits.

candidates Dataset (+ scoring_prompt, response) -> + response_tokens, logp_policy, logp_ref, reward.

logp_* is the summed log-probability of the response tokens (chat.py defines which: the assistant
turn from its first token through the end-of-turn token, the latter optional) given the scoring
prompt, under the policy and under the reference; reward = beta * (logp_policy - logp_ref).
One model is resident at a time (policy pass, then reference pass). Batches are right-padded; the
LM head runs only at response positions and log-softmax is taken in float32, in chunks, so no
[batch, seq, vocab] float32 tensor is built. Per-token log-probs are float32, the per-row
sums float64.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

from datasets import Dataset

from icr_data.chat import ChatEncoder, Encoded
from icr_data.config import ScoringConfig

# Config attributes that post-process logits after the LM head (Gemma-2/3, Cohere, Granite).
# Models with one of them take the full-logits path so the scores stay exact.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")
_HEAD_CHUNK = 1024  # response positions per LM-head / log-softmax chunk


def encode_candidates(candidates: Dataset, tokenizer, count_eot: bool) -> list[Encoded]:
    enc = ChatEncoder(tokenizer, count_eot=count_eot)
    return [
        enc.encode(x, y, row=f"prompt_id {p}, {lang}, sample {i}")
        for x, y, p, lang, i in zip(
            candidates["scoring_prompt"],
            candidates["response"],
            candidates["prompt_id"],
            candidates["lang"],
            candidates["sample_idx"],
        )
    ]


def _needs_full_logits(model) -> bool:
    cfg = model.config
    return any(getattr(cfg, a, None) not in (None, 1.0) for a in _LOGIT_POSTPROCESSING)


def _batch_logps(model, rows: Sequence[Encoded], pad_id: int, device: str):
    """Summed response log-probs for one batch: float32 log-softmax, float64 sums."""
    import torch

    seqs = [r.prompt_ids + r.response_ids for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    b_idx, t_idx, targets = [], [], []
    for b, (s, r) in enumerate(zip(seqs, rows)):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
        start = len(r.prompt_ids)
        for t in range(start, len(s)):  # token t is predicted at position t - 1
            b_idx.append(b)
            t_idx.append(t - 1)
            targets.append(s[t])
    sums = torch.zeros(len(seqs), dtype=torch.float64)
    if not targets:
        return sums
    ids, mask = ids.to(device), mask.to(device)
    b_idx_t = torch.tensor(b_idx, device=device)
    t_idx_t = torch.tensor(t_idx, device=device)
    tgt = torch.tensor(targets, device=device)
    with torch.inference_mode():
        if _needs_full_logits(model):
            logits = model(input_ids=ids, attention_mask=mask).logits
            sel = logits[b_idx_t, t_idx_t]
            logp = torch.log_softmax(sel.float(), dim=-1).gather(1, tgt[:, None])[:, 0]
        else:
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            h = hidden[b_idx_t, t_idx_t]
            head = model.get_output_embeddings()
            logp = torch.cat(
                [
                    torch.log_softmax(head(h[i : i + _HEAD_CHUNK]).float(), dim=-1).gather(
                        1, tgt[i : i + _HEAD_CHUNK, None]
                    )[:, 0]
                    for i in range(0, len(targets), _HEAD_CHUNK)
                ]
            )
        sums.index_add_(0, b_idx_t.cpu(), logp.cpu().double())
    return sums


def sequence_logps(
    model,
    rows: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    device: str,
    advance: Callable[[int], None] | None = None,
) -> list[float]:
    """Summed response log-prob for each row, batched in length order, returned in input order."""
    order = sorted(
        range(len(rows)), key=lambda i: -(len(rows[i].prompt_ids) + len(rows[i].response_ids))
    )
    out = [0.0] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        sums = _batch_logps(model, [rows[i] for i in idx], pad_id, device)
        for i, v in zip(idx, sums.tolist()):
            out[i] = v
        if advance:
            advance(len(idx))
    return out


def score(
    candidates: Dataset,
    policy: str,
    reference: str,
    cfg: ScoringConfig,
    advance: Callable[[str, int], None] | None = None,
    chat_template: str | None = None,
) -> Dataset:
    """Add response_tokens, logp_policy, logp_ref and reward to `candidates`.

    `advance(model_role, k)` is called after each batch of k rows.
    """
    from icr_data.models import (
        check_same_tokenizer,
        load_causal_lm,
        load_tokenizer,
        pick_device,
        pick_dtype,
    )

    tok = load_tokenizer(policy, chat_template)
    check_same_tokenizer(tok, load_tokenizer(reference, chat_template))
    rows = encode_candidates(candidates, tok, cfg.count_eot)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    logps = {}
    for role, path in (("policy", policy), ("reference", reference)):
        model = load_causal_lm(path, device, dtype)
        step = (lambda k, role=role: advance(role, k)) if advance else None
        logps[role] = sequence_logps(model, rows, cfg.batch_size, pad_id, device, step)
        del model
        gc.collect()
    out = candidates
    for name in ("response_tokens", "logp_policy", "logp_ref", "reward"):
        if name in out.column_names:
            out = out.remove_columns(name)
    reward = [cfg.beta * (p - r) for p, r in zip(logps["policy"], logps["reference"])]
    out = out.add_column("response_tokens", [len(r.response_ids) for r in rows])
    out = out.add_column("logp_policy", logps["policy"])
    out = out.add_column("logp_ref", logps["reference"])
    return out.add_column("reward", reward)
