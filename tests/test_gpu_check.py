"""benchmarks/gpu_check.py, the prepared accelerator check, run here on the CPU with a tiny model so
that it cannot rot between the sessions that are lent a GPU: every path it runs there runs here
(bf16 scoring, bf16 generation, a LoRA DPO step with gradient checkpointing, bf16 against fp32)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_accelerator_check_runs_on_cpu_with_a_tiny_model(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device",
                        "cpu", "--tiny", "--json", str(out)], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["check"]: row for row in json.loads(out.read_text())}
    for name in ("models: tiny-shaped, random, bf16", "score (bf16)", "generate (bf16)",
                 "train (LoRA, gradient checkpointing)", "score bf16 vs fp32 (tiny pair)"):  # fmt: skip
        assert rows[name]["status"] == "ok", rows[name]
    assert rows["score (bf16)"]["finite"] and rows["score (bf16)"]["tokens_per_s"] > 0
    assert rows["generate (bf16)"]["tokens"] > 0
    # bf16 weights round every product: the summed log-probs drift from fp32's, by at most
    # 0.01 nats a response token here (measured 0.001 on the tiny pair, 2026-12-04)
    assert 0 < rows["score bf16 vs fp32 (tiny pair)"]["max_per_token"] < 0.01
    assert rows["vLLM generation and scoring"]["status"] == "skipped"
