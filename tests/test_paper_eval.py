"""The paper's evaluation, exactly (issue 30, section 2): AlpacaEval 2's length-controlled win rate
checked against alpaca_eval's own function, the one-pair LC finite where length decides every
verdict, the X-AlpacaEval loader on files in the Hub's layout, the paper preset, and the judge on an
OpenAI-compatible server (a stub on 127.0.0.1 started here).

    pytest tests/test_paper_eval.py
"""

from __future__ import annotations

import math
import warnings
from unittest import mock

import numpy as np
import pytest

from icr_data.commands.lc_alpaca import LcError, glm_lc, read_difficulty
from icr_data.commands.winrates import lc_fit, summarize


# ------------------------------------------------------------------ AlpacaEval 2's LC, exactly
def _annotations(n=80, seed=0):
    """Synthetic verdicts with a planted length bias and difficulty: lengths, the candidate's
    win (ties 0.5, split verdicts 0.25, two without a verdict) and each instruction's
    difficulty, indexed as AlpacaEval indexes its 805 instructions."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 1, n)
    base = rng.integers(200, 1500, n)
    cand = np.maximum(base + rng.integers(-600, 900, n), 1)
    z = 0.3 + 1.2 * np.tanh((cand - base) / np.std(cand - base, ddof=1)) - 0.8 * difficulty
    win = [float(w) for w in rng.random(n) < 1 / (1 + np.exp(-z))]
    win[:5] = [0.5] * 5
    win[5:8] = [0.25] * 3
    win[8:10] = [None, None]
    return base, cand, win, difficulty


def _alpaca_eval(base, cand, win, df_gamed, glm_name):
    """alpaca_eval's get_length_controlled_winrate on the same verdicts, its Hub download of
    df_gamed.csv pointed at the file the test wrote (no network)."""
    pd = pytest.importorskip("pandas")
    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
    n = len(win)
    pref = [np.nan if w is None else (0.0 if w == 0.5 else 1.0 + w) for w in win]  # 0: a tie
    ann = pd.DataFrame({"instruction": [f"q{i}" for i in range(n)],
                        "output_1": ["x" * int(b) for b in base],  # the baseline
                        "output_2": ["y" * int(c) for c in cand],  # the model
                        "generator_1": "baseline", "generator_2": "candidate", "annotator": "judge",
                        "preference": pref, "index": range(n)})  # fmt: skip
    hub = mock.patch.object(glm, "hf_hub_download", return_value=str(df_gamed))
    with hub, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = glm.get_length_controlled_winrate(ann, glm_name=glm_name, save_weights_dir=None)
    return m["length_controlled_winrate"] / 100, m["lc_standard_error"] / 100


def _write_tables(tmp_path, difficulty, seed=1):
    """AlpacaEval's two tables in their layouts: instruction_difficulty.csv (index, difficulty)
    and df_gamed.csv (two length-gamed baselines' annotations with difficulty)."""
    import polars as pl

    rng = np.random.default_rng(seed)
    n = len(difficulty)
    pl.DataFrame({"": range(n), "instruction_difficulty": difficulty}).write_csv(
        tmp_path / "instruction_difficulty.csv"
    )
    pl.DataFrame({"model": ["gamed_long"] * n + ["gamed_short"] * n,
                  "index": [*range(n), *range(n)],
                  "preference": np.r_[rng.random(n), rng.random(n)],
                  "std_delta_len": np.r_[-2 * rng.random(n), 2 * rng.random(n)],
                  "instruction_difficulty": np.r_[difficulty, difficulty],
                  "not_gamed_baseline": [False] * (2 * n)}).write_csv(tmp_path / "df_gamed.csv")  # fmt: skip
    return tmp_path / "instruction_difficulty.csv", tmp_path / "df_gamed.csv"


def test_alpaca_eval_lc_equals_alpaca_evals_own_function(tmp_path):
    base, cand, win, difficulty = _annotations()
    table, gamed = _write_tables(tmp_path, difficulty)
    ids = [str(i + 1) for i in range(len(win))]  # X-AlpacaEval's id: AlpacaEval's index + 1
    cases = {
        "length_controlled_minimal": glm_lc(win, cand, base),
        "length_controlled_noreg": glm_lc(win, cand, base, ids, read_difficulty(table)),
        "length_controlled_v1": glm_lc(win, cand, base, ids, read_difficulty(gamed)),
    }
    seen = set()
    for name, ours in cases.items():
        lc, se = _alpaca_eval(base, cand, win, gamed, name)
        assert ours["glm"] == name
        assert ours["lc"] == pytest.approx(lc, abs=1e-9), name
        assert ours["se"] == pytest.approx(se, abs=1e-9), name
        seen.add(round(ours["lc"], 6))
    assert len(seen) == 3  # difficulty and the gamed baselines each move the number
    # the planted length bias: a longer candidate wins more (AlpacaEval's sign: baseline - model)
    assert cases["length_controlled_noreg"]["weights"]["length"] < -0.5
    assert cases["length_controlled_noreg"]["weights"]["difficulty"] < 0


def test_difficulty_table_errors_name_the_file_and_row(tmp_path):
    (tmp_path / "d.csv").write_text("prompt_id,instruction_difficulty\n1,0.5\n2,oops\n")
    with pytest.raises(LcError, match=r"d.csv: row 3: prompt_id 2 has no finite difficulty"):
        read_difficulty(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("prompt_id,hardness\n1,0.5\n")
    with pytest.raises(LcError, match=r"needs columns instruction_difficulty"):
        read_difficulty(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text("prompt_id,instruction_difficulty\n1,0.5\n")
    base, cand, win, _ = _annotations(n=12)
    ids, table = [str(i + 1) for i in range(12)], read_difficulty(tmp_path / "f.csv")
    with pytest.raises(LcError, match=r"no difficulty for prompt_id '2' \(11 prompts missing\)"):
        glm_lc(win, cand, base, ids, table)


# ----------------------------------------------------- the one-pair LC where length decides
def test_one_pair_lc_stays_finite_and_flagged_where_length_decides_every_verdict():
    rng = np.random.default_rng(1)
    d = rng.normal(0, 300, 805)  # X-AlpacaEval's size: the unpenalised Newton fit overflowed here
    for threshold, expect in ((50, lambda lc: lc < 1e-3), (-50, lambda lc: lc > 1 - 1e-3)):
        win = [float(v > threshold) for v in d]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow, no division by zero
            lc, b1 = lc_fit(win, d)
        assert math.isfinite(lc) and math.isfinite(b1) and expect(lc)
        rows = [{"judge": "reward:r", "kind": "reward", "lang": "de", "win": w, "verdict_ab": "x",
                 "verdict_ba": None, "consistent": None, "candidate_chars": 500 + v,
                 "baseline_chars": 500, "candidate_lid": "de", "baseline_lid": "de"}
                for w, v in zip(win, d)]  # fmt: skip
        r = summarize(rows)["reward:r"]["de"]
        assert r["length_decides"] is True and r["lc_win_rate"] == pytest.approx(lc)


def test_the_length_penalty_leaves_an_identified_fit_alone():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    d = rng.normal(30, 200, 300)
    x = np.tanh(d / d.std())
    win = (rng.random(300) < 1 / (1 + np.exp(-(-0.4 + 1.5 * x)))).astype(float)
    lc, b1 = lc_fit(win, d)
    ref = LogisticRegression(C=math.inf, tol=1e-12, max_iter=10000).fit(x[:, None], win)
    assert lc == pytest.approx(1 / (1 + math.exp(-ref.intercept_[0])), abs=1e-5)
    assert b1 == pytest.approx(ref.coef_[0][0], rel=1e-4)
    rows = [{"judge": "j", "kind": "llm", "lang": "fr", "win": w, "verdict_ab": "A",
             "verdict_ba": "B", "consistent": True, "candidate_chars": 400 + v,
             "baseline_chars": 400, "candidate_lid": "fr", "baseline_lid": "fr", "prompt_id": str(i)}
            for i, (w, v) in enumerate(zip(win, d))]  # fmt: skip
    r = summarize(rows)["j"]["fr"]
    assert r["length_decides"] is False and "lc_alpaca_eval" not in r
    ae = summarize(rows, lc="alpaca_eval")["j"]["fr"]
    direct = glm_lc(list(win), [400 + v for v in d], [400] * len(d))
    assert ae["lc_alpaca_eval"] == pytest.approx(direct["lc"], abs=1e-12)
    assert ae["lc_win_rate"] == r["lc_win_rate"]  # the one-pair LC keeps its name and value
