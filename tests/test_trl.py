"""Our log-probs equal TRL's DPO reference log-probs for the same (prompt, response) rows.

TRL is handed the rows in its standard (text) format: prompt = the chat template's rendering of
[user: x] with the generation prompt, chosen/rejected = the response followed by the end-of-turn
token, which is exactly the span our scorer counts. (TRL's conversational format would also
count what the template emits after the end-of-turn token, e.g. ChatML's newline.)
"""

import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from icr_data.stages.chat import ChatEncoder, render_prompt  # noqa: E402
from icr_data.base.config import ScoringConfig  # noqa: E402
from icr_data.stages.stages import score_candidates as score  # noqa: E402

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
