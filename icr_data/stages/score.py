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
BATCH_COLUMN = "score_batch"
"""An optional input column: the batch each row is scored in (forward_batched's `batches`)."""


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


def _batches(lengths: Sequence[int], token_budget: int, max_batch_size: int,
             given: Sequence[int] | None) -> list[list[int]]:  # fmt: skip
    """plan_batches, or the `given` batch numbers' groups (each within the budget)."""
    if given is None:
        return plan_batches(lengths, token_budget, max_batch_size)
    groups: dict[int, list[int]] = {}
    for i, b in enumerate(given):
        groups.setdefault(b, []).append(i)
    return [[g[j] for j in part]
            for g in groups.values()
            for part in plan_batches([lengths[i] for i in g], token_budget, max_batch_size)]  # fmt: skip


def given_batches(rows: Dataset | dict) -> list[int] | None:
    """The batch number of each row (BATCH_COLUMN) when the rows carry them, else None (rows: a
    Dataset or a dict of columns)."""
    names = rows.column_names if isinstance(rows, Dataset) else rows
    return list(rows[BATCH_COLUMN]) if BATCH_COLUMN in names else None


def default_token_budget(device: str) -> int:
    return 16384 if device.startswith("cuda") else 4096


def forward_batched(
    keys: Sequence[tuple],
    lengths: Sequence[int],
    forward: Callable[[list[int]], Sequence[float]],
    device: str,
    token_budget: int | None = None,
    max_batch_size: int = 64,
    advance: Callable[[int, int], None] | None = None,
    stats: ScoreStats | None = None,
    response_lengths: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
) -> list[float]:
    """The one forward loop of scoring: one number per row, in input order.

    Rows with equal `keys` (e.g. duplicate samples of one prompt) are computed once; the others
    are batched longest first to a padded-token budget, and `forward(indices)` gives the numbers
    of one batch (indices into the rows). `advance(rows, tokens)` is called after each batch and
    `stats` (if given) accumulates what was done. Log-probs (sequence_logps) and an explicit
    reward model (RewardModelScorer) both run through it.

    With `batches` (a batch number per row, the rows' BATCH_COLUMN) the caller chose the
    batches: rows sharing a number form one batch (split only where the budget demands), in
    the order the numbers first appear, every row computed (no deduplication). The stability
    check (commands/stability.py) rescores a sample that way."""
    if batches is None:
        first: dict[tuple, int] = {}
        back = [first.setdefault(k, len(first)) for k in keys]
    else:
        back = list(range(len(keys)))
    unique: list[int] = []  # the row of each distinct key's first appearance
    for i, b in enumerate(back):
        if b == len(unique):
            unique.append(i)
    weight = [0] * len(unique)
    for b in back:
        weight[b] += 1
    ulen = [lengths[i] for i in unique]
    scored = [0.0] * len(unique)
    budget = token_budget or default_token_budget(device)
    for idx in _batches(ulen, budget, max_batch_size, batches):
        t0 = time.perf_counter()
        values = forward([unique[i] for i in idx])
        for i, v in zip(idx, values):
            scored[i] = float(v)
        real = sum(ulen[i] for i in idx)
        if stats is not None:
            stats.rows += len(idx)
            stats.tokens += real
            stats.padded_tokens += len(idx) * max(ulen[i] for i in idx)
            if response_lengths is not None:
                stats.response_tokens += sum(response_lengths[unique[i]] for i in idx)
            stats.batches += 1
            stats.seconds += time.perf_counter() - t0
        if advance:
            advance(sum(weight[i] for i in idx), real)
    if stats is not None:
        stats.duplicates_skipped += len(keys) - len(unique)
    return [scored[b] for b in back]


def sequence_logps(
    model,
    rows: Sequence[Encoded],
    pad_id: int,
    device: str,
    token_budget: int | None = None,
    max_batch_size: int = 64,
    advance: Callable[[int, int], None] | None = None,
    stats: ScoreStats | None = None,
    batches: Sequence[int] | None = None,
) -> list[float]:
    """Summed response log-prob for each row, in input order (forward_batched)."""
    return forward_batched(
        [(tuple(r.prompt_ids), tuple(r.response_ids)) for r in rows],
        [len(r.prompt_ids) + len(r.response_ids) for r in rows],
        lambda idx: _batch_logps(model, [rows[i] for i in idx], pad_id, device).tolist(),
        device, token_budget, max_batch_size, advance, stats,
        response_lengths=[len(r.response_ids) for r in rows], batches=batches,
    )  # fmt: skip


class TransformersScorer:
    """The dual-logit scorer's backend: one causal LM through transformers, resident while the
    stage is open (stages.LogprobStage). `score(rows)` -> (logp, response_tokens) rows and stats.
    Scorer backends are named in registry.SCORERS (scoring.backend)."""

    outputs = ("logp", "response_tokens")

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
                               st.max_batch_size, advance=step, stats=stats,
                               batches=given_batches(rows))  # fmt: skip
        out = Dataset.from_dict(
            {"logp": logps, "response_tokens": [len(r.response_ids) for r in encoded]}
        )
        return out, stats.as_dict()

    def close(self) -> None:
        del self.model
        gc.collect()


class RewardModelScorer:
    """An explicit reward model (the judge's backend, stages.RewardStage): a sequence-classification
    checkpoint through transformers, one logit per row on [user: instruction, assistant:
    response] rendered by its chat template, batched through forward_batched like log-probs.
    Rows are right-padded; the head reads each row's last real position, found from its
    length (not from the pad token, which may equal the end-of-turn token)."""

    outputs = ("reward",)

    def __init__(self, stage):
        from transformers import AutoModelForSequenceClassification

        from icr_data.base.hf import quiet_transformers
        from icr_data.stages.models import load_tokenizer

        quiet_transformers()
        self.stage = stage
        self.tok = load_tokenizer(stage.model, stage.chat_template)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        net = AutoModelForSequenceClassification.from_pretrained(stage.model)
        self.model = net.to(stage.device).eval()
        self.head = getattr(self.model, "score", None)
        """The classification head over the last position (Llama, Mistral, Qwen, Gemma ...);
        None for other architectures, which are then run one row at a time (no padding)."""

    def _encode(self, x: str, y: str) -> list[int]:
        text = self.tok.apply_chat_template(
            [{"role": "user", "content": x}, {"role": "assistant", "content": y}], tokenize=False
        )
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _forward(self, seqs: list[list[int]]) -> list[float]:
        import torch

        dev = self.stage.device
        with torch.inference_mode():
            if self.head is None or len(seqs) == 1:
                return [float(self.model(input_ids=torch.tensor([s], device=dev)).logits[0, 0])
                        for s in seqs]  # fmt: skip
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for b, s in enumerate(seqs):
                ids[b, : len(s)] = torch.tensor(s)
                mask[b, : len(s)] = 1
            hidden = self.model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev))
            last = torch.tensor([len(s) - 1 for s in seqs], device=dev)
            h = hidden.last_hidden_state[torch.arange(len(seqs), device=dev), last]
            return self.head(h)[:, 0].float().tolist()

    def score(self, rows: Dataset, advance=None) -> tuple[Dataset, dict]:
        st = self.stage
        seqs = [self._encode(x, y) for x, y in zip(rows["instruction"], rows["response"])]
        stats = ScoreStats()

        def step(k: int, _tokens: int) -> None:
            if advance:
                advance(k)

        rewards = forward_batched([tuple(s) for s in seqs], [len(s) for s in seqs],
                                  lambda idx: self._forward([seqs[i] for i in idx]), st.device,
                                  st.token_budget, st.max_batch_size, step, stats)  # fmt: skip
        return Dataset.from_dict({"reward": rewards}), stats.as_dict()

    def close(self) -> None:
        del self.model
        gc.collect()


def rewards(logp_policy: Sequence[float], logp_ref: Sequence[float], beta: float) -> list[float]:
    """The implicit reward, beta * (log pi_policy(y|x) - log pi_ref(y|x)): its one definition."""
    return [beta * (p - r) for p, r in zip(logp_policy, logp_ref)]


def with_rewards(
    candidates: Dataset, response_tokens: list[int], logp_policy: list[float],
    logp_ref: list[float], beta: float,
) -> Dataset:  # fmt: skip
    """Candidates with (fresh) response_tokens, logp_policy, logp_ref, reward, reward_mean."""
    out = candidates
    for name in ("response_tokens", "logp_policy", "logp_ref", "reward", "reward_mean"):
        if name in out.column_names:
            out = out.remove_columns(name)
    reward = rewards(logp_policy, logp_ref, beta)
    out = out.add_column("response_tokens", response_tokens)
    out = out.add_column("logp_policy", logp_policy).add_column("logp_ref", logp_ref)
    out = out.add_column("reward", reward)
    return out.add_column(
        "reward_mean", [r / n if n else 0.0 for r, n in zip(reward, response_tokens)]
    )
