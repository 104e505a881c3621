"""Win rates of an evaluation, from verdicts: parsing a judge, combining both orders, the win
rate with its standard error, the length-controlled win rate, and the per-language summary.
Pure functions over plain rows (evaluation.py makes the rows), so every number is tested on
synthetic verdicts with planted biases.
"""

from __future__ import annotations

import math
import re
import unicodedata

LENGTH_DECIDES = 50.0
"""|b1| of the LC fit above which the verdicts are (nearly) a step function of length."""
LENGTH_RIDGE = 1e-6
"""The L2 penalty on the LC fit's length slope alone (lc_fit)."""
VERDICT_RE = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)


def normalise(text: str) -> str:
    """Case, punctuation and whitespace folded: the decontamination key."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZ" else ch for ch in text)
    return " ".join(text.split())


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's output (the last one it names), else None."""
    found = VERDICT_RE.findall(text or "")
    if not found:
        return None
    last = found[-1]
    return "tie" if last.lower() == "tie" else last.upper()


def llm_win(verdict_ab: str | None, verdict_ba: str | None) -> tuple[float | None, bool | None]:
    """The candidate's win (1, 0.5 tie, 0) over both orders (candidate first as A, then as B;
    unparseable verdicts left out) and whether the verdict survived the swap (None if either
    order is unparseable)."""
    first = {"A": 1.0, "B": 0.0, "tie": 0.5}.get(verdict_ab) if verdict_ab else None
    second = {"B": 1.0, "A": 0.0, "tie": 0.5}.get(verdict_ba) if verdict_ba else None
    seen = [w for w in (first, second) if w is not None]
    win = sum(seen) / len(seen) if seen else None
    consistent = None if first is None or second is None else first == second
    return win, consistent


def lc_win_rate(win, length_diff, ridge: float = LENGTH_RIDGE) -> float | None:
    """The length-controlled win rate (see lc_fit)."""
    fit = lc_fit(win, length_diff, ridge)
    return None if fit is None else fit[0]


def lc_fit(win, length_diff, ridge: float = LENGTH_RIDGE) -> tuple[float, float] | None:
    """Length-controlled win rate: a logistic fit win ~ sigmoid(b0 + b1 * tanh(d / std(d))),
    d = len(candidate) - len(baseline) in characters, read at zero length difference:
    sigmoid(b0); returns (LC, b1). Ties enter as 0.5 (soft labels). AlpacaEval 2's LC is the
    same idea with more terms (a model term, a length term of this form, an instruction-difficulty
    term, fitted over many models); with one pair of models and no difficulty term this is its
    one-pair reduction (`lc: alpaca_eval` computes its own, lc_alpaca.py).

    The length slope alone carries an L2 penalty, `ridge / 2 * b1**2` on the summed log-loss (a
    normal prior of standard deviation 1 / sqrt(ridge), 1000 by default, on b1): negligible where
    the verdicts identify b1, and what keeps the fit finite where length decides every verdict
    (the data are then separable, the unpenalised b1 is infinite and Newton's steps overflow).
    LC is then only as meaningful as the verdicts at (near) equal length: summarize flags it
    (`length_decides`). Newton steps with a backtracking line search on the penalised loss,
    computed in a form that cannot overflow, so the fit converges on any input."""
    import numpy as np

    y = np.asarray(win, dtype=np.float64)
    d = np.asarray(length_diff, dtype=np.float64)
    if len(y) < 3:  # no statistics on fewer than 3 verdicts
        return None
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    if x.std() == 0 or np.all(y == 1.0) or np.all(y == 0.0):  # nothing to fit: the mean
        return float(y.mean()), 0.0
    design = np.column_stack([np.ones_like(x), x])
    penalty = np.array([0.0, ridge])

    def loss(b):
        z = design @ b
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * penalty @ (b * b))

    b, f = np.zeros(2), loss(np.zeros(2))
    for _ in range(500):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ b)))  # sigmoid, without exp overflow
        grad = design.T @ (p - y) + penalty * b
        hess = design.T @ (design * (p * (1 - p))[:, None]) + np.diag(penalty)
        step = -np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        t = 1.0
        while (new := loss(b + t * step)) > f + 1e-4 * t * (grad @ step) and t > 1e-12:
            t /= 2
        b, f = b + t * step, new
        if np.abs(t * step).max() < 1e-10:
            break
    return float(0.5 * (1.0 + np.tanh(0.5 * b[0]))), float(b[1])


def separable(win, length_diff) -> bool:
    """Length decides every verdict: the candidate's wins (1) and losses (0), both present, lie
    on either side of some length difference (ties and split verdicts left out)."""
    won = [d for w, d in zip(win, length_diff) if w == 1.0]
    lost = [d for w, d in zip(win, length_diff) if w == 0.0]
    return bool(won and lost and (min(won) > max(lost) or max(won) < min(lost)))


def summarize(rows: list[dict], lc: str = "one_pair", difficulty=None) -> dict:
    """Per judge and language: pairs, win rate and its standard error, LC win rate, ties,
    unparseable verdicts, language shares, mean lengths, position consistency. `lc` "alpaca_eval"
    adds AlpacaEval 2's LC (lc_alpaca.glm_lc, with `difficulty` if given) beside the one-pair
    `lc_win_rate`: `lc_alpaca_eval`, its standard error and the GLM's weights."""
    out: dict = {}
    for judge in dict.fromkeys(r["judge"] for r in rows):
        out[judge] = {}
        for lang in dict.fromkeys(r["lang"] for r in rows):
            sel = [r for r in rows if r["judge"] == judge and r["lang"] == lang]
            judged = [r for r in sel if r["win"] is not None]
            wins = [r["win"] for r in judged]
            n = len(wins)
            wr = sum(wins) / n if n else None
            se = math.sqrt(sum((w - wr) ** 2 for w in wins) / (n - 1) / n) if n > 1 else None
            cons = [r["consistent"] for r in sel if r["consistent"] is not None]
            diffs = [r["candidate_chars"] - r["baseline_chars"] for r in judged]
            fit = lc_fit(wins, diffs)

            def share(col, sel=sel, lang=lang):
                return sum(r[col] == lang for r in sel) / len(sel) if sel else None

            out[judge][lang] = {
                "prompts": len(sel), "judged": n, "win_rate": wr, "se": se,
                "lc_win_rate": None if fit is None else fit[0],
                "length_decides": None if fit is None else (separable(wins, diffs)
                                                            or abs(fit[1]) > LENGTH_DECIDES),
                "ties": sum(w == 0.5 for w in wins),
                "unparseable": sum((r["verdict_ab"] is None) + (r["verdict_ba"] is None)
                                   for r in sel if str(r["kind"]).startswith("llm")),
                "candidate_in_language": share("candidate_lid"),
                "baseline_in_language": share("baseline_lid"),
                "candidate_chars": sum(r["candidate_chars"] for r in sel) / len(sel) if sel else None,
                "baseline_chars": sum(r["baseline_chars"] for r in sel) / len(sel) if sel else None,
                "position_consistency": sum(cons) / len(cons) if cons else None,
            }  # fmt: skip
            if lc == "alpaca_eval":
                from icr_data.commands.lc_alpaca import glm_lc

                ae = glm_lc([r["win"] for r in sel], [r["candidate_chars"] for r in sel],
                            [r["baseline_chars"] for r in sel],
                            [r.get("prompt_id") for r in sel], difficulty)  # fmt: skip
                out[judge][lang].update({
                    "lc_alpaca_eval": ae and ae["lc"], "lc_alpaca_eval_se": ae and ae["se"],
                    "lc_alpaca_eval_weights": ae and ae["weights"]})  # fmt: skip
    return out
