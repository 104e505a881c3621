"""A model's kind and layers, read from its config before any weights load (issue 29): a
classifier given as a translator is refused in one line naming the option and the model, and
LoRA target modules the model lacks are refused naming them and listing the layers it has.

    pytest tests/test_architecture.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from icr_data.stages.architecture import (
    CLASSIFIER_HEADS,
    check_causal_lm,
    lora_layers,
    unmatched_targets,
)
from icr_data.stages.models import ModelError

ROOT = Path(__file__).resolve().parents[1]
LLAMA = ["down_proj", "embed_tokens", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj",
         "up_proj", "v_proj"]  # fmt: skip


@pytest.fixture
def no_weights(monkeypatch):
    """Any model loaded from weights fails the test: the checks read configs only."""
    from transformers import PreTrainedModel

    def load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(load))


def classifier(tiny_pair, tmp_path: Path, head: str) -> Path:
    """The tiny policy's folder, its config saying `Llama<head>`, and no weights at all: a
    check that loads anything fails on it."""
    out = tmp_path / f"cls{head}"
    shutil.copytree(tiny_pair[0], out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = [f"Llama{head}"]
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("head", CLASSIFIER_HEADS)
def test_a_classifier_is_no_translator(tiny_pair, tmp_path, capsys, no_weights, head):
    from icr_data import cli

    model = classifier(tiny_pair, tmp_path, head)
    with pytest.raises(ModelError, match=rf"^--model: model {model} is a Llama{head} \(a "):
        check_causal_lm(str(model), f"--model: model {model}")
    check_causal_lm(str(tiny_pair[0]), "--model")  # a causal LM passes
    prompts = str(ROOT / "recipes" / "data" / "demo_prompts.jsonl")
    with pytest.raises(SystemExit) as e:
        cli.main(["translate", prompts, "--to", "es", "--model", str(model), "--out",
                  str(tmp_path / "out"), "--backend", "transformers"])  # fmt: skip
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --model: model {model} is a Llama{head}") and "cannot" in err
    assert not (tmp_path / "out").exists()


def test_a_classifier_as_scoring_translator_stops_a_build_before_any_model(
    tiny_pair, tmp_path, no_weights
):
    from icr_data.base.config import load_recipe
    from icr_data.commands.build import build

    policy, reference = tiny_pair
    model = classifier(tiny_pair, tmp_path, "ForSequenceClassification")
    recipe = load_recipe(ROOT / "recipes" / "demo_tiny.yaml", [
        f"store={tmp_path / 'store'}", f"models.generator={policy}", f"models.policy={policy}",
        f"models.reference={reference}", "sampling.backend=transformers",
        "scoring.mode=translate_en", f"scoring.translator={model}"])  # fmt: skip
    with pytest.raises(ModelError, match=rf"^scoring.translator: model {model} is a LlamaFor"):
        build(recipe)
    assert not list((tmp_path / "store").rglob("*.parquet"))


@pytest.mark.parametrize("role", ["generator", "policy", "reference"])
def test_a_classifier_in_the_reward_pair_or_as_generator_stops_a_build_before_any_model(
    tiny_pair, tmp_path, no_weights, role
):
    from icr_data.base.config import load_recipe
    from icr_data.commands.build import build

    policy, reference = tiny_pair
    roles = {"generator": policy, "policy": policy, "reference": reference}
    roles[role] = model = classifier(tiny_pair, tmp_path, "ForSequenceClassification")
    recipe = load_recipe(ROOT / "recipes" / "demo_tiny.yaml", [
        f"store={tmp_path / 'store'}", *(f"models.{r}={m}" for r, m in roles.items()),
        "sampling.backend=transformers"])  # fmt: skip
    with pytest.raises(ModelError, match=rf"^models.{role}: model {model} is a LlamaFor"):
        build(recipe)
    assert not list((tmp_path / "store").rglob("*.parquet"))


def test_lora_layers_come_from_the_config_on_the_meta_device(tiny_pair, no_weights):
    arch, layers = lora_layers(str(tiny_pair[0]))
    assert arch == "LlamaForCausalLM"
    assert sorted({n.rsplit(".", 1)[-1] for n in layers}) == LLAMA
    assert "model.layers.0.self_attn.q_proj" in layers and "lm_head" in layers


LAYERS = ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
          "model.layers.1.self_attn.q_proj", "lm_head"]  # fmt: skip


@pytest.mark.parametrize(
    "targets, bad",
    [(["q_proj"], []), (["self_attn.q_proj", "up_proj"], []),
     (["model.layers.0.self_attn.q_proj"], []), ("all-linear", []), (r".*\.q_proj", []),
     (["q_prj"], ["q_prj"]), (["q_proj", "vproj", "k_proj"], ["vproj", "k_proj"]),
     (["proj"], ["proj"]), (["layers"], ["layers"]), (["attn.q_proj"], ["attn.q_proj"]),
     ([""], [""]), ("q_proj", ["q_proj"]), (r".*\.v_proj", [r".*\.v_proj"]),
     ("(unclosed", ["(unclosed"])],
)  # fmt: skip
def test_targets_match_as_peft_matches_them(targets, bad):
    """A list entry matches a whole name or its last dotted parts (a part of a part does not);
    a string is a regular expression over the whole name."""
    assert unmatched_targets(targets, LAYERS) == bad


@pytest.mark.parametrize(
    "targets, named",
    [(["q_prj"], "'q_prj' matches"), (["q_proj", "vprj", "gate"], "'vprj', 'gate' match "),
     ("not_a_layer", "'not_a_layer' matches"), ("[bad", "'[bad' matches")],
)  # fmt: skip
def test_unknown_lora_targets_stop_training_before_any_model(
    tiny_pair, tmp_path, no_weights, targets, named
):
    from icr_data.base.train_config import load_train_config
    from icr_data.commands.train import TrainError, train

    cfg = yaml.safe_load((ROOT / "recipes" / "dpo_demo_tiny.yaml").read_text())
    cfg["data"]["source"] = str(ROOT / "recipes" / cfg["data"]["source"])
    cfg.update(model=str(tiny_pair[0]), output_dir=str(tmp_path / "run"), finetune="lora",
               lora={"target_modules": targets})  # fmt: skip
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(TrainError) as e:
        train(load_train_config(tmp_path / "dpo.yaml"))
    message = str(e.value)
    assert message.startswith(f"'lora.target_modules' (model {tiny_pair[0]}): {named}"), message
    assert message.endswith(f"LoRA can adapt: {', '.join(LLAMA)} (or all-linear)"), message
    assert not (tmp_path / "run").exists()
