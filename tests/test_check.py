"""check-reward: per-language accuracy of an implicit reward on labelled pairs; shipped sets."""

import json
from pathlib import Path

import pytest
import yaml

from icr_data.base.config import ScoringConfig
from icr_data.commands.check import load_labelled, summarize, wilson
from icr_data.stages.prompts import PromptError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "data"

PAIRS = [
    ("p1", "en", "Say hello.", "Hello there, friend!", "No."),
    ("p1", "fr", "Dis bonjour.", "Bonjour, mon ami !", "Non."),
    ("p2", "en", "Name a colour.", "Blue is a colour.", "Whatever, go away."),
    ("p2", "fr", "Nomme une couleur.", "Le bleu est une couleur.", "Peu importe, va-t'en."),
    ("p3", "en", "Count to three.", "One, two, three.", "Seven."),
    ("p3", "fr", "Compte jusqu'à trois.", "Un, deux, trois.", "Sept."),
]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(dict(zip(("prompt_id", "lang", "instruction", "chosen", "rejected"), r)),
                                       ensure_ascii=False) + "\n" for r in rows))  # fmt: skip
    return path


def test_shipped_seed_and_check_sets_validate():
    seed = load_labelled(DATA / "seed_pairs_en.jsonl", mode="native")
    assert len(seed) >= 48 and {r["lang"] for r in seed} == {"en"}
    check = load_labelled(DATA / "check_pairs.jsonl")  # cross-lingual: English rows required
    langs = {}
    for r in check:
        langs.setdefault(r["prompt_id"], set()).add(r["lang"])
    assert all(v == {"en", "es", "de", "fr", "ru"} for v in langs.values()) and len(langs) >= 16
    held_out = {r["instruction"] for r in seed} & {r["instruction"] for r in check}
    assert not held_out  # the check set is held out from the seed set


def test_bad_labelled_rows_name_the_row(tmp_path):
    with pytest.raises(PromptError, match="row 2 .*'rejected' must be a non-empty string"):
        load_labelled(_write(tmp_path / "a.jsonl", [PAIRS[0], ("p1", "fr", "Dis.", "Oui.", " ")]))
    with pytest.raises(PromptError, match="row 1 .*identical"):
        load_labelled(_write(tmp_path / "b.jsonl", [("p1", "en", "x", "same", "same")]))
    with pytest.raises(PromptError, match="row 1: prompt_id p9 \\(fr\\) has no English row"):
        load_labelled(_write(tmp_path / "c.jsonl", [("p9", "fr", "x", "a", "b")]))
    assert load_labelled(_write(tmp_path / "d.jsonl", [("p9", "fr", "x", "a", "b")]), mode="native")
    with pytest.raises(PromptError, match="--pairs file not found"):
        load_labelled(tmp_path / "none.jsonl")


def test_summary_numbers():
    rows = [{"lang": "en", "chosen": "a" * 10, "rejected": "b" * 10}] * 3 + [
        {"lang": "en", "chosen": "a" * 10, "rejected": "b" * 20}
    ]
    out = summarize(rows, [1.0, 2.0, 0.0, -1.0])["en"]
    assert out["accuracy"] == 0.5 and out["ties"] == 1 and out["mean_margin"] == 0.5
    assert out["by_length_difference"]["similar"] == {"pairs": 3, "accuracy": pytest.approx(2 / 3)}
    assert out["by_length_difference"]["chosen shorter"] == {"pairs": 1, "accuracy": 0.0}
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


def test_reward_trained_on_the_pairs_ranks_them_all_and_the_swapped_pair_none(tiny_pair, tmp_path):
    from icr_data.base.train_config import load_train_config
    from icr_data.commands.check import check_reward
    from icr_data.commands.train import train

    policy, _ = tiny_pair
    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)
    cfg = {"data": {"source": str(pairs)}, "model": str(policy), "output_dir": str(tmp_path / "dpo"),
           "finetune": "full", "learning_rate": 1e-3, "batch_size": 6, "grad_accum": 1,
           "warmup_ratio": 0.0, "max_steps": 30, "beta": 0.1}  # fmt: skip
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(cfg))
    train(load_train_config(tmp_path / "dpo.yaml"))
    native = ScoringConfig(mode="native", token_budget=256)
    good = check_reward(str(tmp_path / "dpo"), str(policy), pairs, native)["languages"]
    assert {lang: r["accuracy"] for lang, r in good.items()} == {"en": 1.0, "fr": 1.0}
    assert all(r["mean_margin"] > 0 and r["pairs"] == 3 for r in good.values())
    bad = check_reward(str(policy), str(tmp_path / "dpo"), pairs, native)["languages"]
    assert {lang: r["accuracy"] for lang, r in bad.items()} == {"en": 0.0, "fr": 0.0}
    assert bad["fr"]["mean_margin"] == pytest.approx(-good["fr"]["mean_margin"], abs=1e-9)
    # cross-lingual mode scores the French responses under the English instruction + directive
    cross = check_reward(str(tmp_path / "dpo"), str(policy), pairs, ScoringConfig(token_budget=256))
    assert cross["languages"]["en"]["mean_margin"] == pytest.approx(
        good["en"]["mean_margin"], abs=1e-4
    )
    assert cross["languages"]["fr"]["mean_margin"] != pytest.approx(
        good["fr"]["mean_margin"], abs=1e-2
    )


def test_kendall_tau_and_mode_agreement():
    from icr_data.stages.agreement import kendall_tau, mode_agreement

    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1], [1]) is None
    rows = [{"prompt_id": p, "lang": "de"} for p in ("a", "a", "b", "b")]
    out = mode_agreement(rows, [1.0, 0.0, 1.0, 0.0], [2.0, 1.0, 0.0, 1.0])["de"]
    half = 1.96 * 2**0.5 / 2**0.5  # 1.96 * sd / sqrt(prompts)
    assert out == {"prompts": 2, "mean_tau": 0.0, "sd_tau": pytest.approx(2**0.5),
                   "ci95": pytest.approx([-half, half]), "likely_noise": True}  # fmt: skip


def test_a_language_whose_interval_includes_chance_is_flagged():
    rows = [{"lang": "sw", "chosen": "a", "rejected": "b"}] * 6
    assert summarize(rows, [1.0, -1.0, 1.0, 1.0, -1.0, 1.0])["sw"]["includes_chance"]
    assert not summarize(rows * 5, [1.0] * 30)["sw"]["includes_chance"]


def test_agreement_between_modes_on_the_tiny_pair(tiny_pair, tmp_path):
    from icr_data.commands.check import check_reward

    policy, reference = tiny_pair
    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)
    report = check_reward(str(policy), str(reference), pairs, ScoringConfig(token_budget=256),
                          agreement=True)  # fmt: skip
    agree = report["agreement"]
    assert agree["modes"] == ["cross_lingual", "native"]
    # English rows get no directive: the same scoring prompt in both modes, the same ranking
    assert agree["languages"]["en"] == {"prompts": 3, "mean_tau": 1.0, "sd_tau": 0.0,
                                        "ci95": [1.0, 1.0], "likely_noise": False}  # fmt: skip
    assert agree["languages"]["fr"]["prompts"] == 3
