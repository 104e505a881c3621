"""Evaluate: did a version help, and in which language? A candidate model against a baseline on
held-out prompts, per language, judged pairwise; the result is a versioned eval record.

    icr-data eval recipes/eval_demo.yaml [--set judges=[implicit:P,R]]
    icr-data evals [--store icr_store]      # every record: dataset version -> model -> WR, LC

Answers come from the build's generation stage (stages.GenerateStage; vLLM, greedy by default),
shard by shard through the local executor with work under `<store>/<name>/.work`, so a killed
eval resumes. Judges (`judges:` in the recipe, one or more) are the kinds registry.JUDGES names
(judges.py: `llm:MODEL` in both orders, `reward:MODEL`, `implicit:POLICY,REFERENCE`; api_judge.py:
`llm:openai:MODEL@URL`, a server's model); this module reaches them only through that registry.

Per language: win rate with its standard error, the length-controlled win rate (lc_win_rate), the
share of answers in the prompt's language (language ID), mean answer lengths, and the LLM judge's
position consistency (winrates.py); with `lc: alpaca_eval` also AlpacaEval 2's LC (lc_alpaca.py).
`prompts.layout: x-alpacaeval` reads the paper's X-AlpacaEval (stages/x_alpacaeval.py;
recipes/eval_paper.yaml). Prompts that also occur in the candidate's training data (exactly, or after
normalising case, punctuation and whitespace) are flagged and left out unless
`prompts.keep_overlap`. The record `<store>/<name>/vN/` holds a card, a manifest (with the lineage
read from the candidate's training.json) and one row per (judge, prompt).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import icr_data
from icr_data.base.config import SamplingConfig, validate_sampling
from icr_data.base.errors import IcrError
from icr_data.base.registry import JUDGES, RegistryError
from icr_data.base.yamlconf import load, resolve_path
from icr_data.commands.winrates import normalise, summarize

if TYPE_CHECKING:
    from icr_data.commands.judges import Judge

EVAL_PATHS = ("prompts.source", "prompts.training_version", "judge_template", "previous",
              "candidate", "baseline", "prompts.extra", "lc_difficulty")  # fmt: skip
"""Fields resolved against the recipe's folder (`train:CONFIG` keeps its prefix); a judge's
models are resolved too (judge_paths)."""


class EvalError(IcrError):
    """An evaluation that cannot run; the message names the key, file or model."""


@dataclass
class EvalPrompts:
    source: str = ""
    """Held-out prompts: a prompts version from `icr-data translate`, or a JSONL/Parquet file;
    with `layout: x-alpacaeval`, an X-AlpacaEval folder or its Hub id (stages/x_alpacaeval.py)."""
    layout: Literal["rows", "x-alpacaeval"] = "rows"
    """rows: prompt_id, lang, instruction; x-alpacaeval: one JSON file per language."""
    extra: str | None = None
    """x-alpacaeval: a folder with the languages `source` lacks (ru.json ...)."""
    languages: list[str] = field(default_factory=lambda: ["en", "es", "de", "fr", "ru"])
    limit: int | None = None
    """At most this many prompt_ids (the first ones); None: all."""
    training_version: str | None = None
    """Data whose prompts count as seen in training; None: the candidate's training.json source."""
    keep_overlap: bool = False
    """Keep (still flagged) prompts that also occur in the training data."""


@dataclass
class EvalConfig:
    name: str = ""
    """Record name: records go to <store>/<name>/vN."""
    store: str = "icr_store"
    candidate: str = ""
    """The model under test: any model string (folder, builtin:, train:CONFIG, Hub id)."""
    baseline: str = ""
    previous: str | None = None
    """A training record (training.json, or its folder): `candidate` or `baseline` set to
    `previous` means the model it trained, as `round.previous` does in a build recipe."""
    judges: list[str] = field(default_factory=list)
    """KIND:MODEL[,MODEL], one or more, of the kinds in registry.JUDGES (judges.py): llm:MODEL,
    reward:MODEL, implicit:POLICY,REFERENCE or llm:openai:MODEL@URL (key in $OPENAI_API_KEY)."""
    judge_template: str | None = None
    """File with the pairwise judge prompt ({instruction}, {answer_a}, {answer_b}); None: shipped."""
    judge_max_tokens: int = 64
    beta: float = 1.0
    """implicit judges: reward = beta * (log pi - log ref)."""
    chat_template: str | None = None
    prompts: EvalPrompts = field(default_factory=EvalPrompts)
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(n=1, temperature=0.0, max_tokens=512)
    )
    shard_prompts: int = 64
    lc: Literal["one_pair", "alpaca_eval"] = "one_pair"
    """one_pair: the one-pair LC (lc_win_rate); alpaca_eval: also AlpacaEval 2's GLM
    (lc_alpaca.py), as lc_alpaca_eval."""
    lc_difficulty: str | None = None
    """lc alpaca_eval: AlpacaEval's instruction_difficulty.csv or df_gamed.csv (regularised), or
    a table of prompt_id, instruction_difficulty; None: no difficulty term."""


def load_eval(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """An eval recipe (yamlconf.load), relative paths resolved against its folder, `previous`
    read from the training record it names."""
    cfg = load(path, EvalConfig, overrides, what="eval recipe", error=EvalError, paths=EVAL_PATHS,
               keep=("previous",))  # fmt: skip
    for key in ("candidate", "baseline"):
        if getattr(cfg, key) == "previous":
            from icr_data.base.config import RecipeError, RoundConfig, previous_model

            try:
                spec = previous_model(RoundConfig(previous=cfg.previous), f"{path}: '{key}'")
            except RecipeError as e:
                raise EvalError(str(e).replace("'round.previous'", "'previous'")) from None
            setattr(cfg, key, spec)
    base = Path(path).resolve().parent
    cfg.judges = [judge_paths(j, base) for j in cfg.judges]
    check(cfg, str(path))
    return cfg


def judge_paths(spec: str, base: Path) -> str:
    """A judge's spec, its models resolved against the recipe's folder `base`."""
    kind, _, rest = spec.partition(":")
    return f"{kind}:" + ",".join(resolve_path(m, base) for m in rest.split(",")) if rest else spec


def judge_label(spec: str) -> str:
    """A judge as the record names it (Judge.label): no folder of this machine, no secret."""
    return parse_judge(spec).label()


def parse_judge(spec: str, where: str = "judges") -> Judge:
    """'implicit:P,R' -> that kind's Judge (registry.JUDGES) for [P, R]; an unknown kind (with
    the closest known one) and the wrong number of models are refused."""
    kind, sep, rest = spec.partition(":")
    for name in JUDGES.names():  # a kind with a colon (llm:openai) before its first word
        if ":" in name and spec.startswith(name + ":"):
            kind, sep, rest = name, ":", spec[len(name) + 1 :]
    try:
        JUDGES.check(kind, f"{where}: {spec!r}")
    except RegistryError as e:
        raise EvalError(str(e)) from None
    cls = JUDGES.load(kind)
    names = [m for m in rest.split(",") if m] if sep else []
    if len(names) != len(cls.models):
        raise EvalError(f"{where}: {spec!r} is not {cls.usage()}")
    return cls(spec, names)


def check(cfg: EvalConfig, where: str) -> None:
    """What can be refused before any model loads."""
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise EvalError(f"{where}: 'name' must be a plain name, got {cfg.name!r}")
    for key in ("candidate", "baseline"):
        if not getattr(cfg, key):
            raise EvalError(f"{where}: '{key}' is required")
    if cfg.candidate == cfg.baseline:
        raise EvalError(f"{where}: candidate and baseline are the same model ({cfg.candidate})")
    if not cfg.judges:
        raise EvalError(f"{where}: 'judges' names no judge")
    for j in cfg.judges:
        parse_judge(j, where)
    if cfg.sampling.n != 1:
        raise EvalError(f"{where}: 'sampling.n' must be 1 (one answer per prompt and model)")
    validate_sampling(cfg.sampling, where, EvalError)
    if cfg.prompts.limit is not None and cfg.prompts.limit < 1:
        raise EvalError(f"{where}: 'prompts.limit' must be >= 1 (or null for all), "
                        f"got {cfg.prompts.limit}")  # fmt: skip
    if cfg.shard_prompts < 1 or cfg.judge_max_tokens < 1:
        raise EvalError(f"{where}: 'shard_prompts' and 'judge_max_tokens' must be >= 1")
    if not (cfg.beta > 0 and cfg.beta != float("inf")):
        raise EvalError(f"{where}: 'beta' must be a finite number > 0, got {cfg.beta}")
    if not cfg.prompts.source:
        raise EvalError(f"{where}: 'prompts.source' is required")
    if cfg.lc_difficulty and cfg.lc != "alpaca_eval":
        raise EvalError(f"{where}: 'lc_difficulty' is read by 'lc: alpaca_eval' only")


# ------------------------------------------------------------------------------- the run
def _prompts(cfg: EvalConfig) -> list[dict]:
    from icr_data.stages.prompts import PromptError, check_rows, read_rows
    from icr_data.stages.x_alpacaeval import load_x_alpacaeval

    p = cfg.prompts
    try:
        if p.layout == "x-alpacaeval":
            rows = load_x_alpacaeval(p.source, p.languages, p.extra)
        else:
            rows = read_rows(p.source)
        check_rows(rows, cfg.prompts.source)
    except PromptError as e:
        raise EvalError(str(e)) from None
    have = {r["lang"] for r in rows}
    missing = [lang for lang in cfg.prompts.languages if lang not in have]
    if missing:
        raise EvalError(f"prompts.source {cfg.prompts.source}: no prompts in "
                        f"{', '.join(missing)} (prompts.languages asks for them)")  # fmt: skip
    order = list(dict.fromkeys(r["prompt_id"] for r in rows))
    keep = set(order[: cfg.prompts.limit] if cfg.prompts.limit else order)
    langs = cfg.prompts.languages
    return sorted((r for r in rows if r["prompt_id"] in keep and r["lang"] in langs),
                  key=lambda r: (order.index(r["prompt_id"]), langs.index(r["lang"])))  # fmt: skip


def training_record(model_path: str) -> dict | None:
    f = Path(model_path) / "training.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def lineage(record: dict | None) -> dict | None:
    """What the candidate was trained on, from its training.json: dataset, version, round and
    the reward pair that labelled the data."""
    if record is None:
        return None
    data = record.get("data") or {}
    rounds = record.get("rounds") or []
    return {"dataset": data.get("dataset"), "version": data.get("version"),
            "source": Path(str(data.get("source"))).name if data.get("source") else None,
            "manifest_sha256": data.get("manifest_sha256"), "round": record.get("round"),
            "reward": rounds[-1].get("reward") if rounds else None}  # fmt: skip


def training_prompts(cfg: EvalConfig, record: dict | None) -> set[str]:
    """Normalised instructions of the data the candidate trained on (a version or a file)."""
    source = cfg.prompts.training_version or ((record or {}).get("data") or {}).get("source")
    if not source:
        return set()
    path = Path(source)
    texts: list[str] = []
    if (path / "manifest.json").is_file():
        from icr_data.store.store import read_table

        texts = read_table(path, "candidates")["instruction"]
    elif path.is_file():
        from icr_data.stages.prompts import read_rows

        texts = [r.get("instruction") or r.get("prompt") or "" for r in read_rows(str(path))]
        texts = [t if isinstance(t, str) else t[0]["content"] for t in texts]
    else:
        raise EvalError(f"prompts.training_version: {source} is neither a version nor a file")
    return {normalise(t) for t in texts}


@dataclass
class EvalRun:
    """An eval under way, as its judges see it: the recipe, the executor that keeps its work
    (so a killed eval resumes), and where progress goes."""

    cfg: EvalConfig
    executor: Any
    console: Any = None
    progress: Any = None

    def answers(self, model: str, model_id: dict, rows: list[dict], label: str,
                sampling: SamplingConfig | None = None) -> list[str]:  # fmt: skip
        """One answer per row from the generation stage (`sampling`, default the recipe's)."""
        from datasets import Dataset

        from icr_data.core.runner import run_rows
        from icr_data.stages.stages import GenerateStage, model_key

        cfg = self.cfg
        stage = GenerateStage(model=model, model_key=model_key(model_id),
                              sampling=sampling or cfg.sampling, chat_template=cfg.chat_template,
                              model_id=model_id)  # fmt: skip
        data = Dataset.from_list(
            [{k: r[k] for k in ("prompt_id", "lang", "instruction")} for r in rows]
        )
        out, _ = run_rows(self.executor, stage, data, cfg.shard_prompts, label)
        return list(out["response"])


def check_record_name(cfg: EvalConfig) -> None:
    """An eval record is a version of its own `name` in the store: refused when that name is a
    dataset's (its record would become the dataset's next version)."""
    from icr_data.store.store import read_manifest, refuse_inside_version, versions

    folder = Path(cfg.store) / cfg.name
    refuse_inside_version(folder, "store", "the eval record ")  # versions are immutable
    for v in versions(folder) if folder.is_dir() else []:
        try:
            kind = read_manifest(folder / v).get("kind")
        except IcrError:
            kind = None
        if kind != "eval":
            raise EvalError(f"name: {cfg.name!r} is a dataset in {cfg.store} ({folder / v}); "
                            "an eval record needs a name of its own")  # fmt: skip


def evaluate(
    cfg: EvalConfig, console=None, progress=None, version: str | None = None
) -> tuple[Path, dict]:
    """Answer, judge, summarise and write an eval record: (its folder, its manifest)."""
    from datasets import Dataset

    from icr_data.base.logs import log_to
    from icr_data.commands import prepare
    from icr_data.core.executor import LocalExecutor
    from icr_data.core.runner import run_rows
    from icr_data.stages import models
    from icr_data.stages.stages import LangIdStage
    from icr_data.store.shards import WorkDir
    from icr_data.store.store import check_version_name, write_version

    rows = _prompts(cfg)  # before any model: bad prompts are the cheap error
    difficulty = None  # lc: alpaca_eval's table, checked to cover every prompt before any model
    if cfg.lc_difficulty:
        from icr_data.commands.lc_alpaca import difficulty_for

        difficulty = difficulty_for(cfg.lc_difficulty, [r["prompt_id"] for r in rows])
    if version is not None:
        check_version_name(version)
    check_record_name(cfg)
    judges = [parse_judge(j) for j in cfg.judges]
    for judge in judges:  # a missing or placeholder-less template, before any model answers
        judge.prompt_template(cfg)
    named = {k: getattr(cfg, k) for k in ("candidate", "baseline")}
    for i, j in enumerate(judges):  # the key names the judge: judges[0], judges[1] policy, ...
        named.update({f"judges[{i}]" + (f" {part.lower()}" if len(j.names) > 1 else ""): m
                      for part, m in zip(j.models, j.names) if not j.remote})  # fmt: skip
    paths = prepare.resolve_models(named, console)
    paths = {k: paths[k] for k in ("candidate", "baseline")}
    if paths["candidate"] == paths["baseline"]:
        raise EvalError(f"candidate and baseline are the same model ({paths['candidate']})")
    for judge in judges:
        judge.resolve()
    ids = {k: models.identity(getattr(cfg, k), p) for k, p in paths.items()}
    record = training_record(paths["candidate"])
    seen = training_prompts(cfg, record)
    for r in rows:
        r["in_training"] = normalise(r["instruction"]) in seen
    overlap = sum(r["in_training"] for r in rows)
    if not cfg.prompts.keep_overlap:
        rows = [r for r in rows if not r["in_training"]]
    if not rows:
        raise EvalError("every prompt also occurs in the training data; nothing is held out")

    work = WorkDir(Path(cfg.store) / cfg.name / ".work")
    log_to(work.root / "logs" / "third_party.log")
    run = EvalRun(cfg, LocalExecutor(work, console, progress), console, progress)
    cand = run.answers(paths["candidate"], ids["candidate"], rows, "answers (candidate)")
    base = run.answers(paths["baseline"], ids["baseline"], rows, "answers (baseline)")
    lid = {}  # language ID as every command runs it: the stage, through the runner
    langid = LangIdStage(languages=tuple(cfg.prompts.languages))
    for side, texts in (("candidate", cand), ("baseline", base)):
        answers = Dataset.from_dict({"prompt_id": [r["prompt_id"] for r in rows],
                                     "lang": [r["lang"] for r in rows], "response": texts})  # fmt: skip
        found, _ = run_rows(
            run.executor, langid, answers, cfg.shard_prompts, f"language ID ({side})"
        )
        lid[side] = list(found["lid_lang"])
    out_rows = []
    for judge in judges:
        verdicts = judge.judge(run, rows, cand, base)
        if len(verdicts) != len(rows):
            raise EvalError(f"judge {judge.spec}: {len(verdicts)} verdicts for {len(rows)} rows")
        for i, (r, v) in enumerate(zip(rows, verdicts)):
            out_rows.append({"judge": judge_label(judge.spec), "kind": judge.kind, "prompt_id": r["prompt_id"], "lang": r["lang"],
                             "instruction": r["instruction"], "candidate": cand[i], "baseline": base[i],
                             **v, "candidate_chars": len(cand[i]), "baseline_chars": len(base[i]),
                             "candidate_lid": lid["candidate"][i], "baseline_lid": lid["baseline"][i],
                             "in_training": r["in_training"]})  # fmt: skip
    results = summarize(out_rows, cfg.lc, difficulty)
    templates = [t for j in judges if (t := j.prompt_template(cfg)) is not None]
    manifest = {
        "kind": "eval", "dataset": cfg.name, "version": None,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "code_version": f"icr-data {icr_data.__version__}",
        "models": {**ids, "judges": {judge_label(j.spec): j.ids for j in judges}},
        "lineage": lineage(record),
        "sampling": {k: getattr(cfg.sampling, k) for k in ("backend", "temperature", "top_p", "max_tokens", "seed")},
        "judge_template": templates[0] if templates else None,
        "languages": cfg.prompts.languages,
        "decontamination": {"rule": "exact, or equal after NFKC, casefold, punctuation and "
                            "whitespace folded", "flagged": overlap, "kept": cfg.prompts.keep_overlap},
        "lc_formula": "sigmoid(b0) of win ~ sigmoid(b0 + b1 * tanh(d / std(d))), d = chars(candidate) - chars(baseline)",
        "lc_alpaca_eval": None if cfg.lc != "alpaca_eval" else {
            "glm": difficulty.glm if difficulty else "length_controlled_minimal",
            "difficulty": Path(difficulty.source).name if difficulty else None},
        "results": results,
        "totals": {"prompts": len(rows), "rows": len(out_rows)},
    }  # fmt: skip
    table = Dataset.from_list(out_rows)
    path = write_version(
        cfg.store, cfg.name, {"rows": table}, manifest, render_eval_card, name=version
    )
    return path, manifest


def render_eval_card(manifest: dict) -> str:
    import yaml

    from icr_data.store.card import environment, size_category

    header = {
        "language": manifest["languages"], "license": "other",
        "task_categories": ["text-generation"], "tags": ["evaluation", "icr-data"],
        "size_categories": [size_category(manifest["totals"]["rows"])],
        "pretty_name": f"{manifest['dataset']} {manifest['version']}",
        "configs": [{"config_name": "rows", "default": True,
                     "data_files": [{"split": "train", "path": manifest["files"]["rows"][0]}]}],
    }  # fmt: skip
    head = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    env = environment()
    env.filters["fmt"] = lambda v: "-" if v is None else f"{v:.3f}"
    return env.get_template("eval_card.md").render(header=head, m=manifest)


def list_evals(store: str | Path) -> list[dict]:
    """Every eval record in the store: record, training data version, candidate, per judge and
    language WR and LC; and every reward-check record (reward_check.list_rows: per language
    accuracy and transfer gap in those places)."""
    out = []
    for f in sorted(Path(store).glob("*/v*/manifest.json")):
        m = json.loads(f.read_text(encoding="utf-8"))
        if m.get("kind") == "reward_check":
            from icr_data.commands.reward_check import list_rows

            out.extend(list_rows(m))
            continue
        if m.get("kind") != "eval":
            continue
        lin = m.get("lineage") or {}
        data = (
            f"{lin['dataset']}/{lin['version']}" if lin.get("dataset") else lin.get("source") or "-"
        )
        for judge, langs in m["results"].items():
            out.append({"record": f"{m['dataset']}/{m['version']}", "data": data,
                        "candidate": m["models"]["candidate"]["name"], "judge": judge,
                        "languages": {lang: (r["win_rate"], r["lc_win_rate"]) for lang, r in langs.items()}})  # fmt: skip
    return out
