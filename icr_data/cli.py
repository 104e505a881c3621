"""The `icr-data` command line. It only parses options and dispatches to the modules that do the
work; the tables it prints are drawn in reports.py. Heavy imports (torch, vLLM, datasets, polars)
happen inside the commands so `icr-data --help` starts instantly. Over 400 lines: a thin typer
app of many commands, each a few lines of option parsing.

Errors: any `errors.IcrError` (a bad recipe, file, option or model) raised by a command becomes
one line `error: ...` on stderr and exit code 2; anything else is a bug and keeps its traceback.
Ctrl-C stops the command and its child processes (an engine starting included) in seconds, one
line, exit code 130; finished work is kept and resumes.

    icr-data build recipes/demo.yaml --store icr_store --set sampling.n=4
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from icr_data.base.config import FILTERS
from icr_data.base.console import progress_bar, stderr_console
from icr_data.base.errors import IcrError
from icr_data.base.registry import EXPORT_FORMATS, logprob_backends
from icr_data.base.registry import PAIRING_RULES as RULES


class _App(typer.Typer):
    """A Typer app whose every command turns an IcrError into one `error: ...` line, exit 2,
    and refuses a NaN or infinite number option (`--beta nan`: no option means one) before the
    command starts."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        def decorate(fn: Callable) -> Callable:
            doc = _reflowed(fn.__doc__ or "")
            kwargs.setdefault("help", doc)
            kwargs.setdefault("short_help", _first_sentence(doc))
            register = super(_App, self).command(*args, **kwargs)

            @functools.wraps(fn)
            def run(*a: Any, **k: Any) -> Any:
                for name, value in k.items():
                    if isinstance(value, float) and not math.isfinite(value):
                        _fail(f"--{name.replace('_', '-')} must be a finite number, got {value}")
                try:
                    return fn(*a, **k)
                except IcrError as e:
                    _fail(str(e))
                except KeyboardInterrupt:
                    _interrupted()

            return register(run)

        return decorate


def _reflowed(doc: str) -> str:
    """A docstring as help text: each paragraph's lines joined (the terminal wraps them), the
    blank lines between paragraphs kept."""
    import inspect
    import re

    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(doc))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _first_sentence(doc: str) -> str:
    """The command list's line: the help's first sentence."""
    first = doc.split("\n\n", 1)[0]
    end = first.find(". ")
    return first if end < 0 else first[: end + 1]


app = _App(
    help="Build multilingual preference datasets from an English implicit reward "
    "(implicit cross-lingual rewarding).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = stderr_console()
RESULTS = sys.stdout
"""Where a command's result goes (a version path, a report): the stdout main() was called with.
While a command runs, sys.stdout points at stderr, so a library that prints or logs to stdout
(DeepSpeed announcing its accelerator, say) never mixes into what a script reads."""


def _emit(text) -> None:
    print(text, file=RESULTS, flush=True)


@app.callback()
def _group(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show third-party logs (vLLM's engine) on stderr; by default they go to "
            "<store>/<dataset>/.work/logs/third_party.log.",
        ),
    ] = False,
) -> None:
    """Stages: prompts -> generate (vLLM) -> score (policy/reference log-probs) -> pairs -> version."""
    if verbose:
        import os

        from icr_data.base.logs import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"


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


StoreDirOpt = Annotated[
    str, typer.Option(help="Store folder; a VERSION like dataset/vN is looked up inside it.")
]
VersionRef = Annotated[
    str, typer.Argument(help="A version folder, or dataset/vN relative to --store.")
]
DEFAULT_STORE = "icr_store"


def _version(ref: str, store: str | None) -> Path:
    """The one version resolver of every command that reads a version (inspect, diff, export,
    pair, score, publish, ...): a version folder, or `dataset/vN` inside the store."""
    from icr_data.store.store import resolve_version

    return resolve_version(ref, DEFAULT_STORE if store is None else store)


def _is_recipe(source: Path) -> bool:
    """`score SOURCE`: a recipe is a (YAML) file; anything else names a version."""
    return source.is_file() or source.suffix in (".yaml", ".yml")


def _run(recipe: Path, store: str | None, set_: list[str] | None, **kwargs):
    from icr_data.base.config import load_recipe
    from icr_data.store.shards import parse_shard

    overrides = list(set_ or [])
    if store is not None:
        overrides.append(f"store={store}")
    cfg = load_recipe(recipe, overrides)
    try:
        part = parse_shard(kwargs.pop("shard", None))
    except ValueError as e:  # the --shard spelling
        _fail(str(e))
    if kwargs.get("executor", "local") not in ("local", "ray"):
        _fail(f"--executor must be local or ray, got {kwargs['executor']!r}")
    if kwargs.get("address") and kwargs.get("executor") != "ray":
        _fail("--address names a Ray cluster: use it with --executor ray")

    from icr_data.commands.build import build as run_build

    return run_build(cfg, console=err, part=part, **kwargs)


def _report_version(path: Path, manifest: dict) -> None:
    from icr_data.commands.reports import stability_line, summary_table

    err.print(summary_table(manifest))
    if line := stability_line((manifest.get("scoring") or {}).get("stability")):
        err.print(line, highlight=False)
    err.print(f"[green]wrote[/] {path}")
    _emit(path)


IfChangedOpt = Annotated[
    bool,
    typer.Option(
        "--if-changed",
        help="Write no new version when the pairs, candidates and recipe equal an earlier "
        "version's; print that version's path instead.",
    ),
]


def _report_result(result) -> None:
    if result.written:
        _report_version(result.path, result.manifest)
    else:  # --if-changed and nothing changed: build already said so
        _emit(result.path)


@app.command()
def build(
    recipe: RecipeArg,
    store: StoreOpt = None,
    version: VersionOpt = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    if_changed: IfChangedOpt = False,
) -> None:
    """Run every stage of RECIPE (prompts, vLLM generation, dual-logit scoring, pairing) and
    write a new immutable dataset version with its card. Prints the version's path.

    Work is saved shard by shard: after a crash, the same command skips finished shards."""
    if version is not None:  # before any work: v<N> only, never a path
        from icr_data.store.store import check_version_name

        check_version_name(version)
    result = _run(recipe, store, set_, version=version, executor=executor, address=address,
                  if_changed=if_changed)  # fmt: skip
    _report_result(result)


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
            help="A recipe (score its generated shards) or a version: a folder, or dataset/vN "
            "relative to --store (rescore its candidates under a new reward pair, into a new "
            "version)."
        ),
    ],
    store: Annotated[
        str | None,
        typer.Option(
            help="Store folder: overrides the recipe's 'store'; with a version given as "
            "dataset/vN, the store it is looked up in (default: icr_store)."
        ),
    ] = None,
    set_: SetOpt = None,
    shard: ShardOpt = None,
    policy: Annotated[str | None, typer.Option(help="Version mode: the new policy.")] = None,
    reference: Annotated[str | None, typer.Option(help="Version mode: the new reference.")] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="Version mode: cross_lingual, native or translate_en scoring."),
    ] = None,
    beta: Annotated[float | None, typer.Option(help="Version mode: reward scale.")] = None,
    count_eot: Annotated[
        bool | None, typer.Option(help="Version mode: count the end-of-turn token.")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help=f"Version mode: how log-probs are computed ({', '.join(logprob_backends())})."
        ),
    ] = None,
    version: VersionOpt = None,
    if_changed: IfChangedOpt = False,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
) -> None:
    """Score candidates under the policy and the reference.

    With a recipe: score its generated shards (all, or I mod N with --shard I/N).
    With a version folder: rescore its candidates (no regeneration) and write a new version;
    its work is kept as a build's is, so a killed rescore resumes when run again."""
    if not _is_recipe(source):
        from icr_data.commands.derive import rescore

        try:
            source = _version(str(source), store)
        except IcrError as e:
            _fail(f"{e} (nor a recipe file)")
        if address and executor != "ray":
            _fail("--address names a Ray cluster: use it with --executor ray")
        if mode not in (None, "cross_lingual", "native", "translate_en"):
            _fail(f"--mode must be cross_lingual, native or translate_en, got {mode!r}")
        given = {"mode": mode, "beta": beta, "count_eot": count_eot, "backend": backend}
        scoring = {k: v for k, v in given.items() if v is not None}
        path, manifest = rescore(source, policy, reference, scoring, name=version, console=err,
                                 executor=executor, address=address, if_changed=if_changed)  # fmt: skip
        _report_version(path, manifest)
        return
    if policy or reference or mode or backend or beta is not None or count_eot is not None:
        _fail("--policy/--reference/--mode/--beta/--count-eot/--backend rescore a version "
              "folder; with a recipe use --set models.policy=... etc.")  # fmt: skip
    _run(source, store, set_, shard=shard, stages=("score",), executor=executor, address=address)
    err.print("[green]scoring done[/] for " + (f"shard {shard}" if shard else "all shards"))


@app.command()
def pair(
    version_dir: VersionRef,
    strategy: Annotated[
        str | None,
        typer.Option(help=f"{', '.join(RULES)} (default: the parent's)."),
    ] = None,
    filters: Annotated[
        str | None,
        typer.Option(
            help=f"Comma list of filters among {','.join(FILTERS)} ('' for none; default: the "
            "parent's)."
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
    if_changed: IfChangedOpt = False,
    store: StoreDirOpt = "icr_store",
) -> None:
    """Pair an existing version again (new strategy or filters) into a new version; candidates,
    their responses and scores are reused, nothing is regenerated or rescored."""
    from icr_data.commands.derive import repair

    if strategy is not None and strategy not in RULES:
        _fail(f"--strategy must be one of {', '.join(RULES)}, got {strategy!r}")
    if length_unit not in (None, "chars", "tokens"):
        _fail(f"--length-unit must be chars or tokens, got {length_unit!r}")
    settings = {"rule": strategy, "k": k, "threshold": threshold, "min_margin": min_margin,
                "min_margin_quantile": min_margin_quantile, "length_unit": length_unit}  # fmt: skip
    settings = {key: v for key, v in settings.items() if v is not None}
    if filters is not None:
        settings["filters"] = [f.strip() for f in filters.split(",") if f.strip()]
    path, manifest = repair(_version(version_dir, store), settings, name=version,
                            if_changed=if_changed, console=err)  # fmt: skip
    _report_version(path, manifest)


@app.command()
def drop(
    version_dir: VersionRef,
    pairs: Annotated[
        Path,
        typer.Option(
            help="JSONL or CSV naming the pairs to drop: prompt_id, lang, chosen_sample_idx, "
            "rejected_sample_idx and reason (other columns are ignored)."
        ),
    ],
    reason: Annotated[
        str | None, typer.Option(help="The reason for rows without a reason of their own.")
    ] = None,
    version: VersionOpt = None,
    store: StoreDirOpt = "icr_store",
) -> None:
    """Write a new version without the pairs a file names, each dropped by hand for a reason.

    Curation stays versioned: the parent is never edited. Pairing is not run again: the parent's
    other pairs are kept as they are, its candidates are reused, and the new version's manifest
    and card name the parent, the dropped pairs and why."""
    from icr_data.commands.curate import drop_file

    path, manifest = drop_file(_version(version_dir, store), pairs, reason, name=version,
                               console=err)  # fmt: skip
    _report_version(path, manifest)


@app.command()
def merge(
    recipe: RecipeArg, store: StoreOpt = None, version: VersionOpt = None, set_: SetOpt = None,
    if_changed: IfChangedOpt = False,
) -> None:  # fmt: skip
    """Pair the finished shards of RECIPE and write a new version (after generate/score --shard)."""
    result = _run(recipe, store, set_, version=version, stages=("merge",), if_changed=if_changed)
    _report_result(result)


@app.command()
def prepare(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Model strings: builtin:NAME, train:CONFIG (folders and Hub ids need nothing)."
        ),
    ],
) -> None:
    """Prepare models before they are used: build builtin: models and train train:CONFIG models
    (their starting models first) into the cache. build, rescore, check-reward, translate and
    train run this step themselves; run it alone to do the work up front. Prints each path."""
    from icr_data.commands import prepare as prep
    from icr_data.stages import models as model_refs

    steps = prep.plan(models)
    prep.run([s for s in steps if not s.done], err)
    for spec in models:
        _emit(model_refs.resolve(spec, "model"))


@app.command()
def export(
    version_dir: VersionRef,
    out: Annotated[Path, typer.Option(help="Folder to write into (created if missing).")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help=f"{', '.join(EXPORT_FORMATS.names())} (what each writes: docs/export.md).",
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
    store: StoreDirOpt = "icr_store",
) -> None:
    """Write a version's pairs for an external trainer (TRL, LLaMA-Factory, plain JSONL)."""
    from icr_data.commands.export import export as run_export

    EXPORT_FORMATS.check(format)  # one line, with the close name
    files = run_export(_version(version_dir, store), format, out, ref_logps=ref_logps)
    for f in files:
        err.print(f"[green]wrote[/] {f}")
        _emit(f)


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(help="YAML training config, e.g. recipes/dpo_demo.yaml.")
    ],
    set_: SetOpt = None,
) -> None:
    """Train on a version with the thin DPO recipe (DPO sigmoid + optional NLL; LoRA or full).

    Writes the trained model, its LoRA adapter and training.json to the config's output_dir."""
    from icr_data.base.train_config import load_train_config
    from icr_data.commands import prepare
    from icr_data.commands.train import check_output_dir
    from icr_data.commands.train import train as run_train

    cfg = load_train_config(config, list(set_ or []))
    check_output_dir(cfg)  # not inside a version, not a trained model: before any model
    from accelerate import PartialState  # one process, or one of several under accelerate launch

    state = PartialState()
    named = {"model": cfg.model, **({"reference": cfg.reference} if cfg.reference else {})}
    with state.main_process_first():  # the others find what the main process prepared
        prepare.resolve_models(named, err)
    record = run_train(cfg, console=err)
    if state.is_main_process:
        err.print(
            f"[green]wrote[/] {cfg.output_dir} ({record['steps']} steps, {record['seconds']}s)"
        )
        _emit(cfg.output_dir)


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
        Path | None,
        typer.Option(
            help="Labelled pairs (JSONL/Parquet): prompt_id, lang, instruction, chosen, "
            "rejected, with the English row of every prompt. Or give --benchmark."
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="cross_lingual (English instruction + directive) or native; default "
            "cross_lingual (native for mm-eval, whose items have no English twins)."
        ),
    ] = None,
    beta: Annotated[float, typer.Option(help="reward = beta * (logp_policy - logp_ref).")] = 1.0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
    agreement: Annotated[
        bool,
        typer.Option(
            "--agreement",
            help="Also score in the other mode (native / cross_lingual) and report, per "
            "language, the Kendall tau per prompt between the two rewards.",
        ),
    ] = False,
    benchmark: Annotated[
        str | None,
        typer.Option(
            help="A public benchmark instead of --pairs: m-rewardbench (Hub "
            "CohereLabsCommunity/multilingual-reward-bench, parallel to English RewardBench) or "
            "mm-eval (prometheus-eval/MM-Eval). Writes a record listed by `icr-data evals`."
        ),
    ] = None,
    benchmark_path: Annotated[
        Path | None,
        typer.Option(help="A local copy of the benchmark in its Hub layout (offline use)."),
    ] = None,
    languages: Annotated[
        str | None, typer.Option(help="Benchmark languages, e.g. es,de,fr,ru (default: all).")
    ] = None,
    subset: Annotated[
        str | None,
        typer.Option(help="Benchmark categories, e.g. chat,safety,reasoning (default: all)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Only the benchmark's first N items (in every language).")
    ] = None,
    floor: Annotated[
        float, typer.Option(help="Verdict: build only if the 95% interval lies above this.")
    ] = 0.5,
    max_drop: Annotated[
        float,
        typer.Option(help="Verdict: build only if accuracy drops at most this against English."),
    ] = 0.05,
    name: Annotated[
        str | None, typer.Option(help="Record name (default: check-BENCHMARK).")
    ] = None,
    store: Annotated[str, typer.Option(help="Store folder for the record.")] = DEFAULT_STORE,
    version: VersionOpt = None,
) -> None:
    """How well an implicit reward ranks labelled pairs, per language, before generating anything.

    Prints accuracy (reward(chosen) > reward(rejected)) with a 95% Wilson interval, ties, the mean
    margin, and accuracy by length difference (chosen shorter / similar / longer by 20%).

    With --benchmark: per language accuracy with its interval, the transfer gap (accuracy minus
    English accuracy on the same items), cross-lingual vs native accuracy, per category, and a
    verdict (build / doubtful / do not build, by the rule printed with it); written as a record
    (card, manifest, rows) whose path is printed."""
    import json

    from icr_data.base.config import ScoringConfig
    from icr_data.commands.check import check_reward as run_check
    from icr_data.commands.reports import check_table
    from icr_data.stages.agreement import noise_verdicts

    if mode not in (None, "cross_lingual", "native"):
        _fail(f"--mode must be cross_lingual or native, got {mode!r}")
    if (pairs is None) == (benchmark is None):
        _fail("give either --pairs FILE or --benchmark NAME (m-rewardbench, mm-eval)")
    if benchmark is not None:
        if agreement or json_out:
            _fail("--agreement and --json go with --pairs; a benchmark check compares the modes "
                  "and writes its record anyway")  # fmt: skip
        mode = mode or ("native" if benchmark == "mm-eval" else "cross_lingual")
        return _check_benchmark(benchmark, policy, reference, ScoringConfig(mode=mode, beta=beta),
                                benchmark_path, languages, subset, limit, floor, max_drop, name,
                                store, version)  # fmt: skip
    mode = mode or "cross_lingual"
    if json_out is not None:  # before any model: never into a version (immutable)
        from icr_data.store.store import refuse_inside_version

        refuse_inside_version(json_out, "--json", "the report ")
    with progress_bar(err) as progress:
        report = run_check(policy, reference, pairs, ScoringConfig(mode=mode, beta=beta),
                           console=err, progress=progress, agreement=agreement)  # fmt: skip
    err.print(check_table(report))
    for lang, r in report["languages"].items():
        if r["includes_chance"]:
            err.print(f"[yellow]warning:[/] {lang}: the accuracy interval includes chance (0.5): "
                      "this reward's pairs in this language are likely noise", highlight=False)  # fmt: skip
    if report["agreement"]:
        a, b = report["agreement"]["modes"]
        for lang, r in report["agreement"]["languages"].items():
            spread = "" if r["sd_tau"] is None else f" (sd {r['sd_tau']:.2f})"
            tau = "-" if r["mean_tau"] is None else f"{r['mean_tau']:+.2f}"
            err.print(f"{lang}: {a} vs {b} rewards, mean Kendall tau per prompt {tau}{spread} "
                      f"over {r['prompts']} prompts", highlight=False)  # fmt: skip
        for lang, reasons in noise_verdicts(report["agreement"]["languages"], None, (a, b)).items():
            for why in reasons:
                err.print(f"[yellow]warning:[/] {lang}: {why}", highlight=False)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        err.print(f"[green]wrote[/] {json_out}")


def _check_benchmark(benchmark, policy, reference, scoring, path, languages, subset, limit,
                     floor, max_drop, name, store, version) -> None:  # fmt: skip
    """check-reward --benchmark: run it (commands/reward_check.py), print its tables, the rule
    and each language's verdict on stderr, the record's path on stdout."""
    from icr_data.commands.reward_check import VerdictRule, check_benchmark, tables

    def listed(text: str | None) -> list[str] | None:
        return [x.strip() for x in text.split(",") if x.strip()] if text else None

    rule = VerdictRule(floor=floor, max_drop=max_drop)
    with progress_bar(err) as progress:
        path, manifest = check_benchmark(
            benchmark, policy, reference, scoring, languages=listed(languages),
            subsets=listed(subset), path=path, limit=limit, rule=rule, store=store, name=name,
            version=version, console=err, progress=progress,
        )  # fmt: skip
    for table in tables(manifest):
        err.print(table)
    err.print(f"verdict rule: {rule.text()}", highlight=False)
    for lang, r in manifest["results"].items():
        err.print(f"{lang}: {r['verdict']}: {r['reason']}", highlight=False)
    err.print(f"[green]wrote[/] {path}")
    _emit(path)


def _stdout():
    """Reports are the product of these commands: they go to stdout (pipe them to less)."""
    from rich.console import Console

    out = Console(file=RESULTS)
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
    from icr_data.commands import inspection as ins
    from icr_data.commands.reports import inspect_report
    from icr_data.store import store as st

    if sort not in ins.SORT_KEYS:
        _fail(f"--sort must be one of {', '.join(ins.SORT_KEYS)}, got {sort!r}")
    if length_unit not in (None, "chars", "tokens"):
        _fail(f"--length-unit must be chars or tokens, got {length_unit!r}")
    if bins < 1 or (top or 0) < 0 or (bottom or 0) < 0:
        _fail("--bins must be >= 1 and --top/--bottom >= 0")
    path = _version(version, store)
    manifest = st.read_manifest(path)
    if manifest.get("kind") == "eval":  # an eval record: its tables and rows
        from icr_data.commands.reports import eval_rows_table, eval_tables

        rows = st.read_table(path, "rows").to_list()
        out = _stdout()
        for table in eval_tables(manifest):
            out.print(table)
        out.print(eval_rows_table(rows, lang, 3 if top is None else top, max_chars))
        return
    if manifest.get("kind") == "reward_check":  # check-reward --benchmark: its report
        from icr_data.commands.reward_check import tables

        out = _stdout()
        for table in tables(manifest):
            out.print(table)
        for code, r in manifest["results"].items():
            out.print(f"{code}: {r['verdict']}: {r['reason']}", highlight=False)
        return
    from icr_data.store.integrity import require_whole

    require_whole(path)  # a dataset version: whole (sizes, footers, row counts), or one line
    if plot is not None:  # any version folder, not only this one: all are immutable
        st.refuse_inside_version(plot, "--plot", "the PNG ")
    report = ins.inspect_version(path, lang, length_unit, sort, top, bottom, bins)
    if plot is not None:
        try:
            ins.plot(report.df, report.hist, plot, report.unit, title=report.name)
        except OSError as e:
            _fail(f"--plot {plot}: cannot write it: {e.strerror or e}")
    out = _stdout()
    for part in inspect_report(report, max_chars):
        out.print(part, highlight=False)
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
    from icr_data.commands.inspection import list_versions as run_list
    from icr_data.commands.reports import versions_table

    rows = run_list(store, dataset)
    _stdout().print(versions_table(rows))
    for r in rows:
        if r.get("error"):
            err.print(f"warning: {r['error']}", soft_wrap=True, highlight=False)


@app.command()
def diff(version_a: VersionRef, version_b: VersionRef, store: StoreDirOpt = "icr_store") -> None:
    """What changed from VERSION_A to VERSION_B: recipe keys (dotted, old -> new), models (name,
    sha256, revision per role), counts per language, and the margin distribution shift per
    language (deltas of mean, median, p10, p90, and the two-sample Kolmogorov-Smirnov D)."""
    from icr_data.commands.inspection import diff_versions
    from icr_data.commands.reports import diff_tables

    d = diff_versions(_version(version_a, store), _version(version_b, store))
    out = _stdout()
    if not d["recipe"] and not d["models"]:
        out.print(f"{d['a']} -> {d['b']}: same recipe and models")
    for table in diff_tables(d):
        out.print(table)


@app.command()
def verify(version: VersionRef, store: StoreDirOpt = "icr_store") -> None:
    """Check that a version is whole: every data file listed in its manifest exists, reads as
    Parquet and hashes to the digest in its name, none is unlisted, and the row counts are the
    manifest's. One line per problem, naming the file; exit status 2 when there is any."""
    from icr_data.store import integrity
    from icr_data.store import store as st

    path = st.resolve_version(version, store)
    problems = integrity.check(path, full=True)
    if problems:
        from rich.markup import escape

        for line in problems[:-1]:
            err.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        _fail(problems[-1])
    err.print(f"[green]whole:[/] {path}", highlight=False, soft_wrap=True)


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
    allow_local_paths: Annotated[
        bool,
        typer.Option(
            "--allow-local-paths",
            help="Upload the card and manifest even if they hold strings that look like absolute "
            "local paths (home folders, /tmp, drive letters); refused by default.",
        ),
    ] = False,
) -> None:
    """Publish a version to the Hugging Face Hub as one commit on main, tagged with the version
    name, so load_dataset(REPO, "pairs", revision="v1") loads it. Files of an earlier version
    that this one lacks are deleted from main (earlier tags keep them). An existing README.md's
    extra metadata is kept. The token comes from HF_TOKEN or `hf auth login`."""
    from icr_data.commands.publish import dry_run as write_dry_run
    from icr_data.commands.publish import execute, plan_publish

    plan = plan_publish(
        version, repo, private=private, store=store, allow_local_paths=allow_local_paths
    )
    if dry_run is not None:
        out = write_dry_run(plan, dry_run)
        size = sum(op.size or 0 for op in plan.adds)
        err.print(f"[green]dry run:[/] {len(plan.adds)} files ({size:,} bytes) for "
                  f"{plan.repo_id}@{plan.tag} and plan.json in {out}; nothing was sent")  # fmt: skip
        _emit(out)
        return
    result = execute(plan)
    gone = f", deleted {len(result.deleted)} old files" if result.deleted else ""
    err.print(f"[green]published[/] {plan.tag} to {result.repo_url} "
              f"(commit {result.commit_oid[:12]}{gone})")  # fmt: skip
    _emit(f"{result.repo_url}/tree/{result.tag}")


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
    from icr_data.commands.reports import translate_tables
    from icr_data.commands.translate import TranslateConfig, parse_column_map, parse_ratios
    from icr_data.commands.translate import translate as run_translate

    if backend not in ("vllm", "transformers"):
        _fail(f"--backend must be vllm or transformers, got {backend!r}")
    default_ratio, ratio_by_lang = parse_ratios(ratio)
    cfg = TranslateConfig(
        source=prompts, languages=[x.strip() for x in to.split(",") if x.strip()],
        model=model, out=out, name=name, version=version, split=split,
        column_map=parse_column_map(column_map), limit=limit, seed=seed,
        template=str(template) if template else None, backend=backend,  # type: ignore[arg-type]
        max_tokens=max_tokens, dtype=dtype, max_model_len=max_model_len,
        chat_template=chat_template, ratio=default_ratio, ratio_by_lang=ratio_by_lang,
    )  # fmt: skip
    with progress_bar(err) as progress:
        path, manifest = run_translate(cfg, console=err, progress=progress)
    for table in translate_tables(path, manifest):
        err.print(table)
    err.print(f"[green]wrote[/] {path}")
    _emit(path)


@app.command("eval")
def eval_command(
    recipe: Annotated[Path, typer.Argument(help="YAML eval recipe, e.g. recipes/eval_demo.yaml.")],
    set_: SetOpt = None,
    store: StoreOpt = None,
    version: VersionOpt = None,
) -> None:
    """Pit a candidate model against a baseline on held-out prompts, per language, with one or
    more judges (llm:MODEL in both orders, reward:MODEL, implicit:POLICY,REFERENCE); write an
    eval record (card, manifest with the candidate's training lineage, one row per judge and
    prompt). Prints the record's path. A killed eval resumes."""
    from icr_data.commands.evaluation import evaluate, load_eval
    from icr_data.commands.reports import eval_tables

    overrides = list(set_ or []) + ([f"store={store}"] if store is not None else [])
    cfg = load_eval(recipe, overrides)
    with progress_bar(err) as progress:
        path, manifest = evaluate(cfg, console=err, progress=progress, version=version)
    for table in eval_tables(manifest):
        err.print(table)
    err.print(f"[green]wrote[/] {path}")
    _emit(path)


@app.command("evals")
def list_evals(
    store: Annotated[str, typer.Option(help="Store folder holding eval records.")] = "icr_store",
) -> None:
    """Every eval record in the store: the data its candidate trained on (dataset/version), the
    candidate, the judge, and per language WR / LC, so that versions compare at a glance."""
    from icr_data.commands.evaluation import list_evals as find
    from icr_data.commands.reports import evals_table

    _stdout().print(evals_table(find(store)))


@app.command("view")
def view(
    store: Annotated[str, typer.Argument(help="The store folder to look at.")] = DEFAULT_STORE,
    host: Annotated[
        str, typer.Option(help="Address to listen on (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 0,
) -> None:
    """Look at a store in a browser: versions, dashboards, pairs, prompts, diffs and eval
    records, and curate a version by hand into a child version. Prints the URL and serves until
    Ctrl-C; versions are only read (a curated version is a new one, written as `pair` writes)."""
    from icr_data.view.app import serve

    def announce(url: str) -> None:
        err.print(f"[green]serving[/] {store} at {url} (Ctrl-C stops)", highlight=False)
        _emit(url)  # stdout: the URL alone, for a script to read

    serve(store, host, port, announce=announce)


def _interrupted() -> NoReturn:
    """One Ctrl-C: stop this process's children (an engine's processes, starting or running),
    say what is kept, exit 130 (the shell's code for SIGINT) within seconds."""
    from icr_data.base.processes import INTERRUPTED, stop_children

    stop_children()
    err.print(f"[yellow]{INTERRUPTED}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def _fail(message: str) -> NoReturn:
    from rich.markup import escape  # a message's own brackets ('icr-data[ray]') are text

    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def main(argv: list[str] | None = None) -> None:
    import contextlib

    global RESULTS
    RESULTS = sys.stdout
    args = sys.argv[1:] if argv is None else argv
    helping = not args or "--help" in args or "-h" in args  # help is the result: stdout
    with contextlib.nullcontext() if helping else contextlib.redirect_stdout(sys.stderr):
        app(args=argv, prog_name="icr-data")


if __name__ == "__main__":
    sys.exit(main())
