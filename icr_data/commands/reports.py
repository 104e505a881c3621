"""Report tables: what the commands print, drawn with rich from plain data (manifests, check
reports, inspection's DataFrames and dicts). Nothing here computes a statistic or reads more than
the failures table of a translated version.

    summary_table(manifest)           build / merge / score VERSION / pair: counts, margins, funnel
    check_table(report)               check-reward
    translate_tables(path, manifest)  translate: kept / failed per language, the first failures
    inspect_report(report)            inspect: statistics, histograms, the extreme pairs
    versions_table(rows)              versions
    diff_tables(d)                    diff
    eval_tables(manifest)             eval: WR, SE, LC and the rest per judge and language
    evals_table(rows)                 evals: every eval record

The tables of numbers are console.Fitted: in a narrow terminal (80 columns) they turn compact, and
split their columns over two tables if they must, but never cut a number (`1.3…`).

Imported inside the commands (cli.py), so `icr-data --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from icr_data.base.console import Fitted

if TYPE_CHECKING:
    import polars as pl

    from icr_data.commands.inspection import InspectReport

BLOCKS = " ▁▂▃▄▅▆▇█"


def summary_table(manifest: dict) -> Fitted:
    """Per language: counts, margins and the funnel, and (when measured) the mode agreement tau
    and the judge's agreement; a caption warns of languages with 0 pairs (and why), of languages
    asked for that had no prompts, and of languages whose pairs are likely noise (agreement.py)."""
    from icr_data.commands.inspection import zero_pair_languages

    table = Table(title=f"{manifest['dataset']} {manifest['version']}")
    modes = ((manifest.get("scoring") or {}).get("mode_agreement") or {}).get("languages") or {}
    judge = manifest["pairing"].get("judge_agreement") or {}
    cols = ("lang", "prompts", "candidates", "kept", "pairs", "off-target", "margin mean",
            "margin median", "alpha", "dropped")  # fmt: skip
    for col in cols:  # numbers never wrap (Fitted keeps them whole); the drop reasons do
        table.add_column(col, justify="left" if col in ("lang", "dropped") else "right",
                         no_wrap=col != "dropped")  # fmt: skip
    if modes:
        table.add_column("tau vs native", justify="right", no_wrap=True)
    if judge:
        table.add_column("judge agrees", justify="right", no_wrap=True)

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    def agreement_cells(lang: str) -> list[str]:
        cells = []
        if modes:
            a = modes.get(lang)
            cells.append("-" if not a or a["mean_tau"] is None else f"{a['mean_tau']:+.2f}")
        if judge:
            a = judge.get(lang)
            cells.append("-" if not a else f"{a['agree']}/{a['pairs']}")
        return cells

    for lang, c in manifest["counts"].items():
        q = manifest["margins"][lang]
        f = manifest.get("funnel", {}).get(lang, {})
        alpha = manifest["pairing"]["alphas"].get(lang)
        off = f.get("off_target_rate")
        reasons = {**f.get("dropped_candidates", {}), **f.get("prompts_without_pair", {}),
                   **f.get("dropped_pairs", {})}  # fmt: skip
        table.add_row(lang, str(c["prompts"]), str(c["candidates"]), str(f.get("kept_candidates", "-")),
                      str(c["pairs"]), "-" if off is None else f"{off:.0%}", fmt(q["mean"]),
                      fmt(q["median"]), fmt(alpha),
                      ", ".join(f"{k} {v}" for k, v in reasons.items()) or "-",
                      *agreement_cells(lang))  # fmt: skip
    warnings = [
        f"{lang} has 0 pairs ({why})" for lang, why in zero_pair_languages(manifest).items()
    ]
    asked = ((manifest.get("recipe") or {}).get("prompts") or {}).get("languages") or []
    absent = [lang for lang in asked if lang not in manifest["counts"]]
    if absent:
        warnings.append(f"no prompts in {', '.join(absent)} (asked for in prompts.languages)")
    lines = ["warning: " + "; ".join(warnings)] if warnings else []
    noise = (manifest.get("likely_noise") or {}).get("languages") or {}
    lines += [f"warning: {lang}: {why}" for lang, reasons in noise.items() for why in reasons]
    if lines:
        table.caption = "\n".join(lines)
        table.caption_style = "yellow"
        table.caption_justify = "left"
    return Fitted(table)


def stability_line(stability: dict | None) -> str | None:
    """One line on the score stability a version records (scoring.stability), or None."""
    if not stability:
        return None
    if not stability.get("measured"):
        return "score stability: not measured (scoring.stability_sample 0)"
    return (f"score stability: max |diff| {stability['max']:.1e} nats over "
            f"{stability['rescored']} of {stability['candidates']} candidates scored again in "
            f"other batches (bound {stability['bound']:g})")  # fmt: skip


def check_table(report: dict) -> Fitted:
    table = Table(title=f"implicit reward on labelled pairs ({report['mode']})")
    for col in ("lang", "pairs", "accuracy", "95% CI", "ties", "mean margin", "chosen shorter",
                "similar length", "chosen longer", "len-margin corr"):  # fmt: skip
        table.add_column(col, justify="left" if col == "lang" else "right", no_wrap=True)

    def acc(b: dict) -> str:
        return "-" if b["accuracy"] is None else f"{b['accuracy']:.2f} ({b['pairs']})"

    for lang, r in report["languages"].items():
        lo, hi = r["ci95"]
        bins = r["by_length_difference"]
        corr = r["length_margin_corr"]
        table.add_row(lang, str(r["pairs"]), f"{r['accuracy']:.3f}", f"{lo:.2f}-{hi:.2f}",
                      str(r["ties"]), f"{r['mean_margin']:+.3f}", acc(bins["chosen shorter"]),
                      acc(bins["similar"]), acc(bins["chosen longer"]),
                      "-" if corr is None else f"{corr:+.2f}")  # fmt: skip
    return Fitted(table)


def translate_tables(path: Path, manifest: dict, show: int = 20) -> list[Table]:
    """Kept / failed per language (failed by first reason), then the first `show` failures."""
    from icr_data.store.store import read_table

    summary = Table(title=f"{manifest['dataset']} {manifest['version']}: translated prompts")
    for col in ("lang", "sources", "kept", "failed", "failed by reason"):
        summary.add_column(col, justify="left" if col in ("lang", "failed by reason") else "right")
    for lang, c in manifest["counts"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in c["reasons"].items()) or "-"
        summary.add_row(lang, str(c["sources"]), str(c["kept"]), str(c["failed"]), reasons)
    failed = read_table(path, "failures")
    rows = failed.select(range(min(show, len(failed))))
    more = f" (first {show} of {len(failed)}; all in data/failures)" if len(failed) > show else ""
    detail = Table(title=f"failures{more}")
    for col in ("prompt_id", "lang", "reason", "all reasons", "translation"):
        detail.add_column(col, overflow="fold" if col == "translation" else "ellipsis")
    for r in rows:
        text = r["translation"].replace("\n", " ")
        detail.add_row(r["prompt_id"][:16], r["lang"], r["reason"], ", ".join(r["reasons"]),
                       text[:80] + ("..." if len(text) > 80 else ""))  # fmt: skip
    return [summary, detail] if len(failed) else [summary]


# Inspection: from the data computed in inspection.py.


def _f(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def stats_table(stats: pl.DataFrame, title: str, unit: str,
                notes: dict[str, str] | None = None) -> Fitted:  # fmt: skip
    """The inspect statistics; `notes` ({language: why}) adds a column, e.g. why 0 pairs."""
    from icr_data.commands.inspection import MIN_STAT_PAIRS

    table = Table(title=title)
    cols = ("lang", "pairs", "margin p10", "p50", "p90", "mean", f"chosen len ({unit})",
            f"rejected len ({unit})", "len-margin corr", "off-target")  # fmt: skip
    for col in cols:  # numbers never wrap: Fitted keeps them whole in a narrow terminal
        table.add_column(col, justify="left" if col == "lang" else "right", no_wrap=True)
    if notes:
        table.add_column("why no pairs", overflow="fold")
    few = False
    for r in stats.iter_rows(named=True):
        few |= 0 < r["pairs"] < MIN_STAT_PAIRS
        table.add_row(r["lang"], str(r["pairs"]), _f(r["margin_p10"]), _f(r["margin_p50"]),
                      _f(r["margin_p90"]), _f(r["margin_mean"]), _f(r["chosen_len"], ".1f"),
                      _f(r["rejected_len"], ".1f"), _f(r["len_margin_corr"], "+.3f"),
                      _f(r["off_target_rate"], ".1%"),
                      *([notes.get(r["lang"], "")] if notes else []))  # fmt: skip
    if few:
        table.caption = f"-: not reported on fewer than {MIN_STAT_PAIRS} pairs"
    return Fitted(table)


def sparkline(counts: list[int]) -> str:
    """One unicode block per bin, scaled to the tallest bin; an empty bin is a space."""
    top = max(counts, default=0)
    # ceil(8 k / top): any non-empty bin gets at least the lowest block, so it never looks empty
    return "".join(BLOCKS[-(-8 * k // top)] if top else " " for k in counts)


def histogram_lines(hist: dict) -> list[str]:
    if not hist["counts"]:
        return []
    lo, hi = hist["edges"][0], hist["edges"][-1]
    width = max(len(lang) for lang in hist["counts"])
    return [f"{lang:<{width}} {lo:>8.3f} |{sparkline(c)}| {hi:<8.3f} n={sum(c)}"
            for lang, c in hist["counts"].items()]  # fmt: skip


def _clip(text: str | None, n: int) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def pairs_view(pairs: pl.DataFrame, title: str, unit: str, max_chars: int = 400) -> Table:
    """Chosen and rejected side by side, one row per pair, with margin, rewards and lengths."""
    table = Table(title=title, show_lines=True)  # long words fold: _clip alone cuts a text
    table.add_column("pair", ratio=1, overflow="fold")
    table.add_column("chosen", ratio=2, overflow="fold")
    table.add_column("rejected", ratio=2, overflow="fold")
    for r in pairs.iter_rows(named=True):
        info = (f"{r['lang']} {r['prompt_id']}\nmargin {r['margin']:+.3f}\n"
                f"reward {r['chosen_reward']:+.3f} / {r['rejected_reward']:+.3f}\n"
                f"{unit} {r['chosen_len']} / {r['rejected_len']}\n\n{_clip(r['prompt'], 160)}")  # fmt: skip
        table.add_row(info, _clip(r["chosen"], max_chars), _clip(r["rejected"], max_chars))
    return table


def versions_table(rows: list[dict]) -> Table:
    from icr_data.commands.inspection import COUNT_FIELDS

    table = Table(title="versions")
    cols = ("dataset", "version", "parent", "recipe digest", *COUNT_FIELDS, "created")
    for col in cols:
        table.add_column(col, justify="right" if col in COUNT_FIELDS else "left")
    for r in rows:
        table.add_row(r["dataset"], r["version"], r["parent"] or "-", r["recipe_digest"] or "-",
                      *(_f(r[k], "d") for k in COUNT_FIELDS),
                      "manifest unreadable" if r.get("error") else r["created"] or "-")  # fmt: skip
    return table


def _show(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def diff_tables(d: dict) -> list[Table | Fitted]:
    from icr_data.commands.inspection import COUNT_FIELDS

    recipe = Table(title=f"recipe: {d['a']} -> {d['b']}")
    for col in ("key", "old", "new"):
        recipe.add_column(col)
    for r in d["recipe"]:
        recipe.add_row(r["key"], _show(r["old"]), _show(r["new"]))
    models = Table(title="models")
    for col in ("role", "field", "old", "new"):
        models.add_column(col)
    for r in d["models"]:
        models.add_row(r["role"], r["field"], r["old"] or "-", r["new"] or "-")
    counts = Table(title="counts (old -> new)")
    counts.add_column("lang", no_wrap=True)
    for k in COUNT_FIELDS:
        counts.add_column(k, justify="right", no_wrap=True)
    for lang, c in d["counts"].items():
        counts.add_row(lang, *(f"{_f(c[k][0], 'd')} -> {_f(c[k][1], 'd')}" for k in COUNT_FIELDS))
    shift = Table(title="margin shift per language (new - old)")
    for col in ("lang", "pairs", "mean", "Δ mean", "Δ median", "Δ p10", "Δ p90", "KS D"):
        shift.add_column(col, justify="left" if col == "lang" else "right", no_wrap=True)
    for r in d["margins"].iter_rows(named=True):
        shift.add_row(r["lang"], f"{r['pairs_a']} -> {r['pairs_b']}",
                      f"{_f(r['mean_a'])} -> {_f(r['mean_b'])}", _f(r["mean_delta"], "+.3f"),
                      _f(r["median_delta"], "+.3f"), _f(r["p10_delta"], "+.3f"),
                      _f(r["p90_delta"], "+.3f"), _f(r["ks"]))  # fmt: skip
    return [t for t in (recipe, models) if t.row_count] + [Fitted(counts), Fitted(shift)]


NEGATIVE_MARGINS = (
    "Negative margins: a margin is the raw reward difference, chosen_reward - rejected_reward; "
    "length control ranks by reward - alpha * length, so it can choose a pair whose raw margin "
    "is negative."
)


def inspect_report(report: InspectReport, max_chars: int = 400) -> list[Fitted | Table | str]:
    """What `icr-data inspect` prints, in order: the statistics table, the histogram lines, one
    side-by-side table per selection of pairs, and a line on what a negative margin means when
    any margin shown is negative."""
    out: list[Fitted | Table | str] = [
        stats_table(
            report.stats, f"{report.name}: {report.df.height} pairs", report.unit, report.no_pairs
        ),
        f"margin histogram, {report.bins} bins over a range shared by the languages:",
        *histogram_lines(report.hist),
    ]
    if report.trust:
        out.append(trust_table(report.trust, report.name))
    if line := stability_line(report.stability):
        out.append(line)
    out += [pairs_view(sel, f"{report.name}: {title}", report.unit, max_chars)
            for title, sel in report.views]  # fmt: skip
    if report.df.height and report.df["margin"].min() < 0:
        out.append(NEGATIVE_MARGINS)
    return out


def trust_table(trust: dict, name: str) -> Fitted:
    """inspect: per language, mode agreement (tau vs native) and the judge's agreement, each with
    its 95% interval, and the verdict (inspection.trust_figures; the rules: agreement.py)."""
    table = Table(title=f"{name}: can these labels be trusted?")
    for col in ("lang", "tau vs native", "sd", "tau 95% CI", "judge agrees", "judge 95% CI",
                "verdict"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("lang", "verdict") else "right",
                         no_wrap=True)  # fmt: skip

    def ci(a: dict | None, spec: str) -> str:
        return (
            "-" if not a or not a.get("ci95") else " to ".join(format(x, spec) for x in a["ci95"])
        )

    langs = list(dict.fromkeys([*trust["modes"], *trust["judge"]]))
    for lang in langs:
        m, j = trust["modes"].get(lang), trust["judge"].get(lang)
        table.add_row(lang, _f(m and m["mean_tau"], "+.2f"), _f(m and m["sd_tau"], ".2f"),
                      ci(m, "+.2f"), "-" if not j else f"{j['agree']}/{j['pairs']}", ci(j, ".2f"),
                      "likely noise" if lang in trust["noise"] else "-")  # fmt: skip
    lines = [f"{lang}: {why}" for lang, reasons in trust["noise"].items() for why in reasons]
    if lines:
        table.caption = "\n".join(lines)
        table.caption_style = "yellow"
        table.caption_justify = "left"
    return Fitted(table)


def eval_tables(manifest: dict) -> list[Fitted]:
    """eval: per judge, the candidate's results per language."""
    out = []
    for judge, langs in manifest["results"].items():
        # a Text title: model strings such as "implicit:train:x" are not markup or emoji codes
        table = Table(title=Text(f"{manifest['dataset']} {manifest['version']}: "
                                 f"{manifest['models']['candidate']['name']} vs "
                                 f"{manifest['models']['baseline']['name']}, judged by {judge}"))  # fmt: skip
        ae = any("lc_alpaca_eval" in r for r in langs.values())  # lc: alpaca_eval asked for it
        cols = ("lang", "prompts", "WR", "SE", "LC", *(("LC (AE)",) if ae else ()), "ties",
                "unparseable", "cand. in lang", "base. in lang", "cand. chars", "base. chars",
                "consistency")  # fmt: skip
        for col in cols:
            table.add_column(col, justify="left" if col == "lang" else "right", no_wrap=True)
        for lang, r in langs.items():
            table.add_row(lang, str(r["prompts"]), _f(r["win_rate"]), _f(r["se"]),
                          _f(r["lc_win_rate"]), *((_f(r["lc_alpaca_eval"]),) if ae else ()),
                          str(r["ties"]), str(r["unparseable"]),
                          _f(r["candidate_in_language"], ".0%"), _f(r["baseline_in_language"], ".0%"),
                          _f(r["candidate_chars"], ".0f"), _f(r["baseline_chars"], ".0f"),
                          _f(r["position_consistency"], ".0%"))  # fmt: skip
        out.append(Fitted(table))
    return out


def evals_table(rows: list[dict]) -> Table:
    """evals: every eval record, training data -> candidate -> per-language WR / LC."""
    langs = list(dict.fromkeys(lang for r in rows for lang in r["languages"]))
    table = Table(title="eval records (per language: WR / LC; reward checks: accuracy / gap)")
    for col in ("record", "trained on", "candidate", "judge", *langs):
        table.add_column(col, justify="right" if col in langs else "left")
    for r in rows:
        cells = [f"{_f(r['languages'][x][0], '.2f')} / {_f(r['languages'][x][1], '.2f')}"
                 if x in r["languages"] else "-" for x in langs]  # fmt: skip
        table.add_row(
            Text(r["record"]), Text(r["data"]), Text(r["candidate"]), Text(r["judge"]), *cells
        )
    return table


def eval_rows_table(rows: list[dict], lang: str | None, per_judge: int, max_chars: int) -> Table:
    """inspect on an eval record: the first rows of each judge (optionally one language), the
    two answers side by side with the verdicts."""
    table = Table(title="eval rows (verdict_ab: candidate shown first; verdict_ba: second)")
    for col in ("judge", "lang", "prompt", "candidate", "baseline", "verdicts", "win"):
        table.add_column(col, overflow="fold")
    shown: dict[str, int] = {}
    for r in rows:
        if (lang and r["lang"] != lang) or shown.get(r["judge"], 0) >= per_judge:
            continue
        shown[r["judge"]] = shown.get(r["judge"], 0) + 1
        verdicts = " / ".join(str(v) for v in (r["verdict_ab"], r["verdict_ba"]) if v is not None)
        table.add_row(*(Text(x) for x in (r["judge"], r["lang"], _clip(r["instruction"], max_chars),
                      _clip(r["candidate"], max_chars), _clip(r["baseline"], max_chars),
                      verdicts or "unparseable", _f(r["win"], ".1f"))))  # fmt: skip
    return table
