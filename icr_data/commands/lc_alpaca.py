"""AlpacaEval 2's length-controlled win rate, computed as `alpaca_eval.metrics.glm_winrate` does.

    from icr_data.commands.lc_alpaca import glm_lc, read_difficulty
    glm_lc(win, candidate_chars, baseline_chars)                        # length_controlled_minimal
    glm_lc(win, cand, base, prompt_ids, read_difficulty("instruction_difficulty.csv"))  # + noreg
    glm_lc(win, cand, base, prompt_ids, read_difficulty("df_gamed.csv"))  # length_controlled_v1

An eval recipe asks for it with `lc: alpaca_eval` (evaluation.py; winrates.summarize puts it
beside the one-pair `lc_win_rate`, which stays the default). Written from the published code of
alpaca_eval 0.6.6 (src/alpaca_eval/metrics/glm_winrate.py) and checked against that very function
in tests/test_paper_eval.py (alpaca-eval is a test-only dependency):

- the preference is the candidate's win (1 win, 0.5 tie, 0 loss; a two-order LLM verdict may be
  0.25 or 0.75), a soft label: every row enters twice, as a win weighted p and as a loss weighted
  1 - p;
- the length term is tanh(delta / std(delta)), delta = chars(baseline) - chars(candidate) (their
  output_1 - output_2) and std the *sample* standard deviation over every row of the language;
- the design has no intercept: the length term, the instruction difficulty (when a difficulty
  table is given) and a model term that is 1 for the candidate's rows;
- the fit is an L1-penalised logistic regression (liblinear, random_state 123), its C chosen from
  logspace(-4, 4, 10) by 5-fold cross-validation grouped by row, scored by the soft log-loss;
- given AlpacaEval's `df_gamed.csv` (annotations of two length-gamed baselines, with their
  difficulty), those rows join the fit at weight 0.2 / 2 with the model term 0 (its
  `regularize_to_baseline_lambda`): the length and difficulty slopes are anchored by them;
- LC is the predicted win rate against the baseline at equal length: the mean over the rows of
  sigmoid(model weight + difficulty weight * difficulty), with its standard error of the mean.
AlpacaEval reports percentages; this module returns fractions, like the rest of an eval record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from icr_data.base.errors import IcrError

GAMED_LAMBDA = 0.2
"""AlpacaEval's regularize_to_baseline_lambda (length_controlled_v1); two gamed baselines share it."""
N_SPLITS = 5
CS = 10
"""LogisticRegressionCV's default grid: C in logspace(-4, 4, 10)."""
SEED = 123


class LcError(IcrError):
    """A difficulty table or annotation set AlpacaEval's LC cannot use; the message names it."""


@dataclass
class Difficulty:
    """Instruction difficulty per prompt_id and, from df_gamed.csv, the gamed baselines' rows
    (preference in [0, 1], std_delta_len, instruction_difficulty) that regularise the fit."""

    by_prompt: dict[str, float]
    gamed: list[tuple[float, float, float]] | None = None
    source: str = ""

    @property
    def glm(self) -> str:
        return "length_controlled_v1" if self.gamed else "length_controlled_noreg"


def alpaca_prompt_id(index: int) -> str:
    """AlpacaEval's instruction index (0-804) as an X-AlpacaEval prompt_id (its id: index + 1)."""
    return str(int(index) + 1)


def read_difficulty(path: str | Path) -> Difficulty:
    """A difficulty table: CSV, JSONL or Parquet with `instruction_difficulty` and either
    `prompt_id`, or AlpacaEval's instruction `index` (its instruction_difficulty.csv, whose index
    is the first, unnamed column, or its df_gamed.csv, which also holds the gamed baselines)."""
    import polars as pl

    path = Path(path)
    where = f"lc_difficulty {path}"
    if not path.is_file():
        raise LcError(f"{where}: not found")
    try:
        if path.suffix == ".csv":
            df = pl.read_csv(path)
        elif path.suffix == ".parquet":
            df = pl.read_parquet(path)
        elif path.suffix in (".jsonl", ".json"):
            df = pl.read_ndjson(path)
        else:
            raise LcError(f"{where}: give a .csv, .jsonl or .parquet file")
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as e:
        raise LcError(f"{where}: unreadable ({str(e).splitlines()[0]})") from None
    first = df.columns[0] if df.columns else ""
    if "index" not in df.columns and first in ("", "Unnamed: 0"):
        df = df.rename({first: "index"})
    key = "prompt_id" if "prompt_id" in df.columns else "index" if "index" in df.columns else None
    if key is None or "instruction_difficulty" not in df.columns:
        raise LcError(f"{where}: needs columns instruction_difficulty and prompt_id (or "
                      f"AlpacaEval's index); has {', '.join(df.columns)}")  # fmt: skip
    by_prompt: dict[str, float] = {}
    for n, (k, v) in enumerate(zip(df[key].to_list(), df["instruction_difficulty"].to_list()), 2):
        try:
            value = float(v)
            pid = alpaca_prompt_id(k) if key == "index" else str(k)
        except (TypeError, ValueError):
            value = math.nan
        if k is None or not math.isfinite(value):
            raise LcError(f"{where}: row {n}: {key} {k} has no finite difficulty ({str(v)[:40]!r})")
        by_prompt.setdefault(pid, value)  # an instruction's first row, as AlpacaEval reads it
    gamed = None
    if {"preference", "std_delta_len", "not_gamed_baseline"} <= set(df.columns):
        rows = df.filter(~pl.col("not_gamed_baseline").cast(pl.Boolean))
        gamed = list(zip(*(rows[c].cast(pl.Float64).to_list()
                           for c in ("preference", "std_delta_len", "instruction_difficulty"))))  # fmt: skip
    return Difficulty(by_prompt, gamed or None, str(path))


def difficulty_for(path: str | Path, prompt_ids: list[str]) -> Difficulty:
    """read_difficulty, refused unless it covers every prompt (an eval checks it first)."""
    table = read_difficulty(path)
    missing = sorted(set(prompt_ids) - set(table.by_prompt), key=lambda p: (len(p), p))
    if missing:
        raise LcError(f"lc_difficulty {path}: no difficulty for prompt_id {missing[0]!r} "
                      f"({len(missing)} prompts missing)")  # fmt: skip
    return table


def _legacy_penalty() -> bool:
    """scikit-learn before 1.8 names the L1 penalty `penalty="l1"`; 1.8 on, `l1_ratios=(1,)`."""
    import sklearn

    return tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 8)


def _soft_logloss(y, q, true_prob, true_sample_weight=None):
    """AlpacaEval's logloss_continuous: the log-loss of the soft labels behind the 0/1 copies."""
    import numpy as np

    p = np.where(y == 1, true_prob, 1 - true_prob)
    q = np.clip(q, 1e-15, 1 - 1e-15)
    loss = p * np.log(q) + (1 - p) * np.log(1 - q)
    return -np.mean(loss if true_sample_weight is None else loss * true_sample_weight)


def fit_soft_cv(x, p, weight=None):
    """The L1 logistic fit of soft labels `p` on design `x` (no intercept), C by 5-fold CV
    grouped by row on the soft log-loss, refitted on every row: AlpacaEval's
    fit_LogisticRegressionCV, with scikit-learn's LogisticRegressionCV configured as it is
    (metadata routing on only inside this call)."""
    import numpy as np
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    n = len(p)
    xd = np.vstack([x, x])
    yd = np.r_[np.ones(n), np.zeros(n)]
    prob = np.r_[p, 1 - p]  # each copy's weight: the probability of its label
    true_w = None if weight is None else np.r_[weight, weight]
    kw = {"Cs": CS, "cv": GroupKFold(n_splits=N_SPLITS), "solver": "liblinear",
          "fit_intercept": False, "random_state": SEED, "dual": False}  # fmt: skip
    kw.update({"penalty": "l1"} if _legacy_penalty() else {"l1_ratios": (1.0,)})
    if "use_legacy_attributes" in LogisticRegressionCV().get_params():  # 1.8 on: no warning
        kw["use_legacy_attributes"] = False
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(_soft_logloss, response_method="predict_proba",
                             greater_is_better=False)  # fmt: skip
        scorer = scorer.set_score_request(true_sample_weight=True, true_prob=True)
        model = LogisticRegressionCV(scoring=scorer, **kw)
        model.set_fit_request(sample_weight=True)
        model.fit(xd, yd, sample_weight=prob if true_w is None else prob * true_w,
                  groups=np.r_[np.arange(n), np.arange(n)], true_prob=prob,
                  true_sample_weight=true_w)  # fmt: skip
    return model, float(np.ravel(model.C_)[0])


def glm_lc(win, candidate_chars, baseline_chars, prompt_ids=None,
           difficulty: Difficulty | None = None) -> dict | None:  # fmt: skip
    """AlpacaEval 2's LC of one candidate against one baseline on one set of prompts (one
    language): {"lc", "se", "glm", "weights", "C"}; None with fewer than 5 judged rows (its
    5-fold cross-validation needs them). A win of None (no verdict) stays out of the fit but in
    the mean, as AlpacaEval keeps a row without preference in its prediction."""
    import numpy as np

    y = np.array([np.nan if w is None else float(w) for w in win], dtype=np.float64)
    base, cand = (np.asarray(v, dtype=np.float64) for v in (baseline_chars, candidate_chars))
    delta = base - cand  # AlpacaEval's len(output_1) - len(output_2)
    if np.isfinite(y).sum() < N_SPLITS or len(y) < 2:
        return None
    sd = delta.std(ddof=1)
    length = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    cols = [length]
    if difficulty is not None:
        missing = [p for p in prompt_ids if p not in difficulty.by_prompt]
        if missing:
            raise LcError(f"lc_difficulty {difficulty.source}: no difficulty for prompt_id "
                          f"{missing[0]!r} ({len(missing)} prompts missing)")  # fmt: skip
        cols.append(np.array([difficulty.by_prompt[p] for p in prompt_ids]))
    cols.append(np.ones_like(length))  # the model term: 1 for the candidate's rows
    x = np.column_stack(cols)
    weight = None
    if difficulty is not None and difficulty.gamed:
        g = np.array(difficulty.gamed, dtype=np.float64)  # preference, std_delta_len, difficulty
        xg = np.column_stack([np.tanh(g[:, 1]), g[:, 2], np.zeros(len(g))])
        x_fit, y_fit = np.vstack([xg, x]), np.r_[g[:, 0], y]  # gamed rows first, as AlpacaEval
        weight = np.r_[np.full(len(g), GAMED_LAMBDA / 2), np.ones(len(y))]
    else:
        x_fit, y_fit = x, y
    keep = np.isfinite(y_fit)
    model, c = fit_soft_cv(x_fit[keep], y_fit[keep], None if weight is None else weight[keep])
    at_equal_length = x.copy()
    at_equal_length[:, 0] = 0.0
    p = model.predict_proba(at_equal_length)[:, 1]
    names = ["length", *(["difficulty"] if difficulty is not None else []), "model"]
    return {"lc": float(p.mean()), "se": float(p.std(ddof=1) / math.sqrt(len(p))),
            "glm": difficulty.glm if difficulty is not None else "length_controlled_minimal",
            "weights": dict(zip(names, map(float, model.coef_[0]))), "C": c}  # fmt: skip
