"""What a model is, read from its config alone, before any weights load.

    check_causal_lm(path, "scoring.translator: model X")     # a classifier cannot generate
    check_lora_targets(path, ["q_proj", "v_proj"], "lora.target_modules (model X)")

A model folder whose config.architectures are all classifier heads (LlamaForSequenceClassification
and the like: an explicit reward model) loads as a causal LM without complaint, with its LM head
randomly initialised, and then generates noise: where a model must generate (a translator),
it is refused from its config, naming the option and the model.

LoRA's target modules are matched by peft against the model's module names (a name equal to a
target or ending in `.target`; a string other than `all-linear` is a regular expression matched
against the whole name), and a name that matches nothing fails only once the model has loaded.
The module names are read here by building the model from its config on the meta device
(accelerate.init_empty_weights: no memory, no weights read; about a second for an 8B config), so
a misspelt target is one line listing the layers LoRA can adapt, before any model loads.
"""

from __future__ import annotations

import re

from icr_data.stages.models import ModelError

CLASSIFIER_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
"""config.architectures suffixes of models that score or label text and cannot generate."""


def _config(path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def check_causal_lm(path: str, where: str) -> None:
    """A ModelError when the model at `path` is a classifier (all its config.architectures are
    CLASSIFIER_HEADS): it would load as a causal LM with a random LM head. A config that cannot
    be read is left to the loader to report."""
    try:
        archs = list(_config(path).architectures or [])
    except (OSError, ValueError):
        return
    if archs and all(a.endswith(CLASSIFIER_HEADS) for a in archs):
        raise ModelError(f"{where} is a {archs[0]} (a classifier, by its config.architectures), "
                         "not a causal LM: it cannot generate (loaded as one, its LM head would "
                         "be random); give an instruct model")  # fmt: skip


def lora_layers(path: str) -> tuple[str, list[str]]:
    """(the architecture, the full names of the modules LoRA can adapt: linear, embedding and
    convolution layers), from the model built on the meta device."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = _config(path)
    with init_empty_weights():
        net = AutoModelForCausalLM.from_config(config)
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    names = [name for name, m in net.named_modules() if name and isinstance(m, kinds)]
    return type(net).__name__, names


def unmatched_targets(targets: list[str] | str, layers: list[str]) -> list[str]:
    """The targets that match none of `layers` as peft matches them: a list entry equal to a
    name or to its last dotted parts; a string (other than all-linear) as a whole-name regular
    expression (one that does not compile matches nothing)."""
    if targets == "all-linear":
        return []
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error:
            return [targets]
        return [] if any(pattern.fullmatch(n) for n in layers) else [targets]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in layers)]


def check_lora_targets(path: str, targets: list[str] | str, where: str) -> None:
    """A ModelError naming the targets no layer of the model at `path` matches, and listing the
    layer names LoRA can adapt (each once, by its last part), before the model loads."""
    if targets == "all-linear":
        return
    arch, layers = lora_layers(path)
    bad = unmatched_targets(targets, layers)
    if bad:
        valid = sorted({n.rsplit(".", 1)[-1] for n in layers})
        shown = ", ".join(repr(b[:40]) for b in bad[:8]) + (", ..." if len(bad) > 8 else "")
        listed = ", ".join(valid[:40]) + (", ..." if len(valid) > 40 else "")
        raise ModelError(f"{where}: {shown} match{'es' if len(bad) == 1 else ''} no layer of "
                         f"this {arch}; the layers LoRA can adapt: {listed} (or all-linear)")  # fmt: skip
