"""Evaluation: win rates that mean what they say, per language, tied to the data that trained the
candidate."""

import json
import math
import random
from pathlib import Path

import pytest

from icr_data.commands.evaluation import EvalError, lineage, load_eval
from icr_data.commands.winrates import lc_win_rate, llm_win, normalise, parse_verdict, summarize
from icr_data.store import store

ROOT = Path(__file__).resolve().parents[1]


def _row(judge, lang, win, d=0, ab="A", ba="B", kind="llm", consistent=None):
    return {"judge": judge, "kind": kind, "lang": lang, "win": win, "verdict_ab": ab,
            "verdict_ba": ba, "consistent": consistent, "candidate_chars": 100 + d,
            "baseline_chars": 100, "candidate_lid": lang, "baseline_lid": "en"}  # fmt: skip


def test_lc_recovers_a_planted_no_length_win_rate_and_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = random.Random(0)
    b0, b1 = math.log(0.3 / 0.7), 2.0  # without a length difference the candidate wins 30%
    d = [rng.gauss(40, 120) for _ in range(20000)]
    sd = (sum((x - sum(d) / len(d)) ** 2 for x in d) / len(d)) ** 0.5
    x = [math.tanh(v / sd) for v in d]
    win = [float(rng.random() < 1 / (1 + math.exp(-(b0 + b1 * t)))) for t in x]
    ours = lc_win_rate(win, d)
    assert ours == pytest.approx(0.3, abs=0.015)
    assert sum(win) / len(win) > 0.4  # the raw win rate is inflated by the length bias
    fit = LogisticRegression(C=math.inf, tol=1e-10, max_iter=10000).fit([[t] for t in x], win)
    assert ours == pytest.approx(1 / (1 + math.exp(-fit.intercept_[0])), abs=1e-3)


def test_a_judge_that_prefers_the_first_answer_gives_exactly_half_and_no_consistency():
    rows = []
    for i in range(40):
        win, consistent = llm_win("A", "A")  # candidate first, then candidate second: both "A"
        rows.append(_row("llm:j", "de", win, d=i - 20, ab="A", ba="A", consistent=consistent))
    r = summarize(rows)["llm:j"]["de"]
    assert r["win_rate"] == 0.5 and r["position_consistency"] == 0.0 and r["ties"] == 40


def test_a_judge_that_prefers_the_longer_answer_is_length_controlled_to_about_half():
    rng = random.Random(1)
    rows = []
    for _ in range(400):
        d = rng.randint(-60, 240)  # the candidate is usually the longer one
        win = 1.0 if d > 0 else 0.0 if d < 0 else 0.5  # longer wins; equal length: a tie
        rows.append(_row("reward:r", "es", win, d=d, kind="reward"))
    r = summarize(rows)["reward:r"]["es"]
    assert r["win_rate"] > 0.75 and abs(r["lc_win_rate"] - 0.5) < 0.05 and r["length_decides"]


def test_verdicts_parse_and_unparseable_and_ties_are_counted_exactly():
    assert [parse_verdict(t) for t in ("A", "b", "Answer B is better.\nB", "It's a tie.",
                                        "TIE", "Neither", "", "Answer A ... final: B")] == [
        "A", "B", "B", "tie", "tie", None, None, "B"]  # fmt: skip
    cases = [("A", "B"), ("tie", "tie"), (None, "A"), (None, None), ("B", None)]
    rows = []
    for ab, ba in cases:
        win, consistent = llm_win(ab, ba)
        rows.append(_row("llm:j", "fr", win, ab=ab, ba=ba, consistent=consistent))
    r = summarize(rows)["llm:j"]["fr"]
    assert r["unparseable"] == 4 and r["judged"] == 4 and r["ties"] == 1
    assert [x["win"] for x in rows] == [1.0, 0.5, 0.0, None, 0.0]
    assert r["win_rate"] == pytest.approx((1.0 + 0.5 + 0.0 + 0.0) / 4)
    assert r["position_consistency"] == 1.0  # both orders parsed: (A, B) and (tie, tie) agree


def test_decontamination_key():
    seen = {normalise("Name three fruits.")}
    assert normalise("Name three fruits.") in seen
    assert normalise("  name THREE fruits!! ") in seen
    assert normalise("Name three vegetables.") not in seen


def test_lineage_names_the_version_a_model_trained_on():
    record = {"round": 2, "data": {"dataset": "demo", "version": "v3", "source": "/x/demo/v3",
                                   "manifest_sha256": "ab"},
              "rounds": [{"round": 1}, {"round": 2, "reward": {"policy": {"name": "p"}}}]}  # fmt: skip
    assert lineage(record) == {"dataset": "demo", "version": "v3", "source": "v3",
                               "manifest_sha256": "ab", "round": 2,
                               "reward": {"policy": {"name": "p"}}}  # fmt: skip


def _prompts_file(path, langs=("en", "de"), ids=("q1", "q2")):
    texts = {"en": "Name a colour.", "de": "Nenne eine Farbe."}
    with open(path, "w") as f:
        for pid in ids:
            for lang in langs:
                f.write(json.dumps({"prompt_id": pid, "lang": lang,
                                    "instruction": f"{texts[lang]} ({pid})"}) + "\n")  # fmt: skip
    return path


def _recipe(tmp_path, **extra):
    import yaml

    cfg = {"name": "ev", "store": str(tmp_path / "store"), "candidate": "builtin:tiny-policy",
           "baseline": "builtin:tiny-reference", "judges": ["implicit:builtin:tiny-policy,builtin:tiny-reference"],
           "prompts": {"source": str(_prompts_file(tmp_path / "p.jsonl")), "languages": ["en", "de"]},
           "sampling": {"backend": "transformers", "n": 1, "temperature": 0.0, "max_tokens": 6}}  # fmt: skip
    cfg.update(extra)
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "eval.yaml"


def test_bad_eval_recipes_are_one_line_before_any_model(tmp_path):
    with pytest.raises(EvalError, match=r"'bogus:m': unknown .*'judges: bogus'; known: llm"):
        load_eval(_recipe(tmp_path, judges=["bogus:m"]))
    with pytest.raises(EvalError, match=r"'judges: implict' \(did you mean 'implicit'\?\)"):
        load_eval(_recipe(tmp_path, judges=["implict:p,r"]))
    with pytest.raises(EvalError, match="'implicit:p' is not implicit:POLICY,REFERENCE"):
        load_eval(_recipe(tmp_path, judges=["implicit:p"]))
    with pytest.raises(EvalError, match="candidate and baseline are the same model"):
        load_eval(_recipe(tmp_path, baseline="builtin:tiny-policy"))
    from icr_data.commands.evaluation import evaluate

    cfg = load_eval(_recipe(tmp_path), ["prompts.languages=[en, de, ru]"])
    with pytest.raises(EvalError, match="no prompts in ru"):
        evaluate(cfg)


@pytest.fixture
def longer_judge():
    """A judge kind written here, registered for one test: it needs no model, and the longer
    answer wins (what a length-biased judge does)."""
    from icr_data.base.registry import JUDGES
    from icr_data.commands.judges import Judge, verdict

    class LongerJudge(Judge):
        kind = "longer"
        models = ()

        def judge(self, run, rows, cand, base):
            calls.append(len(rows))
            return [verdict(1.0 if len(c) > len(b) else 0.0 if len(c) < len(b) else 0.5,
                            verdict_ab=f"{len(c)} vs {len(b)}") for c, b in zip(cand, base)]  # fmt: skip

    calls = []
    JUDGES.register("longer", LongerJudge)
    yield calls
    JUDGES.unregister("longer")


def test_a_judge_is_one_class_and_one_registry_line(tmp_path, tiny_pair, longer_judge):
    from icr_data.commands.evaluation import evaluate

    policy, reference = (str(p) for p in tiny_pair)
    recipe = _recipe(tmp_path, candidate=policy, baseline=reference, judges=["longer"])
    with pytest.raises(EvalError, match=r"'longer:x' is not longer"):
        load_eval(recipe, ["judges=[longer:x]"])
    cfg = load_eval(recipe, ["prompts.languages=[en]", "prompts.limit=1"])
    path, m = evaluate(cfg)
    assert longer_judge == [1]  # dispatched once, with the one held-out row
    (row,) = store.read_table(path, "rows").to_list()
    assert (row["judge"], row["kind"]) == ("longer", "longer")
    c, b = len(row["candidate"]), len(row["baseline"])
    assert row["verdict_ab"] == f"{c} vs {b}" and row["win"] == (c > b) + 0.5 * (c == b)
    assert row["candidate_reward"] is None and m["judge_template"] is None
    assert m["results"]["longer"]["en"]["prompts"] == 1


def test_unknown_judge_kinds_are_refused_once_unregistered(tmp_path):
    with pytest.raises(EvalError, match=r"unknown .*'judges: longer'"):
        load_eval(_recipe(tmp_path, judges=["longer"]))


def test_eval_end_to_end_on_tiny_models_resumes_and_records(tmp_path, tiny_pair):
    """Answers, an implicit judge and a reward-model judge; a record with rows, card and
    manifest; a reward 'model' that is not a sequence classifier is refused; a second run
    reuses every answer."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from icr_data.commands.evaluation import evaluate, list_evals

    policy, reference = (str(p) for p in tiny_pair)
    rm_dir = tmp_path / "rm"
    base = LlamaForSequenceClassification.from_pretrained(reference, num_labels=1)
    base.config.pad_token_id = 0
    base.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(reference).save_pretrained(rm_dir)
    judges = [f"implicit:{policy},{reference}", f"reward:{rm_dir}"]
    recipe = _recipe(tmp_path, candidate=policy, baseline=reference, judges=judges)
    cfg = load_eval(recipe)
    path, m = evaluate(cfg)
    rows = store.read_table(path, "rows").to_list()
    labels = ["implicit:tiny-policy,tiny-reference", "reward:rm"]  # no folders of this machine
    assert len(rows) == 2 * 4 and {r["judge"] for r in rows} == set(labels)
    for r in rows:
        assert r["win"] == {"candidate": 1.0, "baseline": 0.0, "tie": 0.5}[r["verdict_ab"]]
        assert (r["candidate_reward"] > r["baseline_reward"]) == (r["verdict_ab"] == "candidate")
        assert r["candidate_chars"] == len(r["candidate"])
    implicit = [r for r in rows if r["kind"] == "implicit"]
    assert all(r["baseline_reward"] != 0 for r in implicit)  # the pair really differs
    de = m["results"][labels[0]]["de"]
    assert (
        de["prompts"] == 2
        and de["win_rate"] == sum(r["win"] for r in implicit if r["lang"] == "de") / 2
    )
    assert m["lineage"] is None and m["decontamination"]["flagged"] == 0
    assert "| de | 2 |" in (path / "README.md").read_text()
    assert [e["record"] for e in list_evals(tmp_path / "store")] == ["ev/v1", "ev/v1"]

    import io

    from rich.console import Console

    buf = io.StringIO()
    again, _ = evaluate(cfg, console=Console(file=buf))  # the answers are kept as work
    assert "answers (candidate): 1 shard(s) finished earlier, skipped" in buf.getvalue()
    assert "answers (baseline): 1 shard(s) finished earlier, skipped" in buf.getvalue()
    assert store.read_table(again, "rows")["candidate"] == [r["candidate"] for r in rows]

    import subprocess
    import sys

    cli = [sys.executable, "-m", "icr_data.cli"]
    shown = subprocess.run([*cli, "inspect", str(path)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "eval rows" in shown.stdout and "judged by reward:rm" in shown.stdout
    dry = subprocess.run([*cli, "publish", str(path), "--repo", "me/ev", "--dry-run",
                          str(tmp_path / "dry")], capture_output=True, text=True)  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert any(p.name.endswith(".parquet") for p in (tmp_path / "dry").rglob("*"))

    with pytest.raises(EvalError, match="not a sequence classifier"):
        evaluate(load_eval(recipe, [f"judges=[reward:{policy}]"]))


def test_training_prompts_come_from_the_version_or_file_the_candidate_trained_on(tmp_path):
    from synthetic import tables

    from icr_data.commands.evaluation import EvalConfig, training_prompts
    from icr_data.store.card import render_card

    data, manifest = tables()
    version = store.write_version(tmp_path, "t", data, manifest, render_card)
    seen = training_prompts(EvalConfig(), {"data": {"source": str(version)}})
    assert seen == {normalise(x) for x in ("a-en", "b-en", "a-de", "b-de")}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt_id": "x", "lang": "en", "instruction": "Hello, World!",
                                 "chosen": "a", "rejected": "b"}) + "\n")  # fmt: skip
    assert training_prompts(EvalConfig(), {"data": {"source": str(pairs)}}) == {"hello world"}
    assert training_prompts(EvalConfig(), None) == set()


def test_a_record_of_a_trained_candidate_names_its_version_and_flags_its_prompts(
    build_tiny, tiny_pair, tmp_path
):
    import yaml

    from icr_data.commands.evaluation import evaluate

    policy, reference = (str(p) for p in tiny_pair)
    version = build_tiny(tmp_path / "store", "sampling.max_tokens=8", "prompts.limit=2",
                         "prompts.languages=[en, de]")  # fmt: skip
    config = {"data": {"source": str(version)}, "model": reference, "finetune": "full",
              "learning_rate": 1e-4, "max_steps": 1, "batch_size": 2, "grad_accum": 1,
              "warmup_ratio": 0.0, "output_dir": str(tmp_path / "unused")}  # fmt: skip
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(config))
    held_out = _prompts_file(tmp_path / "held_out.jsonl")
    seen = store.read_table(version, "candidates").select([0]).to_list()[0]
    with open(held_out, "a") as f:  # one training prompt, re-cased and re-punctuated
        f.write(json.dumps({"prompt_id": "seen", "lang": seen["lang"],
                            "instruction": seen["instruction"].upper() + "!!"}) + "\n")  # fmt: skip
    recipe = _recipe(tmp_path, candidate=f"train:{tmp_path / 'dpo.yaml'}", baseline=reference,
                     judges=[f"implicit:{policy},{reference}"],
                     prompts={"source": str(held_out), "languages": ["en", "de"]})  # fmt: skip
    path, m = evaluate(load_eval(recipe))
    assert (m["lineage"]["dataset"], m["lineage"]["version"]) == ("demo-tiny", "v1")
    assert m["decontamination"]["flagged"] == 1 and m["totals"]["prompts"] == 4
    assert "seen" not in store.read_table(path, "rows")["prompt_id"]
    assert "`demo-tiny/v1`" in (path / "README.md").read_text()


def test_previous_names_the_model_a_training_record_trained(tmp_path):
    run = tmp_path / "runs" / "round1"
    run.mkdir(parents=True)
    (run / "training.json").write_text(json.dumps({"output": {"model": "."}}))
    cfg = load_eval(_recipe(tmp_path, candidate="previous", previous="runs/round1"))
    assert cfg.candidate == str(run.resolve())
    with pytest.raises(EvalError, match="'previous' names no training record"):
        load_eval(_recipe(tmp_path, candidate="previous"))
