"""Can a language's rewards be trusted? The agreement figures and the per-language verdict.

    wilson(k, n)                         95% Wilson interval of a proportion
    kendall_tau(a, b)                    tau-a of two scorings of the same items
    mode_agreement(rows, first, second)  per language: Kendall tau per prompt, mean, sd, interval
    judge_figures(judge_agreement)       per language: the judge's agreement rate with its interval
    noise_verdicts(modes, judge, ...)    per language: why its pairs are likely noise, if they are

Shared by check-reward (check.py) and builds (manifest.py: the manifest records the figures and
the verdicts; the card and the build summary show them). The rules, stated once:
- mode agreement (cross-lingual vs native rewards of the same samples): a language is flagged
  when the 95% interval of its mean tau per prompt, mean +- 1.96 * sd / sqrt(n) over its n
  prompts, does not lie wholly above 0 (or when fewer than 2 prompts give a tau);
- judge agreement (scoring.judge): a language is flagged when the 95% Wilson interval of
  agree / pairs does not lie wholly above chance, 0.5.
"""

from __future__ import annotations

import math
import statistics

Z95 = 1.96
MODE_RULE = (
    "flagged when the 95% interval of the mean Kendall tau per prompt, "
    "mean +- 1.96 * sd / sqrt(prompts), does not lie wholly above 0 (or fewer than 2 prompts)"
)
JUDGE_RULE = "flagged when the 95% Wilson interval of agree / pairs does not lie wholly above 0.5"


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-a of two scorings of the same items: (concordant - discordant) pairs over
    all pairs; None for fewer than two items."""
    n = len(a)
    if n < 2:
        return None
    total = 0
    for i in range(n):
        for j in range(i + 1, n):
            x, y = a[i] - a[j], b[i] - b[j]
            total += ((x > 0) - (x < 0)) * ((y > 0) - (y < 0))  # sign(x) * sign(y)
    return total / (n * (n - 1) / 2)


def tau_interval(mean: float | None, sd: float | None, n: int) -> list[float] | None:
    """mean +- 1.96 * sd / sqrt(n), or None when it is undefined (fewer than 2 prompts)."""
    if mean is None or sd is None or n < 2:
        return None
    half = Z95 * sd / math.sqrt(n)
    return [mean - half, mean + half]


def mode_agreement(rows: list[dict], first: list[float], second: list[float]) -> dict:
    """Per language: the mean and spread of Kendall's tau per prompt between two rewards of the
    same responses (e.g. cross-lingual and native scoring), its 95% interval and whether the
    language is flagged (see MODE_RULE). rows[i] holds prompt_id and lang."""
    groups: dict = {}
    for r, x, y in zip(rows, first, second):
        groups.setdefault(r["lang"], {}).setdefault(r["prompt_id"], []).append((x, y))
    out = {}
    for lang, prompts in groups.items():
        taus = [t for g in prompts.values()
                if (t := kendall_tau([x for x, _ in g], [y for _, y in g])) is not None]  # fmt: skip
        mean = statistics.fmean(taus) if taus else None
        sd = statistics.stdev(taus) if len(taus) > 1 else None
        ci = tau_interval(mean, sd, len(taus))
        out[lang] = {"prompts": len(taus), "mean_tau": mean, "sd_tau": sd, "ci95": ci,
                     "likely_noise": ci is None or ci[0] <= 0}  # fmt: skip
    return out


def candidate_agreement(candidates) -> dict | None:
    """mode_agreement of a candidates table's `reward` (its scoring mode) and `reward_native`
    (scoring.agreement: native); None when it has no reward_native."""
    if "reward_native" not in candidates.column_names:
        return None
    rows = candidates.select_columns(["prompt_id", "lang"]).to_list()
    return mode_agreement(rows, candidates["reward"], candidates["reward_native"])


def judge_figures(judge_agreement: dict) -> dict:
    """Per language: a judge's agreement (pairs, agree, rate) with its 95% Wilson interval,
    whether the interval includes chance, and whether the language is flagged (JUDGE_RULE)."""
    out = {}
    for lang, a in judge_agreement.items():
        lo, hi = wilson(a["agree"], a["pairs"])
        out[lang] = {**a, "ci95": [lo, hi], "includes_chance": lo <= 0.5 <= hi,
                     "likely_noise": lo <= 0.5}  # fmt: skip
    return out


def noise_verdicts(modes: dict | None, judge: dict | None,
                   compared: tuple[str, str] | list[str] = ("cross_lingual", "native"),
                   judge_name: str | None = None) -> dict[str, list[str]]:  # fmt: skip
    """Per flagged language, one plain sentence per reason its pairs are likely noise (from
    mode_agreement, of the two scoring modes `compared`, and judge_figures output); languages
    not flagged are absent."""
    out: dict[str, list[str]] = {}
    first, second = compared
    for lang, a in (modes or {}).items():
        if not a["likely_noise"]:
            continue
        if a["ci95"] is None:
            why = (f"{first} and {second} rewards: mean Kendall tau per prompt over only "
                   f"{a['prompts']} prompt(s), too few to tell it from 0")  # fmt: skip
        else:
            lo, hi = a["ci95"]
            why = (f"{first} and {second} rewards rank its samples with mean Kendall tau "
                   f"{a['mean_tau']:+.2f} per prompt (95% interval {lo:+.2f} to {hi:+.2f}, "
                   f"{a['prompts']} prompts), not clearly above 0")  # fmt: skip
        out.setdefault(lang, []).append(f"{why}: its pairs are likely noise")
    for lang, a in (judge or {}).items():
        if not a["likely_noise"]:
            continue
        lo, hi = a["ci95"]
        where = "includes chance (0.5)" if a["includes_chance"] else "lies below chance (0.5)"
        who = f"the judge {judge_name}" if judge_name else "the judge"
        out.setdefault(lang, []).append(
            f"{who} agrees with the implicit reward on {a['agree']} of {a['pairs']} pairs; the "
            f"95% interval {lo:.2f}-{hi:.2f} {where}: its pairs are likely noise"
        )
    return out
