"""Score stage: the implicit reward of every candidate from dual logits.

candidates Dataset (+ scoring_prompt, response) -> + response_tokens, logp_policy, logp_ref, reward,
reward_mean (reward per response token).

logp_* is the summed log-probability of the response tokens (chat.py defines which: the assistant
turn from its first token through the end-of-turn token, the latter optional) given the scoring
prompt, under the policy and under the reference; reward = beta * (logp_policy - logp_ref).
One model is resident at a time (policy pass, then reference pass). Rows are sorted by length and
batched to a padded-token budget (`scoring.token_budget`), right-padded; the LM head runs only
at response positions and log-softmax is taken in float32, in chunks, so no [batch, seq, vocab]
float32 tensor is built; identical rows are scored once. Per-token log-probs are float32, the per-row
sums float64.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from datasets import Dataset

from icr_data.stages.chat import ChatEncoder, Encoded

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


def response_logps(model, rows: Sequence[Encoded], pad_id: int, device: str):
    """Summed response log-probs of one batch as a float64 tensor [len(rows)] on the CPU.

    Differentiable when called with gradients enabled (the DPO recipe trains through it); the
    scorer calls it under inference mode. float32 log-softmax; the LM head runs only at
    response positions, in chunks. `model` is a causal LM (for a peft model, its base model).
    """
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
    if not targets:
        return torch.zeros(len(seqs), dtype=torch.float64)
    ids, mask = ids.to(device), mask.to(device)
    b_idx_t = torch.tensor(b_idx, device=device)
    t_idx_t = torch.tensor(t_idx, device=device)
    tgt = torch.tensor(targets, device=device)
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
    sums = torch.zeros(len(seqs), dtype=torch.float64, device=logp.device)
    return sums.index_add(0, b_idx_t, logp.double()).cpu()


def _batch_logps(model, rows: Sequence[Encoded], pad_id: int, device: str):
    import torch

    with torch.inference_mode():
        return response_logps(model, rows, pad_id, device)


@dataclass
class ScoreStats:
    """What a scoring pass did: rows, real and padded tokens, time."""

    rows: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    response_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    duplicates_skipped: int = 0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "padding_waste": round(self.padding_waste, 4),
                "tokens_per_s": round(self.tokens_per_s, 1)}  # fmt: skip


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each filling at most `token_budget` padded
    tokens (rows x longest row) and `max_batch_size` rows; a row longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (
            width * (len(current) + 1) > token_budget or len(current) >= max_batch_size
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def default_token_budget(device: str) -> int:
    return 16384 if device.startswith("cuda") else 4096


def sequence_logps(
    model,
    rows: Sequence[Encoded],
    pad_id: int,
    device: str,
    token_budget: int | None = None,
    max_batch_size: int = 64,
    advance: Callable[[int, int], None] | None = None,
    stats: ScoreStats | None = None,
) -> list[float]:
    """Summed response log-prob for each row, in input order.

    Rows are batched longest first to a padded-token budget; `advance(rows, tokens)` is called
    after each batch and `stats` (if given) accumulates what was done.
    """
    # identical (prompt, response) rows, e.g. duplicate samples of one prompt, are scored once
    first: dict[tuple, int] = {}
    back = [
        first.setdefault((tuple(r.prompt_ids), tuple(r.response_ids)), len(first)) for r in rows
    ]
    unique = []
    for r, b in zip(rows, back):
        if b == len(unique):  # first appearance
            unique.append(r)
    weight = [0] * len(unique)
    for b in back:
        weight[b] += 1
    lengths = [len(r.prompt_ids) + len(r.response_ids) for r in unique]
    scored = [0.0] * len(unique)
    budget = token_budget or default_token_budget(device)
    for idx in plan_batches(lengths, budget, max_batch_size):
        t0 = time.perf_counter()
        sums = _batch_logps(model, [unique[i] for i in idx], pad_id, device)
        for i, v in zip(idx, sums.tolist()):
            scored[i] = v
        real = sum(lengths[i] for i in idx)
        if stats is not None:
            stats.rows += len(idx)
            stats.tokens += real
            stats.padded_tokens += len(idx) * max(lengths[i] for i in idx)
            stats.response_tokens += sum(len(unique[i].response_ids) for i in idx)
            stats.batches += 1
            stats.seconds += time.perf_counter() - t0
        if advance:
            advance(sum(weight[i] for i in idx), real)
    if stats is not None:
        stats.duplicates_skipped += len(rows) - len(unique)
    out = [scored[b] for b in back]
    return out


class TransformersScorer:
    """The dual-logit scorer's backend: one causal LM through transformers, resident while the
    stage is open (stages.LogprobStage). `score(rows)` -> (logp, response_tokens) rows and stats."""

    def __init__(self, stage):
        import torch

        from icr_data.stages.models import ModelError, load_causal_lm, pair_tokenizer, pick_dtype

        if stage.device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"scoring keys name device {stage.device} but this process sees no "
                             "GPU; set scoring.device: cpu (or give the worker a GPU)")  # fmt: skip
        self.stage = stage
        self.tok = pair_tokenizer(*stage.tokenizer_from, stage.chat_template)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.model = load_causal_lm(
            stage.model, stage.device, pick_dtype(stage.dtype, stage.device)
        )

    def score(self, rows: Dataset, advance=None) -> tuple[Dataset, dict]:
        st = self.stage
        encoded = encode_candidates(rows, self.tok, st.count_eot)
        stats = ScoreStats()

        def step(k: int, _tokens: int) -> None:
            if advance:
                advance(k, rate=f"{stats.tokens_per_s:,.0f} tok/s")

        logps = sequence_logps(self.model, encoded, self.pad_id, st.device, st.token_budget,
                               st.max_batch_size, advance=step, stats=stats)  # fmt: skip
        out = Dataset.from_dict(
            {"logp": logps, "response_tokens": [len(r.response_ids) for r in encoded]}
        )
        return out, stats.as_dict()

    def close(self) -> None:
        del self.model
        gc.collect()


SCORERS = {"transformers": TransformersScorer}
"""Scoring backends by name (stages.LogprobStage.backend): a class taking the stage, with
`score(rows, advance) -> (Dataset[logp, response_tokens], stats)` and `close()`."""


def with_rewards(
    candidates: Dataset, response_tokens: list[int], logp_policy: list[float],
    logp_ref: list[float], beta: float,
) -> Dataset:  # fmt: skip
    """Candidates with (fresh) response_tokens, logp_policy, logp_ref, reward, reward_mean."""
    out = candidates
    for name in ("response_tokens", "logp_policy", "logp_ref", "reward", "reward_mean"):
        if name in out.column_names:
            out = out.remove_columns(name)
    reward = [beta * (p - r) for p, r in zip(logp_policy, logp_ref)]
    out = out.add_column("response_tokens", response_tokens)
    out = out.add_column("logp_policy", logp_policy).add_column("logp_ref", logp_ref)
    out = out.add_column("reward", reward)
    return out.add_column(
        "reward_mean", [r / n if n else 0.0 for r, n in zip(reward, response_tokens)]
    )
