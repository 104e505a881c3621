"""Tiny Llama models with a ChatML template, built offline in about a second.

They stand in for real models in the tests and in the placeholder demo (`builtin:tiny-policy`,
`builtin:tiny-reference` in a recipe). The weights are random, so their text is noise; the
point is that every stage (vLLM, the chat template, scoring, pairing, the store) runs for real.
Head dimension is 64 because vLLM's CPU attention needs at least 32.

    python -m icr_data.stages.tiny OUT_DIR     # writes OUT_DIR/tiny-reference and OUT_DIR/tiny-policy
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from icr_data.base.files import cache_dir

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BUILD_VERSION = "2"  # bump when the construction below changes: it keys the builtin cache

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Please answer the following instruction.",
    "El rápido zorro marrón salta sobre el perro perezoso. ¿Cuáles son tres frutas?",
    "Der schnelle braune Fuchs springt über den faulen Hund. Nenne drei Früchte.",
    "Le renard brun rapide saute par-dessus le chien paresseux. Citez trois fruits.",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Назовите три фрукта.",
    "Write a short poem about the sea. Explain how photosynthesis works in simple terms.",
    "Escribe un poema corto sobre el mar. Schreibe ein kurzes Gedicht über das Meer.",
    "Écris un court poème sur la mer. Напиши короткое стихотворение о море.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" # $ % & @ _ ~ |",
]


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 600):
    """A byte-level BPE tokenizer (any text encodes) with ChatML specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or _CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_model(tokenizer, seed: int, hidden: int = 128, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so rewards are not all ~0
        model.lm_head.weight.mul_(4.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def perturbed(model, seed: int, scale: float = 0.05):
    """A copy of `model` with every weight nudged: a stand-in for 'the same model after DPO'."""
    import copy

    import torch

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return out


def build_tiny_pair(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a (policy, reference) pair sharing one tokenizer; return their folders."""
    out_dir = Path(out_dir)
    tok = build_tokenizer()
    ref = build_model(tok, seed=seed)
    pol = perturbed(ref, seed=seed + 1)
    paths = []
    for name, model in (("tiny-policy", pol), ("tiny-reference", ref)):
        path = out_dir / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def builtin_cache() -> Path:
    return cache_dir()


BUILTINS = ("tiny-policy", "tiny-reference")


def builtin_path(spec: str) -> Path:
    """`builtin:tiny-policy` / `builtin:tiny-reference` -> its cached folder, whether built yet or
    not (it is once it holds config.json). Pure; raises ValueError for an unknown name."""
    name = spec.split(":", 1)[1]
    if name not in BUILTINS:
        raise ValueError(
            f"unknown builtin model {spec!r} (known: builtin:tiny-policy, builtin:tiny-reference, "
            "builtin:smollm2-135m-instruct)"
        )
    key = hashlib.sha256(f"{BUILD_VERSION}".encode()).hexdigest()[:12]
    return builtin_cache() / "builtin" / f"tiny-{key}" / name


def build_builtin(spec: str) -> Path:
    """Build the cached tiny pair `spec` belongs to unless it is there (prepare.py calls this);
    atomic: the pair is written to a temporary folder and moved in whole. Returns its folder."""
    path = builtin_path(spec)
    root = path.parent
    if not (path / "config.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".building-"))
        try:
            build_tiny_pair(tmp)
            if root.exists():
                shutil.rmtree(root)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for p in build_tiny_pair(sys.argv[1]):
        print(p)
