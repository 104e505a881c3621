"""check-reward on a public benchmark: will this reward pair label language L well enough to
build for it? Accuracy, transfer gap, mode comparison and a verdict per language, as a record.

    icr-data check-reward --benchmark m-rewardbench --languages es,de,fr,ru \\
        --policy P --reference R [--benchmark-path DIR] [--subset chat,safety] [--limit 200]

The benchmark's labelled pairs (stages/pref_benchmarks.py) are scored as a build scores
candidates (score_phase.score_candidates): each response once per scoring prompt, a pair
ranked right when reward(chosen) > reward(rejected) (a tie counts wrong). Per language:
- accuracy in the chosen --mode (cross_lingual: the English twin's instruction + directive,
  the method's; native: the item's own instruction), with its 95% Wilson interval;
- the transfer gap: accuracy in L minus accuracy of the same items in English (parallel
  benchmarks only; English rows are scored once, the same prompt in both modes);
- cross-lingual vs native accuracy on the same items, and the share they order alike;
- all of it per category (chat, chat hard, safety, reasoning, ...);
- a verdict (VerdictRule): `build` when the interval lies wholly above the floor (0.5) and
  the gap is >= -max_drop (0.05); `doubtful` when the interval is above the floor but the gap
  is below -max_drop; `do not build` when the interval reaches the floor or below, i.e. the
  ranking cannot be told from chance. Without English twins (mm-eval) the gap is not measured
  and the verdict rests on the interval alone.
Items without their English twin are an error in cross-lingual mode (nothing to show); in
native mode they count for accuracy and are left out of the gap and mode comparison, counted
as `without_english`. The record `<store>/<name>/vN` (kind reward_check) holds a card, a
manifest with the results and one row per (item, language) with its four rewards; `icr-data
evals` lists it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import icr_data
from icr_data.base.errors import IcrError
from icr_data.stages.agreement import wilson
from icr_data.stages.pref_benchmarks import Benchmark, load_benchmark

MODES = ("cross_lingual", "native")


class CheckError(IcrError):
    """A benchmark check that cannot run as asked; the message names the option or items."""


@dataclass
class VerdictRule:
    floor: float = 0.5
    """The interval's lower bound must lie above this (chance, for a pair)."""
    max_drop: float = 0.05
    """The largest loss of accuracy against English on the same items that still builds."""

    def check(self) -> None:
        if not 0 <= self.floor < 1:
            raise CheckError(f"--floor must be in [0, 1), got {self.floor}")
        if not 0 <= self.max_drop <= 1:
            raise CheckError(f"--max-drop must be in [0, 1], got {self.max_drop}")

    def text(self) -> str:
        f, d = self.floor, self.max_drop
        return (f"build: the 95% Wilson interval of accuracy lies wholly above {f:g} and the "
                f"transfer gap is >= -{d:g}; doubtful: the interval lies above {f:g} but the gap "
                f"is below -{d:g}; do not build: the interval reaches {f:g} or below (the "
                "ranking cannot be told from chance). Without English twins the gap is not "
                "measured and the interval decides.")  # fmt: skip

    def verdict(self, ci: list[float], gap: float | None) -> tuple[str, str]:
        lo, hi = ci
        where = f"95% interval {lo:.2f}-{hi:.2f}"
        if lo <= self.floor:
            return "do not build", f"{where} reaches {self.floor:g} or below: not told from chance"
        if gap is not None and gap < -self.max_drop - 1e-12:
            return "doubtful", (f"{where} above {self.floor:g}, but {-gap:.2f} less accurate "
                                f"than English on the same items (more than {self.max_drop:g})")  # fmt: skip
        why = "no English twins: gap not measured" if gap is None else f"gap {gap:+.2f}"
        return "build", f"{where} above {self.floor:g}; {why}"


def score_rows(bench: Benchmark, mode: str, policy: str, reference: str, scoring,
               chat_template=None, console=None, progress=None) -> tuple[list[dict], dict]:  # fmt: skip
    """One row per (item, language) with its rewards under both modes where they apply:
    `cross_lingual_*` (None without an English twin) and `native_*`; English rows are scored
    once. Returns (rows, model identities)."""
    from datasets import Dataset

    from icr_data.base.languages import scoring_prompt
    from icr_data.commands import prepare
    from icr_data.commands.score_phase import score_candidates
    from icr_data.stages import models

    english = {r["item_id"]: r["instruction"] for r in bench.rows
               if r["lang"] == "en" and bench.parallel}  # else an equal id is no twin  # fmt: skip
    if mode == "cross_lingual":
        if not bench.parallel:
            raise CheckError(f"{bench.name}: its items are not parallel (no English twins), so "
                             "cross-lingual scoring has no English instruction to show; use "
                             "--mode native")  # fmt: skip
        orphans: dict[str, list[str]] = {}
        for r in bench.rows:
            if r["item_id"] not in english:
                orphans.setdefault(r["lang"], []).append(r["item_id"])
        if orphans:
            lang, ids = next(iter(orphans.items()))
            raise CheckError(f"{bench.name}: {sum(map(len, orphans.values()))} item(s) have no "
                             f"English twin ({lang}: ids {', '.join(ids[:5])}"
                             f"{', ...' if len(ids) > 5 else ''}); cross-lingual scoring shows "
                             "the English instruction. --mode native scores them without it "
                             "(they then count for accuracy, not for the gap)")  # fmt: skip
    cands, where = [], []  # where[i] = (row index, column) the reward of cands[i] fills
    for i, r in enumerate(bench.rows):
        prompts = {"native": r["instruction"]}
        if r["lang"] != "en" and r["item_id"] in english:
            prompts["cross_lingual"] = scoring_prompt(english[r["item_id"]], r["instruction"],
                                                      r["lang"], "cross_lingual")  # fmt: skip
        for k, (m, x) in enumerate(prompts.items()):
            for j, side in enumerate(("chosen", "rejected")):
                cands.append({"prompt_id": r["item_id"], "lang": r["lang"],
                              "instruction": r["instruction"], "scoring_prompt": x,
                              "sample_idx": 2 * k + j, "response": r[side], "finish_reason": "stop"})  # fmt: skip
                where.append((i, f"{m}_{side}"))
    found = prepare.resolve_models({"--policy": policy, "--reference": reference}, console)
    paths = {"policy": found["--policy"], "reference": found["--reference"]}
    ids = {role: models.identity(spec, paths[role])
           for role, spec in (("policy", policy), ("reference", reference))}  # fmt: skip
    scored = score_candidates(Dataset.from_list(cands), paths["policy"], paths["reference"],
                              scoring, chat_template, ids, console, progress)  # fmt: skip
    out = [{**r, "english_instruction": english.get(r["item_id"]),
            "chosen_chars": len(r["chosen"]), "rejected_chars": len(r["rejected"]),
            **dict.fromkeys(f"{m}_{s}" for m in MODES for s in ("chosen", "rejected"))}
           for r in bench.rows]  # fmt: skip
    for (i, column), reward in zip(where, scored["reward"]):
        out[i][column] = reward
    for r in out:
        if r["lang"] == "en":  # no directive for English: one scoring serves both modes
            r["cross_lingual_chosen"], r["cross_lingual_rejected"] = (r["native_chosen"],
                                                                      r["native_rejected"])  # fmt: skip
    return out, ids


def margin(row: dict, mode: str) -> float | None:
    c, r = row[f"{mode}_chosen"], row[f"{mode}_rejected"]
    return None if c is None or r is None else c - r


def _accuracy(margins: list[float]) -> float | None:
    return sum(m > 0 for m in margins) / len(margins) if margins else None


def _figures(rows: list[dict], mode: str, english: dict[str, float], parallel: bool) -> dict:
    """Pairs, accuracy, interval, ties and the gap (None for English or without twins) of rows
    of one language (or one of its categories) scored in `mode`; english[item] is its English
    twin's margin."""
    scored = [(r, m) for r in rows if (m := margin(r, mode)) is not None]
    margins = [m for _, m in scored]
    k, n = sum(m > 0 for m in margins), len(margins)
    lang = rows[0]["lang"]
    twins = [(m, english[r["item_id"]]) for r, m in scored if r["item_id"] in english]
    gap = None
    if parallel and lang != "en" and twins:
        gap = _accuracy([m for m, _ in twins]) - _accuracy([e for _, e in twins])
    return {"pairs": n, "accuracy": k / n, "ci95": list(wilson(k, n)), "gap": gap,
            "gap_items": len(twins) if gap is not None else 0,
            "ties": sum(m == 0 for m in margins)}  # fmt: skip


def summarize(rows: list[dict], mode: str, parallel: bool, rule: VerdictRule,
              identical: dict[str, int] | None = None) -> dict:  # fmt: skip
    """Per language (see the module docstring): figures in `mode`, the gap, the modes compared,
    per category, and the verdict with its reason."""
    english = {r["item_id"]: margin(r, mode) for r in rows if r["lang"] == "en" and parallel}
    out = {}
    for lang in dict.fromkeys(r["lang"] for r in rows):
        mine = [r for r in rows if r["lang"] == lang]
        fig = _figures(mine, mode, english, parallel)
        both = [r for r in mine if margin(r, "cross_lingual") is not None and lang != "en"]
        modes = None
        if both:
            cross = [margin(r, "cross_lingual") for r in both]
            native = [margin(r, "native") for r in both]
            modes = {"items": len(both), "cross_lingual": _accuracy(cross),
                     "native": _accuracy(native),
                     "difference": _accuracy(cross) - _accuracy(native),
                     "same_order": sum((a > 0) == (b > 0) for a, b in zip(cross, native)) / len(both)}  # fmt: skip
        cats = {}
        for cat in dict.fromkeys(r["category"] for r in mine):
            cats[cat] = _figures([r for r in mine if r["category"] == cat], mode, english, parallel)
        word, why = rule.verdict(fig["ci95"], fig["gap"])
        out[lang] = {**fig, "without_english": sum(r["item_id"] not in english for r in mine)
                     if parallel and lang != "en" else 0,
                     "identical_dropped": (identical or {}).get(lang, 0), "modes": modes,
                     "by_category": cats, "verdict": word, "reason": why}  # fmt: skip
    return out


def check_record_name(store: str | Path, name: str) -> None:
    """A reward-check record is a version of its own `name`: refused when that name holds
    anything else (a dataset, an eval record), which it would join as a version."""
    from icr_data.store import store as st

    st.check_dataset_name(name)
    folder = Path(store) / name
    st.refuse_inside_version(folder, "--store", "the record ")  # versions are immutable
    for v in st.versions(folder) if folder.is_dir() else []:
        try:
            kind = st.read_manifest(folder / v).get("kind")
        except IcrError:
            kind = None
        if kind != "reward_check":
            raise CheckError(f"--name {name!r} is taken in {store} ({folder / v}, not a reward "
                             "check); give the record a name of its own")  # fmt: skip


def check_benchmark(benchmark: str, policy: str, reference: str, scoring, *,
                    languages: list[str] | None = None, subsets: list[str] | None = None,
                    path: str | Path | None = None, limit: int | None = None,
                    rule: VerdictRule | None = None, store: str | Path = "icr_store",
                    name: str | None = None, version: str | None = None, chat_template=None,
                    console=None, progress=None) -> tuple[Path, dict]:  # fmt: skip
    """Load, score, summarise and write the record; (its folder, its manifest). Everything a
    user can get wrong (benchmark, languages, rows, twins, name) fails before a model loads."""
    from datasets import Dataset

    from icr_data.store.store import check_version_name, portable_path, write_version

    rule = rule or VerdictRule()
    rule.check()
    name = name or f"check-{benchmark}"
    check_record_name(store, name)
    if version is not None:
        check_version_name(version)
    if scoring.mode not in MODES:
        raise CheckError(f"--mode must be cross_lingual or native, got {scoring.mode!r}")
    bench = load_benchmark(benchmark, languages, subsets, path, limit)
    if not bench.rows:
        raise CheckError(f"{benchmark}: no pairs left to score in {bench.source}")
    if bench.parallel and not any(r["lang"] != "en" for r in bench.rows):
        raise CheckError(f"{benchmark}: no language but English to check; give --languages")
    rows, ids = score_rows(bench, scoring.mode, policy, reference, scoring, chat_template,
                           console, progress)  # fmt: skip
    results = summarize(rows, scoring.mode, bench.parallel, rule, bench.identical)
    manifest = {
        "kind": "reward_check", "dataset": name, "version": None,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "code_version": f"icr-data {icr_data.__version__}",
        "benchmark": {"name": bench.name, "hub_id": bench.hub_id, "parallel": bench.parallel,
                      "source": portable_path(bench.source), "subsets": subsets, "limit": limit},
        "models": ids,
        "scoring": {"mode": scoring.mode, "beta": scoring.beta, "count_eot": scoring.count_eot},
        "verdict_rule": {"floor": rule.floor, "max_drop": rule.max_drop, "text": rule.text()},
        "languages": list(results),
        "results": results,
        "totals": {"items": len({r["item_id"] for r in rows}), "rows": len(rows),
                   "identical_dropped": sum(bench.identical.values())},
    }  # fmt: skip
    out = write_version(store, name, {"rows": Dataset.from_list(rows)}, manifest, render_card,
                        name=version)  # fmt: skip
    return out, manifest


def render_card(manifest: dict) -> str:
    import yaml

    from icr_data.store.card import environment, size_category

    header = {
        "language": manifest["languages"], "license": "other",
        "tags": ["evaluation", "reward-model", "icr-data"],
        "size_categories": [size_category(manifest["totals"]["rows"])],
        "pretty_name": f"{manifest['dataset']} {manifest['version']}",
        "configs": [{"config_name": "rows", "default": True,
                     "data_files": [{"split": "train", "path": manifest["files"]["rows"][0]}]}],
    }  # fmt: skip
    env = environment()
    env.filters["fmt"] = lambda v, spec=".3f": "-" if v is None else format(v, spec)
    head = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    return env.get_template("reward_check_card.md").render(header=head, m=manifest)


def list_rows(manifest: dict) -> list[dict]:
    """The record as `icr-data evals` lists it: per language (accuracy, transfer gap)."""
    b = manifest["benchmark"]
    return [{"record": f"{manifest['dataset']}/{manifest['version']}", "data": "-",
             "candidate": manifest["models"]["policy"]["name"],
             "judge": f"reward check: {b['name']} ({manifest['scoring']['mode']})",
             "languages": {lang: (r["accuracy"], r["gap"])
                           for lang, r in manifest["results"].items()}}]  # fmt: skip


def tables(manifest: dict) -> list:
    """The terminal report, each table within 80 columns: per language, then per category."""
    from rich.table import Table

    from icr_data.base.console import Fitted

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    b, mode = manifest["benchmark"], manifest["scoring"]["mode"]
    main = Table(title=f"{b['name']}: accuracy ({mode}), gap vs English, verdict")
    for col in ("lang", "pairs", "acc", "95% CI", "gap", "x-ling", "native", "verdict"):
        main.add_column(col, justify="left" if col in ("lang", "verdict") else "right",
                        no_wrap=True)  # fmt: skip
    cats = Table(title="per category (accuracy, gap vs English)")
    for col in ("lang", "category", "pairs", "acc", "95% CI", "gap"):
        cats.add_column(col, justify="left" if col in ("lang", "category") else "right",
                        no_wrap=col != "category")  # fmt: skip
    for lang, r in manifest["results"].items():
        m = r["modes"] or {}
        main.add_row(lang, str(r["pairs"]), f(r["accuracy"]), "{:.2f}-{:.2f}".format(*r["ci95"]),
                     f(r["gap"], "+.2f"), f(m.get("cross_lingual")), f(m.get("native")),
                     r["verdict"])  # fmt: skip
        for cat, c in r["by_category"].items():
            cats.add_row(lang, cat, str(c["pairs"]), f(c["accuracy"]),
                         "{:.2f}-{:.2f}".format(*c["ci95"]), f(c["gap"], "+.2f"))  # fmt: skip
    return [Fitted(main), Fitted(cats)]
