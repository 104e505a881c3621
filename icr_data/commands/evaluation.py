"""Evaluate: did a version help, and in which language? A candidate model against a baseline on
held-out prompts, per language, judged pairwise; the result is a versioned eval record.

    icr-data eval recipes/eval_demo.yaml [--set judges=[implicit:P,R]]
    icr-data evals [--store icr_store]      # every record: dataset version -> model -> WR, LC

Answers come from the build's generation stage (stages.GenerateStage; vLLM, greedy by default),
shard by shard through the local executor with work under `<store>/<name>/.work`, so a killed
eval resumes. Judges (`judges:` in the recipe, one or more):
- `llm:MODEL`: a pairwise LLM judge through the same generation stage (greedy), with a shipped,
  editable template (cards/judge_pairwise.txt). It sees every pair in both orders; a verdict
  that cannot be parsed is counted, never guessed; a tie counts 0.5.
- `reward:MODEL`: an explicit reward model (a sequence-classification checkpoint) scoring each
  answer under its own prompt (stages.RewardStage).
- `implicit:POLICY,REFERENCE`: the implicit reward of a build, beta * (log pi - log ref), with the
  native instruction as x (stages.LogprobStage).

Per language: win rate with its standard error, the length-controlled win rate (lc_win_rate), the
share of answers in the prompt's language (language ID), mean answer lengths, and the LLM judge's
position consistency (winrates.py). Prompts that also occur in the candidate's training data (exactly, or after
normalising case, punctuation and whitespace) are flagged and left out unless
`prompts.keep_overlap`. The record `<store>/<name>/vN/` holds a card, a manifest (with the lineage
read from the candidate's training.json) and one row per (judge, prompt).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import icr_data
from icr_data.base.config import SamplingConfig, apply_override, from_dict, resolve_relative
from icr_data.base.errors import IcrError
from icr_data.commands.winrates import llm_win, normalise, parse_verdict, summarize

JUDGE_KINDS = ("llm", "reward", "implicit")


class EvalError(IcrError):
    """An evaluation that cannot run; the message names the key, file or model."""


@dataclass
class EvalPrompts:
    source: str = ""
    """Held-out prompts: a prompts version from `icr-data translate`, or a JSONL/Parquet file."""
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
    """llm:MODEL, reward:MODEL or implicit:POLICY,REFERENCE (one or more)."""
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


def load_eval(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> EvalConfig:
    """An eval recipe, unknown keys refused, relative paths resolved against its folder."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError:
        raise EvalError(f"eval recipe not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: not a YAML mapping ({e})") from None
    if not isinstance(data, dict):
        raise EvalError(f"{path}: the top level must be a mapping of keys")
    for o in overrides:
        apply_override(data, o)
    cfg = from_dict(EvalConfig, data, where=str(path))
    base = path.resolve().parent
    cfg.prompts.source = resolve_relative(cfg.prompts.source, base)
    if cfg.prompts.training_version:
        cfg.prompts.training_version = resolve_relative(cfg.prompts.training_version, base)
    if cfg.judge_template:
        cfg.judge_template = resolve_relative(cfg.judge_template, base)
    if cfg.previous:
        cfg.previous = resolve_relative(cfg.previous, base)
    for key in ("candidate", "baseline"):
        spec = getattr(cfg, key)
        if spec == "previous":
            from icr_data.base.config import RecipeError, RoundConfig, previous_model

            try:
                spec = previous_model(RoundConfig(previous=cfg.previous), f"{path}: '{key}'")
            except RecipeError as e:
                raise EvalError(str(e).replace("'round.previous'", "'previous'")) from None
        setattr(cfg, key, _model_path(spec, base))
    cfg.judges = [_judge_paths(j, base) for j in cfg.judges]
    check(cfg, str(path))
    return cfg


def _model_path(spec: str, base: Path) -> str:
    if spec.startswith("train:"):
        return "train:" + resolve_relative(spec.removeprefix("train:"), base)
    return spec if ":" in spec else resolve_relative(spec, base)


def _judge_paths(spec: str, base: Path) -> str:
    kind, _, rest = spec.partition(":")
    return f"{kind}:" + ",".join(_model_path(m, base) for m in rest.split(",")) if rest else spec


def judge_label(spec: str) -> str:
    """A judge as the record names it: its models without this machine's folders."""
    from icr_data.store.store import portable_path

    kind, models = parse_judge(spec)
    return f"{kind}:" + ",".join(portable_path(m) for m in models)


def parse_judge(spec: str) -> tuple[str, list[str]]:
    """'implicit:P,R' -> ('implicit', [P, R]); unknown kinds and wrong arity are refused."""
    kind, sep, rest = spec.partition(":")
    models = [m for m in rest.split(",") if m] if sep else []
    want = 2 if kind == "implicit" else 1
    if kind not in JUDGE_KINDS or len(models) != want:
        raise EvalError(f"judges: {spec!r} is not llm:MODEL, reward:MODEL or "
                        "implicit:POLICY,REFERENCE")  # fmt: skip
    return kind, models


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
        parse_judge(j)
    if cfg.sampling.n != 1:
        raise EvalError(f"{where}: 'sampling.n' must be 1 (one answer per prompt and model)")
    if not cfg.prompts.source:
        raise EvalError(f"{where}: 'prompts.source' is required")


# ------------------------------------------------------------------------------- the run
def _prompts(cfg: EvalConfig) -> list[dict]:
    from icr_data.stages.prompts import PromptError, check_rows, read_rows

    try:
        rows = read_rows(cfg.prompts.source)
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


def _answers(cfg, executor, model: str, model_id: dict, rows: list[dict], label: str,
             sampling: SamplingConfig | None = None) -> list[str]:  # fmt: skip
    """One answer per row from the generation stage (`sampling`, default the recipe's)."""
    from datasets import Dataset

    from icr_data.stages.stages import GenerateStage, model_key, run_in_order

    stage = GenerateStage(model=model, model_key=model_key(model_id),
                          sampling=sampling or cfg.sampling, chat_template=cfg.chat_template,
                          model_id=model_id)  # fmt: skip
    data = Dataset.from_list(
        [{k: r[k] for k in ("prompt_id", "lang", "instruction")} for r in rows]
    )
    out, _ = run_in_order(executor, stage, data, cfg.shard_prompts, label)
    return list(out["response"])


def render_judge(template: str, instruction: str, a: str, b: str) -> str:
    # plain replacement: prompts and answers hold braces; {instruction} last of the three fields
    filled = template.replace("{answer_a}", a).replace("{answer_b}", b)
    return filled.replace("{instruction}", instruction)


def judge_template(cfg: EvalConfig) -> str:
    path = Path(cfg.judge_template) if cfg.judge_template else default_template()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalError(f"judge_template {path}: {e.strerror}") from None
    for field_ in ("{instruction}", "{answer_a}", "{answer_b}"):
        if field_ not in text:
            raise EvalError(f"judge_template {path}: has no {field_} placeholder")
    return text


def default_template() -> Path:
    """The shipped pairwise judge prompt (cards/judge_pairwise.txt; copy it to edit it)."""
    from icr_data.store.card import template_dir

    return template_dir() / "judge_pairwise.txt"


@dataclass
class Judge:
    """A judge of the recipe, resolved once: its models' paths and identities."""

    spec: str
    kind: str
    names: list[str]
    paths: list[str]
    ids: list[dict]

    @classmethod
    def resolve(cls, spec: str) -> Judge:
        from icr_data.stages import models

        kind, names = parse_judge(spec)
        paths = [models.resolve(m, "judge") for m in names]
        if kind == "reward":
            check_reward_model(names[0], paths[0])
        return cls(spec, kind, names, paths, [models.identity(n, p) for n, p in zip(names, paths)])


def _judge(cfg, executor, judge: Judge, rows, cand, base, console, progress) -> list[dict]:
    kind, spec, paths = judge.kind, judge.spec, judge.paths
    if kind == "llm":
        template = judge_template(cfg)
        requests = []
        for r, c, b in zip(rows, cand, base):
            for order, (x, y) in (("ab", (c, b)), ("ba", (b, c))):
                requests.append({"prompt_id": f"{r['prompt_id']}#{order}", "lang": r["lang"],
                                 "instruction": render_judge(template, r["instruction"], x, y)})  # fmt: skip
        judge_cfg = SamplingConfig(backend=cfg.sampling.backend, n=1, temperature=0.0,
                                   max_tokens=cfg.judge_max_tokens, seed=cfg.sampling.seed,
                                   dtype=cfg.sampling.dtype, max_model_len=cfg.sampling.max_model_len,
                                   gpu_memory_utilization=cfg.sampling.gpu_memory_utilization)  # fmt: skip
        raw = _answers(cfg, executor, paths[0], judge.ids[0], requests, f"judge {spec}", judge_cfg)
        out = []
        for i in range(len(rows)):
            ab, ba = raw[2 * i], raw[2 * i + 1]
            v_ab, v_ba = parse_verdict(ab), parse_verdict(ba)
            win, consistent = llm_win(v_ab, v_ba)
            out.append({"verdict_ab": v_ab, "verdict_ba": v_ba, "judge_output_ab": ab,
                        "judge_output_ba": ba, "win": win, "consistent": consistent,
                        "candidate_reward": None, "baseline_reward": None})  # fmt: skip
        return out
    rewards = _rewards(cfg, judge, rows, cand + base, console, progress)
    out = []
    for i in range(len(rows)):
        rc, rb = rewards[i], rewards[len(rows) + i]
        verdict = "candidate" if rc > rb else "baseline" if rb > rc else "tie"
        out.append({"verdict_ab": verdict, "verdict_ba": None, "judge_output_ab": None,
                    "judge_output_ba": None, "win": {"candidate": 1.0, "baseline": 0.0}.get(verdict, 0.5),
                    "consistent": None, "candidate_reward": rc, "baseline_reward": rb})  # fmt: skip
    return out


def _rewards(cfg, judge: Judge, rows, answers, console, progress) -> list[float]:
    """One reward per (row, answer) for answers = candidate's then baseline's (native prompt)."""
    from datasets import Dataset

    from icr_data.stages.stages import model_key

    paths = judge.paths
    both = rows + rows
    data = Dataset.from_list([
        {"prompt_id": r["prompt_id"], "lang": r["lang"], "instruction": r["instruction"],
         "scoring_prompt": r["instruction"], "sample_idx": i // len(rows), "response": a,
         "finish_reason": "stop"}
        for i, (r, a) in enumerate(zip(both, answers))
    ])  # fmt: skip
    if judge.kind == "implicit":
        from icr_data.base.config import ScoringConfig
        from icr_data.stages.stages import score_candidates

        ids = dict(zip(("policy", "reference"), judge.ids))
        scored = score_candidates(data, paths[0], paths[1], ScoringConfig(mode="native", beta=cfg.beta),
                                  cfg.chat_template, ids, console, progress)  # fmt: skip
        return scored["reward"]
    from icr_data.core.executor import run_once
    from icr_data.stages.stages import RewardStage, Shard

    stage = RewardStage(model=paths[0], model_key=model_key(judge.ids[0]),
                        chat_template=cfg.chat_template)  # fmt: skip
    outs, _ = run_once(stage, [Shard(0, data)], console, progress)
    return outs[0]["reward"]


def evaluate(
    cfg: EvalConfig, console=None, progress=None, version: str | None = None
) -> tuple[Path, dict]:
    """Answer, judge, summarise and write an eval record: (its folder, its manifest)."""
    from datasets import Dataset

    from icr_data.stages import models

    from icr_data.commands import prepare
    from icr_data.core.executor import LocalExecutor
    from icr_data.stages.langid import identify, judged
    from icr_data.base.logs import log_to
    from icr_data.store.shards import WorkDir
    from icr_data.store.store import write_version

    rows = _prompts(cfg)  # before any model: bad prompts are the cheap error
    judge_models = [m for j in cfg.judges for m in parse_judge(j)[1]]
    prepare.ensure([cfg.candidate, cfg.baseline, *judge_models], console)
    paths = {k: models.resolve(getattr(cfg, k), k) for k in ("candidate", "baseline")}
    if paths["candidate"] == paths["baseline"]:
        raise EvalError(f"candidate and baseline are the same model ({paths['candidate']})")
    judges = [Judge.resolve(j) for j in cfg.judges]
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
    ex = LocalExecutor(work, console, progress)
    cand = _answers(cfg, ex, paths["candidate"], ids["candidate"], rows, "answers (candidate)")
    base = _answers(cfg, ex, paths["baseline"], ids["baseline"], rows, "answers (baseline)")
    langs = cfg.prompts.languages
    lid = {}
    for side, texts in (("candidate", cand), ("baseline", base)):
        found, _ = identify(texts, langs)
        lid[side] = judged(found, [r["lang"] for r in rows], langs)
    out_rows = []
    for judge in judges:
        verdicts = _judge(cfg, ex, judge, rows, cand, base, console, progress)
        for i, (r, v) in enumerate(zip(rows, verdicts)):
            out_rows.append({"judge": judge_label(judge.spec), "kind": judge.kind, "prompt_id": r["prompt_id"], "lang": r["lang"],
                             "instruction": r["instruction"], "candidate": cand[i], "baseline": base[i],
                             **v, "candidate_chars": len(cand[i]), "baseline_chars": len(base[i]),
                             "candidate_lid": lid["candidate"][i], "baseline_lid": lid["baseline"][i],
                             "in_training": r["in_training"]})  # fmt: skip
    results = summarize(out_rows)
    manifest = {
        "kind": "eval", "dataset": cfg.name, "version": None,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "code_version": f"icr-data {icr_data.__version__}",
        "models": {**ids, "judges": {judge_label(j.spec): j.ids for j in judges}},
        "lineage": lineage(record),
        "sampling": {k: getattr(cfg.sampling, k) for k in ("backend", "temperature", "top_p", "max_tokens", "seed")},
        "judge_template": judge_template(cfg) if any(j.startswith("llm:") for j in cfg.judges) else None,
        "languages": langs,
        "decontamination": {"rule": "exact, or equal after NFKC, casefold, punctuation and "
                            "whitespace folded", "flagged": overlap, "kept": cfg.prompts.keep_overlap},
        "lc_formula": "sigmoid(b0) of win ~ sigmoid(b0 + b1 * tanh(d / std(d))), d = chars(candidate) - chars(baseline)",
        "results": results,
        "totals": {"prompts": len(rows), "rows": len(out_rows)},
    }  # fmt: skip
    table = Dataset.from_list(out_rows)
    path = write_version(
        cfg.store, cfg.name, {"rows": table}, manifest, render_eval_card, name=version
    )
    return path, manifest


def check_reward_model(spec: str, path: str) -> None:
    from icr_data.stages.models import ModelError, check_sequence_classifier

    try:
        check_sequence_classifier(path, f"judges: reward:{spec}")
    except ModelError as e:
        raise EvalError(str(e)) from None


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
    language WR and LC."""
    out = []
    for f in sorted(Path(store).glob("*/v*/manifest.json")):
        m = json.loads(f.read_text(encoding="utf-8"))
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
