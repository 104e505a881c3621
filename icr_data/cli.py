"""The `icr-data` command line. It parses options and calls the stage functions; heavy imports
(torch, vLLM, datasets) happen inside the commands so `icr-data --help` starts instantly.

    icr-data build recipes/demo.yaml --store icr_store --set sampling.n=4
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from icr_data.console import progress_bar, stderr_console

app = typer.Typer(
    help="Build multilingual preference datasets from an English implicit reward "
    "(implicit cross-lingual rewarding).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = stderr_console()


@app.callback()
def _group() -> None:
    """Stages: prompts -> generate (vLLM) -> score (policy/reference log-probs) -> pairs -> version."""


def summary_table(manifest: dict) -> Table:
    table = Table(title=f"{manifest['dataset']} {manifest['version']}")
    cols = ("lang", "prompts", "candidates", "kept", "pairs", "off-target", "margin mean",
            "margin median", "alpha", "dropped")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col in ("lang", "dropped") else "right")

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

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
                      ", ".join(f"{k} {v}" for k, v in reasons.items()) or "-")  # fmt: skip
    return table


RecipeArg = Annotated[Path, typer.Argument(help="YAML build recipe, e.g. recipes/demo.yaml.")]
StoreOpt = Annotated[
    str | None, typer.Option(help="Store folder for versions (overrides the recipe's 'store').")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key, e.g. --set sampling.n=4 (repeatable)."),
]
VersionOpt = Annotated[
    str | None, typer.Option(help="Name the new version (default: the next free vN).")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(help="Do only shards I, I+N, I+2N, ... (I/N, e.g. 0/4); merge when all are done."),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        help="local: run the stages in this process. ray: run generation and scoring in Ray Data "
        "actor pools (pip install 'icr-data\\[ray]'), sized by the recipe's 'ray:' section; same "
        "shards and completion markers, so either executor resumes the other's work."
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="--executor ray: the cluster to join (HEAD_IP:6379, or ray://HEAD_IP:10001). Default: "
        "RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a new local one."
    ),
]


def _run(recipe: Path, store: str | None, set_: list[str] | None, **kwargs):
    from icr_data.config import RecipeError, load_recipe
    from icr_data.shards import parse_shard

    overrides = list(set_ or [])
    if store is not None:
        overrides.append(f"store={store}")
    try:
        cfg = load_recipe(recipe, overrides)
        part = parse_shard(kwargs.pop("shard", None))
    except (RecipeError, ValueError) as e:
        _fail(str(e))
    if kwargs.get("executor", "local") not in ("local", "ray"):
        _fail(f"--executor must be local or ray, got {kwargs['executor']!r}")
    if kwargs.get("address") and kwargs.get("executor") != "ray":
        _fail("--address names a Ray cluster: use it with --executor ray")

    from icr_data.build import build as run_build

    try:
        return run_build(cfg, console=err, part=part, **kwargs)
    except _user_errors() as e:
        _fail(str(e))


def _report_version(path: Path, manifest: dict) -> None:
    err.print(summary_table(manifest))
    err.print(f"[green]wrote[/] {path}")
    print(path)


@app.command()
def build(
    recipe: RecipeArg,
    store: StoreOpt = None,
    version: VersionOpt = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
) -> None:
    """Run every stage of RECIPE (prompts, vLLM generation, dual-logit scoring, pairing) and
    write a new immutable dataset version with its card. Prints the version's path.

    Work is saved shard by shard: after a crash, the same command skips finished shards."""
    result = _run(recipe, store, set_, version=version, executor=executor, address=address)
    _report_version(result.path, result.manifest)


@app.command()
def generate(
    recipe: RecipeArg,
    store: StoreOpt = None,
    set_: SetOpt = None,
    shard: ShardOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
) -> None:
    """Generate candidates for RECIPE's shards (all, or I mod N with --shard I/N)."""
    _run(recipe, store, set_, shard=shard, stages=("generate",), executor=executor, address=address)
    err.print("[green]generation done[/] for " + (f"shard {shard}" if shard else "all shards"))


@app.command()
def score(
    source: Annotated[
        Path,
        typer.Argument(
            help="A recipe (score its generated shards) or a version folder (rescore its "
            "candidates under a new reward pair, into a new version)."
        ),
    ],
    store: StoreOpt = None,
    set_: SetOpt = None,
    shard: ShardOpt = None,
    policy: Annotated[str | None, typer.Option(help="Version mode: the new policy.")] = None,
    reference: Annotated[str | None, typer.Option(help="Version mode: the new reference.")] = None,
    mode: Annotated[
        str | None, typer.Option(help="Version mode: cross_lingual or native scoring prompts.")
    ] = None,
    beta: Annotated[float | None, typer.Option(help="Version mode: reward scale.")] = None,
    count_eot: Annotated[
        bool | None, typer.Option(help="Version mode: count the end-of-turn token.")
    ] = None,
    version: VersionOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
) -> None:
    """Score candidates under the policy and the reference.

    With a recipe: score its generated shards (all, or I mod N with --shard I/N).
    With a version folder: rescore its candidates (no regeneration) and write a new version."""
    if (source / "manifest.json").is_file():
        from icr_data.derive import rescore

        if executor != "local":
            _fail("--executor ray scores a recipe's shards; a version is rescored in this process")
        if mode not in (None, "cross_lingual", "native"):
            _fail(f"--mode must be cross_lingual or native, got {mode!r}")
        scoring = {
            k: v
            for k, v in {"mode": mode, "beta": beta, "count_eot": count_eot}.items()
            if v is not None
        }
        try:
            path, manifest = rescore(source, policy, reference, scoring, name=version)
        except _user_errors() as e:
            _fail(str(e))
        _report_version(path, manifest)
        return
    if policy or reference or mode or beta is not None or count_eot is not None:
        _fail("--policy/--reference/--mode/--beta/--count-eot rescore a version folder; "
              "with a recipe use --set models.policy=... etc.")  # fmt: skip
    _run(source, store, set_, shard=shard, stages=("score",), executor=executor, address=address)
    err.print("[green]scoring done[/] for " + (f"shard {shard}" if shard else "all shards"))


@app.command()
def pair(
    version_dir: Annotated[Path, typer.Argument(help="An existing version folder.")],
    strategy: Annotated[
        str | None,
        typer.Option(help="max_min, max_random, top_bottom or threshold (default: the parent's)."),
    ] = None,
    filters: Annotated[
        str | None,
        typer.Option(
            help="Comma list of filters, e.g. truncated,empty,duplicate,off_target,tie "
            "('' for none; default: the parent's)."
        ),
    ] = None,
    k: Annotated[
        int | None, typer.Option(help="top_bottom: pairs from the top k x bottom k.")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="threshold: minimum margin.")] = None,
    min_margin: Annotated[float | None, typer.Option(help="Drop pairs below this margin.")] = None,
    min_margin_quantile: Annotated[
        float | None, typer.Option(help="Drop pairs below this per-language margin quantile.")
    ] = None,
    length_unit: Annotated[str | None, typer.Option(help="chars or tokens.")] = None,
    version: VersionOpt = None,
) -> None:
    """Pair an existing version again (new strategy or filters) into a new version; candidates,
    their responses and scores are reused, nothing is regenerated or rescored."""
    from icr_data.derive import repair

    if strategy not in (None, "max_min", "max_random", "top_bottom", "threshold"):
        _fail(f"--strategy must be max_min, max_random, top_bottom or threshold, got {strategy!r}")
    if length_unit not in (None, "chars", "tokens"):
        _fail(f"--length-unit must be chars or tokens, got {length_unit!r}")
    settings = {"rule": strategy, "k": k, "threshold": threshold, "min_margin": min_margin,
                "min_margin_quantile": min_margin_quantile, "length_unit": length_unit}  # fmt: skip
    settings = {key: v for key, v in settings.items() if v is not None}
    if filters is not None:
        settings["filters"] = [f.strip() for f in filters.split(",") if f.strip()]
    try:
        path, manifest = repair(version_dir, settings, name=version)
    except _user_errors() as e:
        _fail(str(e))
    _report_version(path, manifest)


@app.command()
def merge(
    recipe: RecipeArg, store: StoreOpt = None, version: VersionOpt = None, set_: SetOpt = None
) -> None:
    """Pair the finished shards of RECIPE and write a new version (after generate/score --shard)."""
    result = _run(recipe, store, set_, version=version, stages=("merge",))
    _report_version(result.path, result.manifest)


@app.command()
def export(
    version_dir: Annotated[Path, typer.Argument(help="An existing version folder.")],
    out: Annotated[Path, typer.Option(help="Folder to write into (created if missing).")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="trl: train.parquet in TRL's pair format. llamafactory: alpaca ranking JSONL and "
            "its dataset_info.json entry. jsonl: flat pairs.jsonl.",
        ),
    ] = "trl",
    ref_logps: Annotated[
        bool,
        typer.Option(
            "--ref-logps",
            help="trl only: add ref_chosen_logps/ref_rejected_logps from the version's scores. "
            "Refused (with the reason) unless the version was scored with the training prompt "
            "(native mode) and its scoring reference is the training reference.",
        ),
    ] = False,
) -> None:
    """Write a version's pairs for an external trainer (TRL, LLaMA-Factory, plain JSONL)."""
    from icr_data.export import ExportError
    from icr_data.export import export as run_export

    try:
        files = run_export(version_dir, format, out, ref_logps=ref_logps)
    except (ExportError, *_user_errors()) as e:
        _fail(str(e))
    for f in files:
        err.print(f"[green]wrote[/] {f}")
        print(f)


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(help="YAML training config, e.g. recipes/dpo_demo.yaml.")
    ],
    set_: SetOpt = None,
) -> None:
    """Train on a version with the thin DPO recipe (DPO sigmoid + optional NLL; LoRA or full).

    Writes the trained model, its LoRA adapter and training.json to the config's output_dir."""
    from icr_data.train import TrainError, load_train_config
    from icr_data.train import train as run_train

    try:
        cfg = load_train_config(config, list(set_ or []))
        record = run_train(cfg, console=err)
    except (TrainError, *_user_errors()) as e:
        _fail(str(e))
    err.print(f"[green]wrote[/] {cfg.output_dir} ({record['steps']} steps, {record['seconds']}s)")
    print(cfg.output_dir)


def check_table(report: dict) -> Table:
    table = Table(title=f"implicit reward on labelled pairs ({report['mode']})")
    for col in ("lang", "pairs", "accuracy", "95% CI", "ties", "mean margin", "chosen shorter",
                "similar length", "chosen longer", "len-margin corr"):  # fmt: skip
        table.add_column(col, justify="left" if col == "lang" else "right")

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
    return table


@app.command("check-reward")
def check_reward(
    policy: Annotated[
        str,
        typer.Option(
            help="pi_dpo of the implicit reward (folder, Hub id, builtin:*, train:CONFIG)."
        ),
    ],
    reference: Annotated[str, typer.Option(help="pi_ref of the implicit reward.")],
    pairs: Annotated[
        Path,
        typer.Option(
            help="Labelled pairs (JSONL/Parquet): prompt_id, lang, instruction, chosen, "
            "rejected, with the English row of every prompt."
        ),
    ],
    mode: Annotated[
        str, typer.Option(help="cross_lingual (English instruction + directive) or native.")
    ] = "cross_lingual",
    beta: Annotated[float, typer.Option(help="reward = beta * (logp_policy - logp_ref).")] = 1.0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
) -> None:
    """How well an implicit reward ranks labelled pairs, per language, before generating anything.

    Prints accuracy (reward(chosen) > reward(rejected)) with a 95% Wilson interval, ties, the mean
    margin, and accuracy by length difference (chosen shorter / similar / longer by 20%)."""
    import json

    from icr_data.check import check_reward as run_check
    from icr_data.config import ScoringConfig

    if mode not in ("cross_lingual", "native"):
        _fail(f"--mode must be cross_lingual or native, got {mode!r}")
    with progress_bar(err) as progress:
        tasks: dict[str, int] = {}

        def advance(role: str, k: int) -> None:
            if role not in tasks:
                tasks[role] = progress.add_task(f"score ({role})", total=None, rate="")
            progress.update(tasks[role], advance=k)

        try:
            report = run_check(policy, reference, pairs, ScoringConfig(mode=mode, beta=beta),
                               advance=advance)  # fmt: skip
        except _user_errors() as e:
            _fail(str(e))
    err.print(check_table(report))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        err.print(f"[green]wrote[/] {json_out}")


StoreDirOpt = Annotated[
    str, typer.Option(help="Store folder; a VERSION like dataset/vN is looked up inside it.")
]
VersionRef = Annotated[
    str, typer.Argument(help="A version folder, or dataset/vN relative to --store.")
]


def _stdout():
    """Reports are the product of these commands: they go to stdout (pipe them to less)."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out.width = 160
    return out


@app.command("inspect")
def inspect_version(
    version: VersionRef,
    store: StoreDirOpt = "icr_store",
    lang: Annotated[str | None, typer.Option(help="Only this language (ISO 639-1).")] = None,
    sort: Annotated[
        str,
        typer.Option(help="Rank pairs by margin, length_diff, chosen_reward or rejected_reward."),
    ] = "margin",
    top: Annotated[int | None, typer.Option(help="Show the N highest-ranked pairs.")] = None,
    bottom: Annotated[int | None, typer.Option(help="Show the N lowest-ranked pairs.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a PNG here: margin histograms per language and reward vs length. "
            "None by default (and never inside the version folder, which is immutable)."
        ),
    ] = None,
    length_unit: Annotated[
        str | None,
        typer.Option(help="chars or tokens (default: the unit the version was paired in)."),
    ] = None,
    bins: Annotated[int, typer.Option(help="Histogram bins (shared by all languages).")] = 24,
    max_chars: Annotated[int, typer.Option(help="Cut each shown response at this length.")] = 400,
) -> None:
    """Per-language margin statistics of a version's pairs, a terminal histogram per language,
    and its extreme pairs with chosen and rejected side by side.

    Table: pairs, margin p10/p50/p90 and mean, mean chosen/rejected length, Pearson correlation
    of (len chosen - len rejected) with margin, off-target rate (from the manifest's funnel).
    Without --top/--bottom the 3 highest and 3 lowest pairs are shown; --top 0 shows none."""
    import polars as pl

    from icr_data import inspect as ins
    from icr_data import store as st

    if sort not in ins.SORT_KEYS:
        _fail(f"--sort must be one of {', '.join(ins.SORT_KEYS)}, got {sort!r}")
    if length_unit not in (None, "chars", "tokens"):
        _fail(f"--length-unit must be chars or tokens, got {length_unit!r}")
    if bins < 1 or (top or 0) < 0 or (bottom or 0) < 0:
        _fail("--bins must be >= 1 and --top/--bottom >= 0")
    if top is None and bottom is None:
        top = bottom = 3
    try:
        path = st.resolve_version(version, store)
        if plot is not None and st.within(plot, path):
            _fail(f"--plot {plot} is inside the version {path}; versions are immutable "
                  "(and publish uploads the whole folder): write the PNG elsewhere")  # fmt: skip
        manifest = st.read_manifest(path)
        unit = length_unit or ins.length_unit(manifest)
        lf = ins.scan_pairs(path)
        df = ins.numeric_view(lf, unit, lang)
        name = f"{manifest.get('dataset', path.parent.name)}/{manifest.get('version', path.name)}"
        if df.is_empty():
            langs = ", ".join(manifest.get("counts") or {}) or "none"
            where = f" in language {lang!r} (languages: {langs})" if lang else ""
            _fail(f"{name}: no pairs{where}")
        stats = ins.language_stats(df, ins.off_target_rates(manifest))
        hist = ins.margin_histogram(df, bins)
        picks = [(f"{end} {n} by {sort}", ins.select_pairs(df, n, end == "bottom", sort))
                 for end, n in (("top", top), ("bottom", bottom)) if n]  # fmt: skip
        views = list(zip([t for t, _ in picks], ins.with_texts(lf, *(s for _, s in picks))))
        if plot is not None:
            ins.plot(df, hist, plot, unit, title=name)
    except (pl.exceptions.PolarsError, OSError) as e:
        _fail(f"{version}: cannot read pairs: {str(e).splitlines()[0]}")
    except _user_errors() as e:
        _fail(str(e))
    out = _stdout()
    out.print(ins.stats_table(stats, f"{name}: {df.height} pairs", unit))
    out.print(f"margin histogram, {bins} bins over a range shared by the languages:")
    for line in ins.histogram_lines(hist):
        out.print(line, highlight=False)
    for title, sel in views:
        out.print(ins.pairs_view(sel, f"{name}: {title}", unit, max_chars))
    if plot is not None:
        err.print(f"[green]wrote[/] {plot}")


@app.command("versions")
def list_versions(
    dataset: Annotated[
        str | None, typer.Argument(help="One dataset in the store (default: every dataset).")
    ] = None,
    store: StoreDirOpt = "icr_store",
) -> None:
    """Every version of a dataset (or of every dataset in the store), oldest first: its parent,
    recipe digest (sha256 of the recorded recipe without 'store'), prompt/candidate/pair counts
    and creation time. '-' marks what an older manifest does not record."""
    from icr_data import inspect as ins

    try:
        rows = ins.list_versions(store, dataset)
    except _user_errors() as e:
        _fail(str(e))
    _stdout().print(ins.versions_table(rows))
    for r in rows:
        if r.get("error"):
            err.print(f"warning: {r['error']}", soft_wrap=True, highlight=False)


@app.command()
def diff(version_a: VersionRef, version_b: VersionRef, store: StoreDirOpt = "icr_store") -> None:
    """What changed from VERSION_A to VERSION_B: recipe keys (dotted, old -> new), models (name,
    sha256, revision per role), counts per language, and the margin distribution shift per
    language (deltas of mean, median, p10, p90, and the two-sample Kolmogorov-Smirnov D)."""
    import polars as pl

    from icr_data import inspect as ins
    from icr_data import store as st

    try:
        a, b = st.resolve_version(version_a, store), st.resolve_version(version_b, store)
        d = ins.diff_versions(a, b)
    except pl.exceptions.PolarsError as e:
        _fail(f"cannot read pairs: {str(e).splitlines()[0]}")
    except _user_errors() as e:
        _fail(str(e))
    out = _stdout()
    if not d["recipe"] and not d["models"]:
        out.print(f"{d['a']} -> {d['b']}: same recipe and models")
    for table in ins.diff_tables(d):
        out.print(table)


@app.command()
def publish(
    version: Annotated[
        str, typer.Argument(help="A version folder, or dataset/vN relative to --store.")
    ],
    repo: Annotated[str, typer.Option(help="Hub dataset repo OWNER/NAME (created if missing).")],
    private: Annotated[
        bool,
        typer.Option(
            "--private",
            help="Create the repo private. An existing public repo is refused, never flipped.",
        ),
    ] = False,
    dry_run: Annotated[
        Path | None,
        typer.Option(
            "--dry-run",
            help="Send nothing: write the files that would be uploaded, at their repo paths, "
            "and plan.json into this new or empty folder.",
        ),
    ] = None,
    store: Annotated[
        str, typer.Option(help="Store folder; a VERSION like dataset/vN is looked up inside it.")
    ] = "icr_store",
) -> None:
    """Publish a version to the Hugging Face Hub as one commit on main, tagged with the version
    name, so load_dataset(REPO, "pairs", revision="v1") loads it. Files of an earlier version
    that this one lacks are deleted from main (earlier tags keep them). An existing README.md's
    extra metadata is kept. The token comes from HF_TOKEN or `hf auth login`."""
    from icr_data.publish import dry_run as write_dry_run
    from icr_data.publish import execute, plan_publish

    try:
        plan = plan_publish(version, repo, private=private, store=store)
        if dry_run is not None:
            out = write_dry_run(plan, dry_run)
            size = sum(op.size or 0 for op in plan.adds)
            err.print(f"[green]dry run:[/] {len(plan.adds)} files ({size:,} bytes) for "
                      f"{plan.repo_id}@{plan.tag} and plan.json in {out}; nothing was sent")  # fmt: skip
            print(out)
            return
        result = execute(plan)
    except _user_errors() as e:
        _fail(str(e))
    gone = f", deleted {len(result.deleted)} old files" if result.deleted else ""
    err.print(f"[green]published[/] {plan.tag} to {result.repo_url} "
              f"(commit {result.commit_oid[:12]}{gone})")  # fmt: skip
    print(f"{result.repo_url}/tree/{result.tag}")


def _translate_tables(path: Path, manifest: dict, show: int = 20) -> list[Table]:
    """Kept / failed per language (failed by first reason), then the first `show` failures."""
    from icr_data.store import read_table

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


@app.command()
def translate(
    prompts: Annotated[
        str,
        typer.Argument(
            help="English prompts: a JSONL or Parquet file, a datasets folder, a prompts "
            "version, or a Hub dataset id (rows whose lang is not en are skipped)."
        ),
    ],
    to: Annotated[
        str, typer.Option("--to", help="Target languages, comma-separated ISO 639-1: es,de,fr,ru.")
    ],
    model: Annotated[
        str, typer.Option(help="Instruct or translation model: a folder, Hub id or builtin:NAME.")
    ],
    out: Annotated[str, typer.Option(help="Store folder; writes OUT/NAME/vN.")] = "icr_store",
    name: Annotated[str, typer.Option(help="Dataset name in the store.")] = "prompts",
    limit: Annotated[
        int | None, typer.Option(help="Translate a seeded sample of N prompts (after dedup).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample (and of the engine).")] = 0,
    template: Annotated[
        Path | None,
        typer.Option(
            help="File with the translation prompt; {source_language}, {target_language} "
            "and {text} are filled in (default: a translate-only instruction)."
        ),
    ] = None,
    column_map: Annotated[
        str | None,
        typer.Option(help="Source columns onto ours (SOURCE=OURS), e.g. prompt=instruction."),
    ] = None,
    split: Annotated[str, typer.Option(help="Hub sources: the split to read.")] = "train",
    backend: Annotated[str, typer.Option(help="vllm or transformers (slow fallback).")] = "vllm",
    max_tokens: Annotated[int, typer.Option(help="Longest translation, in tokens.")] = 1024,
    ratio: Annotated[
        list[str] | None,
        typer.Option(
            help="Length-ratio bounds (translation / English characters): LO:HI for every "
            "language, LANG=LO:HI for one (repeatable). Default 0.5:2.5."
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="Model dtype for the engine.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option(help="vLLM context length.")] = None,
    chat_template: Annotated[
        str | None, typer.Option(help="Chat template (inline or file) if the model has none.")
    ] = None,
    version: VersionOpt = None,
) -> None:
    """Translate English PROMPTS into every --to language with an instruct model (greedy
    decoding) and write a versioned prompts dataset (English rows kept): a recipe's prompts.source.

    Gates: target language, length ratio, code/URLs/numbers/placeholders kept, not answered.
    A translation that fails one is left out for its language and listed in data/failures."""
    from icr_data.translate import TranslateConfig, TranslateError, parse_column_map, parse_ratios
    from icr_data.translate import translate as run_translate

    if backend not in ("vllm", "transformers"):
        _fail(f"--backend must be vllm or transformers, got {backend!r}")
    try:
        default_ratio, ratio_by_lang = parse_ratios(ratio)
        cfg = TranslateConfig(
            source=prompts, languages=[x.strip() for x in to.split(",") if x.strip()],
            model=model, out=out, name=name, version=version, split=split,
            column_map=parse_column_map(column_map), limit=limit, seed=seed,
            template=str(template) if template else None, backend=backend,  # type: ignore[arg-type]
            max_tokens=max_tokens, dtype=dtype, max_model_len=max_model_len,
            chat_template=chat_template, ratio=default_ratio, ratio_by_lang=ratio_by_lang,
        )  # fmt: skip
    except TranslateError as e:
        _fail(str(e))
    with progress_bar(err) as progress:
        task = progress.add_task("translate", total=None, rate="")
        try:
            path, manifest = run_translate(
                cfg,
                advance=lambda k: progress.advance(task, k),
                on_total=lambda n: progress.update(task, total=n),
            )
        except _user_errors() as e:
            _fail(str(e))
    for table in _translate_tables(path, manifest):
        err.print(table)
    err.print(f"[green]wrote[/] {path}")
    print(path)


def _user_errors() -> tuple[type[BaseException], ...]:
    from icr_data.chat import TemplateError
    from icr_data.derive import DeriveError
    from icr_data.models import ModelError
    from icr_data.prompts import PromptError
    from icr_data.publish import PublishError
    from icr_data.ray_exec import RayError  # the module, not ray: ray is imported when used
    from icr_data.store import StoreError
    from icr_data.translate import TranslateError

    return (PromptError, ModelError, StoreError, TemplateError, DeriveError, PublishError,
            TranslateError, RayError)  # fmt: skip


def _fail(message: str) -> None:
    from rich.markup import escape  # a message's own brackets ('icr-data[ray]') are text

    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="icr-data")


if __name__ == "__main__":
    sys.exit(main())
