"""Our log-probs equal TRL's DPO reference log-probs for the same (prompt, response) rows.

TRL is handed the rows in its standard (text) format: prompt = the chat template's rendering of
[user: x] with the generation prompt, chosen/rejected = the response followed by the end-of-turn
token, which is exactly the span our scorer counts. (TRL's conversational format would also
count what the template emits after the end-of-turn token, e.g. ChatML's newline.)
"""

import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from icr_data.base.config import ScoringConfig  # noqa: E402
from icr_data.commands.score_phase import score_candidates as score  # noqa: E402
from icr_data.stages.chat import ChatEncoder, render_prompt  # noqa: E402

ROWS = [
    ("Name three fruits.", "Apple, kiwi and orange.", "I don't know."),
    (
        "Nenne drei Früchte.",
        "Apfel, Kiwi und Orange.",
        "Ich weiß es nicht, frag jemand anderen bitte.",
    ),
    ("Назовите три фрукта.", "Яблоко", ""),
]


def test_logps_equal_trl_reference_logps(tiny_pair, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    policy, reference = tiny_pair
    eot = tokenizer.convert_ids_to_tokens(ChatEncoder(tokenizer).encode("x", "").response_ids[0])
    train = Dataset.from_list([
        {"prompt": render_prompt(tokenizer, x), "chosen": c + eot, "rejected": r + eot} for x, c, r in ROWS
    ])  # fmt: skip
    args = DPOConfig(output_dir=str(tmp_path / "trl"), precompute_ref_log_probs=True,
                     per_device_train_batch_size=2, report_to=[], use_cpu=True,
                     max_length=None, dataset_num_proc=None, bf16=False)  # fmt: skip
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy),
        ref_model=AutoModelForCausalLM.from_pretrained(reference),
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
    )
    trl_chosen = trainer.train_dataset["ref_chosen_logps"]
    trl_rejected = trainer.train_dataset["ref_rejected_logps"]

    cands = Dataset.from_list([
        {"prompt_id": f"p{i}", "lang": "xx", "instruction": x, "scoring_prompt": x, "sample_idx": j,
         "response": y, "finish_reason": "stop"}
        for i, (x, c, r) in enumerate(ROWS) for j, y in enumerate((c, r))
    ])  # fmt: skip
    ours = score(cands, str(policy), str(reference), ScoringConfig(token_budget=64))["logp_ref"]
    assert ours[0::2] == pytest.approx(trl_chosen, abs=1e-4)
    assert ours[1::2] == pytest.approx(trl_rejected, abs=1e-4)


# The TRL internals the DPO recipe (icr_data/commands/train.py) overrides, each with the leading
# parameters it is called with: a TRL release that renames, drops or reorders one fails here with
# the internal's name and the TRL version (why pyproject.toml pins TRL's minor: docs/training.md).
RECIPE_INTERNALS = {
    # the rows arrive tokenized by the scorer's encoder: TRL's tokenizing is skipped
    "_prepare_dataset": ("dataset", "processing_class", "args", "dataset_name"),
    # transformers' Trainer's (TRL's DPOTrainer overrides it too): a checkpoint that cannot be
    # written is removed whole and training goes on
    "_save_checkpoint": ("model", "trial"),
}
# Not the recipe's: docs/export.md shows TRL users this override to train on exported reference
# log-probs (tests/test_train.py, test_ref_logps_export_is_what_trl_computes, runs it).
EXPORT_DOC_INTERNALS = {"_precompute_ref_logps": ("dataset", "name", "batch_size")}


def _signature_problem(name: str, params: tuple) -> str | None:
    import inspect

    import transformers
    import trl
    from trl import DPOTrainer

    where = f"TRL {trl.__version__} (transformers {transformers.__version__})"
    fn = getattr(DPOTrainer, name, None)
    if not callable(fn):
        return f"{where}: DPOTrainer.{name}, a private method relied on, is gone"
    have = [p for p in inspect.signature(fn).parameters if p != "self"]
    if have[: len(params)] != list(params):
        return (f"{where}: DPOTrainer.{name} takes ({', '.join(have)}); relied on: "
                f"({', '.join(params)}, ...)")  # fmt: skip
    return None


@pytest.mark.parametrize("name", [*RECIPE_INTERNALS, *EXPORT_DOC_INTERNALS])
def test_each_trl_internal_relied_on_is_the_installed_trls(name):
    params = {**RECIPE_INTERNALS, **EXPORT_DOC_INTERNALS}[name]
    problem = _signature_problem(name, params)
    assert problem is None, problem


def test_the_recipe_overrides_only_the_trl_surface_it_checks():
    """Every DPOTrainer method RecipeTrainer overrides is in train.TRL_SURFACE (which training
    checks at start), its private ones are RECIPE_INTERNALS above, and the installed TRL has them
    all, with the policy forward's per-token log_probs."""
    from trl import DPOTrainer

    from icr_data.commands import train

    problems = train.trl_surface_problems()
    assert problems == [], "\n".join(problems)
    surface = {name: (params, private) for name, params, private, _ in train.TRL_SURFACE}
    assert {n: p for n, (p, private) in surface.items() if private} == RECIPE_INTERNALS
    cls = train._trainer_class()
    overridden = {n for n in vars(cls) if hasattr(DPOTrainer, n) and not n.startswith("__")}
    assert overridden == set(surface), "a DPOTrainer method is overridden but not in TRL_SURFACE"


def test_a_changed_trl_internal_is_named_before_training(monkeypatch):
    import trl
    from trl import DPOTrainer

    from icr_data.commands import train

    def renamed(self, dataset, processing_class, args, name, extra=None):
        return dataset

    monkeypatch.setattr(DPOTrainer, "_prepare_dataset", renamed)
    monkeypatch.setattr(DPOTrainer, "_save_checkpoint", None)
    problems = train.trl_surface_problems()
    assert len(problems) == 2 and all(f"TRL {trl.__version__}" in p for p in problems)
    assert "DPOTrainer._prepare_dataset" in problems[0]
    assert "takes (dataset, processing_class, args, name, extra)" in problems[0]
    assert "DPOTrainer._save_checkpoint" in problems[1] and "is gone" in problems[1]
    with pytest.raises(train.TrainError, match=r"this TRL changed what it relies on:\n  TRL "):
        train._trl_version()


def test_a_trl_attribute_relied_on_is_checked(monkeypatch):
    """train.TRL_ATTRIBUTES: TRL's DeepSpeed engine of its reference pass, which the recipe
    destroys after the pass (ZeRO-3), is named when a TRL no longer sets it."""
    import trl
    from trl import DPOTrainer

    from icr_data.commands import train

    assert [a[0] for a in train.TRL_ATTRIBUTES] == ["_precompute_engine"]

    def init(self, *args, **kwargs):  # a TRL that keeps its engine elsewhere
        self.reference_engine = None

    monkeypatch.setattr(DPOTrainer, "__init__", init)
    (problem,) = train.trl_surface_problems()
    assert (
        problem.startswith(f"TRL {trl.__version__}") and "DPOTrainer._precompute_engine" in problem
    )
    assert problem.endswith("is no longer set in DPOTrainer.__init__")
