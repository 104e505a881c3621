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


def lc_win_rate(win, length_diff, ridge: float = 1e-10) -> float | None:
    """The length-controlled win rate (see lc_fit)."""
    fit = lc_fit(win, length_diff, ridge)
    return None if fit is None else fit[0]


def lc_fit(win, length_diff, ridge: float = 1e-10) -> tuple[float, float] | None:
    """Length-controlled win rate: a logistic fit win ~ sigmoid(b0 + b1 * tanh(d / std(d))),
    d = len(candidate) - len(baseline) in characters, read at zero length difference:
    sigmoid(b0); returns (LC, b1). Ties enter as 0.5 (soft labels). A tiny ridge on b1 keeps the
    fit finite when length decides every verdict (the data are then separable: b1 grows large,
    and LC is only as meaningful as the verdicts at equal length; summarize flags it when
    |b1| > LENGTH_DECIDES). AlpacaEval 2's LC is the same idea with more terms (a model
    term, a length term of this form, an instruction-difficulty term, fitted over many models);
    with one pair of models and no difficulty term this is its one-pair reduction."""
    import numpy as np

    y = np.asarray(win, dtype=np.float64)
    d = np.asarray(length_diff, dtype=np.float64)
    if len(y) < 3:  # no statistics on fewer than 3 verdicts
        return None
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    design = np.column_stack([np.ones_like(x), x])
    b = np.zeros(2)
    penalty = np.diag([0.0, ridge])
    for _ in range(200):
        p = 1 / (1 + np.exp(-(design @ b)))
        grad = design.T @ (y - p) / len(y) - penalty @ b
        hess = design.T @ (design * (p * (1 - p))[:, None]) / len(y) + penalty
        if np.linalg.matrix_rank(hess) < 2:  # no length variation: the intercept alone
            return float(y.mean()), 0.0
        step = np.linalg.solve(hess, grad)
        b = b + step
        if np.abs(step).max() < 1e-12:
            break
    return float(1 / (1 + np.exp(-b[0]))), float(b[1])


def summarize(rows: list[dict]) -> dict:
    """Per judge and language: pairs, win rate and its standard error, LC win rate, ties,
    unparseable verdicts, language shares, mean lengths, position consistency."""
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
            fit = lc_fit(wins, [r["candidate_chars"] - r["baseline_chars"] for r in judged])

            def share(col, sel=sel, lang=lang):
                return sum(r[col] == lang for r in sel) / len(sel) if sel else None

            out[judge][lang] = {
                "prompts": len(sel), "judged": n, "win_rate": wr, "se": se,
                "lc_win_rate": None if fit is None else fit[0],
                "length_decides": None if fit is None else abs(fit[1]) > LENGTH_DECIDES,
                "ties": sum(w == 0.5 for w in wins),
                "unparseable": sum((r["verdict_ab"] is None) + (r["verdict_ba"] is None)
                                   for r in sel if r["kind"] == "llm"),
                "candidate_in_language": share("candidate_lid"),
                "baseline_in_language": share("baseline_lid"),
                "candidate_chars": sum(r["candidate_chars"] for r in sel) / len(sel) if sel else None,
                "baseline_chars": sum(r["baseline_chars"] for r in sel) / len(sel) if sel else None,
                "position_consistency": sum(cons) / len(cons) if cons else None,
            }  # fmt: skip
    return out
