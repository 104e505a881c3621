"""The thin DPO recipe and the exports: TRL trains on an export; our recipe learns the pairs."""

import json
from pathlib import Path

import pytest
import yaml

from icr_data import store
from icr_data.build import build
from icr_data.config import load_recipe
from icr_data.train import TrainError, load_pairs, load_train_config, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def version(build_tiny, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("train") / "store"
    return build_tiny(
        store_dir, "sampling.max_tokens=12", "prompts.limit=4", "prompts.languages=[en, es, fr]"
    )


def _config(tmp_path, source, model, **kw) -> Path:
    cfg = {"data": {"source": str(source)}, "model": str(model), "output_dir": str(tmp_path / "out"),
           "finetune": "full", "learning_rate": 1e-3, "batch_size": 4, "grad_accum": 1,
           "warmup_ratio": 0.0, "max_steps": 12, "beta": 0.1, **kw}  # fmt: skip
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _accuracy(model_dir, reference, rows, tokenizer) -> float:
    """Implicit-reward accuracy on `rows`: log pi(c) - log ref(c) > log pi(r) - log ref(r)."""
    from icr_data.chat import ChatEncoder
    from icr_data.models import load_causal_lm
    from icr_data.score import sequence_logps

    enc = ChatEncoder(tokenizer)
    flat = [enc.encode(r["instruction"], r[k]) for r in rows for k in ("chosen", "rejected")]
    pol = sequence_logps(load_causal_lm(str(model_dir), "cpu", None), flat, 0, "cpu")
    ref = sequence_logps(load_causal_lm(str(reference), "cpu", None), flat, 0, "cpu")
    d = [p - q for p, q in zip(pol, ref)]
    return sum(d[i] > d[i + 1] for i in range(0, len(d), 2)) / (len(d) // 2)


def test_recipe_learns_the_training_pairs(version, tiny_pair, tokenizer, tmp_path):
    policy, _ = tiny_pair
    cfg = load_train_config(_config(tmp_path, version, policy, nll_weight=0.1))
    record = train(cfg)
    log = record["log"]
    assert len(log) == 12 and record["steps"] == 12
    assert log[0]["accuracy"] == 0.0 and log[0]["margins"] == pytest.approx(0.0, abs=1e-6)
    assert log[0]["dpo_loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference: log 2
    first, last = sum(r["dpo_loss"] for r in log[:3]) / 3, sum(r["dpo_loss"] for r in log[-3:]) / 3
    assert last < first - 0.1
    rows, _ = load_pairs(cfg.data)
    assert _accuracy(cfg.output_dir, policy, rows, tokenizer) > 0.5
    saved = json.loads((Path(cfg.output_dir) / "training.json").read_text())
    m = store.read_manifest(version)
    assert saved["data"]["version"] == m["version"] and saved["data"]["dataset"] == "demo-tiny"
    assert saved["data"]["manifest_sha256"] == store.sha256_file(version / "manifest.json")
    assert saved["data"]["pairs"] == len(rows) == m["totals"]["pairs"]
    assert saved["rounds"] == m["rounds"] and saved["round"] == 1
    assert saved["method"]["beta"] == 0.1 and "nll" in saved["method"]["loss"]


def test_lora_writes_adapter_and_merged_model(version, tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    policy, _ = tiny_pair
    cfg = load_train_config(_config(tmp_path, version, policy, finetune="lora", max_steps=2,
                                    save_every=1, lora={"r": 4, "alpha": 8}))  # fmt: skip
    train(cfg)
    out = Path(cfg.output_dir)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "checkpoint-1" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain model: no peft needed to load
    base = AutoModelForCausalLM.from_pretrained(policy)
    changed = [n for n, p in merged.named_parameters() if not p.equal(base.get_parameter(n))]
    assert changed and all("proj" in n for n in changed)  # only LoRA-targeted layers moved
    with pytest.raises(TrainError, match="already holds a trained model"):
        train(cfg)


def test_gradient_accumulation_matches_one_big_batch(version, tiny_pair, tmp_path):
    # 2 micro-batches of 2 pairs take the same first 4 pairs as one batch of 4, and the loss is a
    # mean over equal-sized micro-batches: the two runs make the same update
    policy, _ = tiny_pair
    logs = []
    for name, (bs, accum) in {"big": (4, 1), "accum": (2, 2)}.items():
        (tmp_path / name).mkdir()
        cfg = load_train_config(_config(tmp_path / name, version, policy, batch_size=bs,
                                        grad_accum=accum, max_steps=2, nll_weight=0.1))  # fmt: skip
        logs.append(train(cfg)["log"])
    big, accum = logs
    for key in ("loss", "dpo_loss", "nll", "rewards/chosen", "rewards/rejected"):
        # step 1: policy == reference, equal up to float32 noise from other padding
        assert accum[0][key] == pytest.approx(big[0][key], rel=1e-6, abs=1e-6), key
        assert accum[1][key] == pytest.approx(big[1][key], rel=1e-3, abs=1e-5), key
    assert accum[1]["accuracy"] == big[1]["accuracy"]
    assert big[1]["margins"] != 0.0  # the first update moved the policy


def test_lora_without_merge_is_an_adapter_and_no_model(version, tiny_pair, tmp_path):
    from icr_data.config import RecipeError, RoundConfig, previous_model
    from icr_data.train import trained_model

    policy, _ = tiny_pair
    path = _config(tmp_path, version, policy, finetune="lora", max_steps=1,
                   lora={"r": 4, "alpha": 8, "merge": False})  # fmt: skip
    record = train(load_train_config(path))
    out = tmp_path / "out"
    assert record["output"] == {"model": None, "adapter": "adapter"}
    assert (out / "adapter" / "adapter_config.json").is_file() and not (
        out / "config.json"
    ).exists()
    with pytest.raises(RecipeError, match="trained only a LoRA adapter"):
        previous_model(RoundConfig(index=2, previous=str(out / "training.json")), "models.policy")
    with pytest.raises(TrainError, match="lora.merge is false"):
        trained_model(path)


def test_bad_training_inputs_name_the_problem(version, tiny_pair, tmp_path):
    policy, _ = tiny_pair
    with pytest.raises(TrainError, match="data.source not found: nowhere/at/all"):
        train(load_train_config(_config(tmp_path, "nowhere/at/all", policy)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "system", "content": "x"}], "chosen": "a",
                               "rejected": "b"}) + "\n")  # fmt: skip
    with pytest.raises(TrainError, match=r"bad.jsonl, row 0: expected one 'user' message"):
        train(load_train_config(_config(tmp_path, bad, policy)))
    with pytest.raises(TrainError, match="unknown key 'learning_rte'"):
        load_train_config(_config(tmp_path, version, policy, learning_rte=1.0))


def _trl_trainer(model_dir, tokenizer, ds, out, precompute: bool, cls=None):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, report_to=[],
                     use_cpu=True, max_length=None, bf16=False, logging_steps=1,
                     precompute_ref_log_probs=precompute, save_strategy="no")  # fmt: skip
    return (cls or DPOTrainer)(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                               train_dataset=ds, processing_class=tokenizer)  # fmt: skip


def test_trl_trains_on_exported_version(version, tiny_pair, tokenizer, tmp_path):
    pytest.importorskip("trl")
    from datasets import load_dataset

    from icr_data.export import export

    (path,) = export(version, "trl", tmp_path / "trl")
    ds = load_dataset("parquet", data_files=str(path), split="train")
    assert len(ds) == store.read_manifest(version)["totals"]["pairs"]
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"
    trainer = _trl_trainer(tiny_pair[0], tokenizer, ds, tmp_path / "run", precompute=False)
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    assert loss == pytest.approx(0.693147, abs=1e-4)  # model == reference at step 1: log 2


def test_ref_logps_export_is_what_trl_computes(version, tiny_pair, tokenizer, tmp_path):
    """Scored natively with the training reference, the exported reference log-probs equal TRL's
    own precomputation, and a trainer that reads them starts at zero reward (model == reference)."""
    pytest.importorskip("trl")
    from datasets import load_dataset
    from trl import DPOTrainer

    from icr_data.derive import rescore
    from icr_data.export import ExportError, export

    policy, reference = tiny_pair
    with pytest.raises(ExportError, match="scored in cross_lingual mode"):
        export(version, "trl", tmp_path / "x", ref_logps=True)
    native, _ = rescore(version, scoring={"mode": "native"})
    with pytest.raises(ExportError, match="scoring reference .* is not the training reference"):
        export(native, "trl", tmp_path / "x", ref_logps=True)
    # the generator (tiny policy) is the training reference; make it the scoring reference too
    ok, _ = rescore(
        version, policy=str(reference), reference=str(policy), scoring={"mode": "native"}
    )
    (path,) = export(ok, "trl", tmp_path / "ref", ref_logps=True)
    ds = load_dataset("parquet", data_files=str(path), split="train")
    own = _trl_trainer(policy, tokenizer, ds.remove_columns(["ref_chosen_logps", "ref_rejected_logps"]),
                       tmp_path / "own", precompute=True)  # fmt: skip
    assert ds["ref_chosen_logps"] == pytest.approx(own.train_dataset["ref_chosen_logps"], abs=1e-4)
    assert ds["ref_rejected_logps"] == pytest.approx(
        own.train_dataset["ref_rejected_logps"], abs=1e-4
    )

    class Precomputed(DPOTrainer):  # TRL 1.16 recomputes unless told the columns are there
        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset

    trainer = _trl_trainer(policy, tokenizer, ds, tmp_path / "run", True, cls=Precomputed)
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-4)


def test_llamafactory_and_jsonl_exports(version, tmp_path):
    from icr_data.export import ExportError, export

    pairs = store.read_table(version, "pairs")
    out = tmp_path / "lf"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "a.json"}}))
    data, info = export(version, "llamafactory", out)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert [r["chosen"] for r in rows] == [c[0]["content"] for c in pairs["chosen"]]
    assert [r["instruction"] for r in rows] == [p[0]["content"] for p in pairs["prompt"]]
    entries = json.loads(info.read_text())
    assert "alpaca_en" in entries  # the user's other datasets are kept
    entry = entries[data.stem]
    assert entry["ranking"] is True and entry["file_name"] == data.name
    assert entry["columns"]["chosen"] == "chosen" and entry["columns"]["prompt"] == "instruction"
    with pytest.raises(ExportError, match="already exists"):
        export(version, "llamafactory", out)
    (flat,) = export(version, "jsonl", tmp_path / "j")
    rows = [json.loads(line) for line in flat.read_text().splitlines()]
    assert [r["margin"] for r in rows] == pairs["margin"] and rows[0]["prompt"] == pairs["prompt"][
        0
    ][0]["content"]
    with pytest.raises(ExportError, match="--ref-logps applies to --format trl only"):
        export(version, "jsonl", tmp_path / "k", ref_logps=True)


def test_round_two_generates_with_round_one_model(version, tiny_pair, tmp_path):
    """Round 2 names round 1's training record; its generator is the model round 1 trained, and
    the manifest carries both rounds: generator, reward pair, training reference, what was trained."""
    policy, reference = tiny_pair
    cfg = load_train_config(_config(tmp_path, version, policy, max_steps=1))
    record = train(cfg)
    overrides = [f"store={tmp_path / 'store'}", "models.generator=previous", f"models.policy={policy}",
                 f"models.reference={reference}", "training.reference=previous", "round.index=2",
                 f"round.previous={cfg.output_dir}/training.json", "sampling.backend=transformers",
                 "sampling.n=2", "sampling.max_tokens=8", "prompts.limit=2", "prompts.languages=[en, es]"]  # fmt: skip
    recipe = load_recipe(ROOT / "recipes/demo_tiny.yaml", overrides)
    assert recipe.models.generator == str(Path(cfg.output_dir).resolve())
    manifest = build(recipe).manifest
    one, two = manifest["rounds"]
    trained = record["output_model"]["sha256"]
    assert one["round"] == 1 and one["trained"]["output_model"]["sha256"] == trained
    assert one["generator"] == store.read_manifest(version)["models"]["generator"]
    assert one["trained"]["data"]["version"] == "v1"
    assert two["round"] == 2 and two["generator"]["sha256"] == trained
    assert two["training_reference"]["sha256"] == trained
    assert two["reward"]["reference"] == manifest["models"]["reference"]
    assert manifest["training"]["reference"]["sha256"] == trained


def test_previous_without_a_record_is_refused(tmp_path):
    from icr_data.config import RecipeError

    with pytest.raises(RecipeError, match="'models.generator' is 'previous' but 'round.previous'"):
        load_recipe(ROOT / "recipes/demo_tiny.yaml", ["models.generator=previous"])
    with pytest.raises(RecipeError, match="training record not found"):
        load_recipe(ROOT / "recipes/demo_tiny.yaml",
                    ["models.generator=previous", f"round.previous={tmp_path}/none.json"])  # fmt: skip


def test_shipped_training_configs_and_round_recipes_load():
    from icr_data.config import RecipeError

    for name in ("dpo_paper_round1.yaml", "dpo_paper_round2.yaml"):
        cfg = load_train_config(ROOT / "recipes" / name)
        assert cfg.beta == 0.1 and cfg.batch_size * cfg.grad_accum == 32 and cfg.nll_weight == 1.0
    r1 = load_recipe(ROOT / "recipes/paper_round1.yaml")
    assert r1.round.index == 1 and r1.sampling.n == 10 and r1.sampling.max_tokens == 2400
    with pytest.raises(
        RecipeError, match=r"training record not found: .*runs/round1/training.json"
    ):
        load_recipe(ROOT / "recipes/paper_round2.yaml")


def test_recipe_script_and_export_command(version, tiny_pair, tmp_path):
    import subprocess
    import sys

    cfg = _config(tmp_path, version, tiny_pair[0], max_steps=1)
    run = subprocess.run([sys.executable, str(ROOT / "recipes/dpo.py"), str(cfg), "--set", "beta=0.2"],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "out" / "training.json").read_text())
    assert saved["method"]["beta"] == 0.2 and run.stdout.strip() == str(tmp_path / "out")
    bad = subprocess.run(["icr-data", "export", str(version), "--out", str(tmp_path / "e"), "--ref-logps"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and not (tmp_path / "e").exists()
    assert "--ref-logps refused: the version was scored in cross_lingual mode" in bad.stderr


def test_rounding_noise_is_not_a_ranking():
    """Step 0 on another CPU: rewards of an unchanged model off zero by rounding (1e-7) must not
    count as pairs ranked right (it once logged an accuracy of 0.25)."""
    import torch

    from icr_data.train import ranked_right

    chosen = torch.tensor([1e-7, -1e-7, 0.0, 0.02, 3e-7], dtype=torch.float64)
    rejected = torch.tensor([0.0, 0.0, 0.0, 0.0, -2e-7], dtype=torch.float64)
    assert ranked_right(chosen, rejected, beta=0.1).tolist() == [False, False, False, True, False]
