"""Export a version's pairs for external trainers.

    icr-data export icr_store/demo/v1 --format trl|llamafactory|jsonl --out DIR [--ref-logps]

trl          DIR/train.parquet: the pairs config as it is (TRL's conversational format with an
             explicit prompt) plus prompt_id, lang, rewards and margin;
             `load_dataset("parquet", data_files="DIR/train.parquet")` feeds DPOTrainer.
llamafactory DIR/<dataset>_<version>.jsonl in LLaMA-Factory's alpaca ranking format
             (instruction, input, chosen, rejected) and its entry in DIR/dataset_info.json (an
             existing dataset_info.json is updated, not replaced).
jsonl        DIR/pairs.jsonl: one flat JSON object per pair (prompt as text).

--ref-logps (trl only) adds ref_chosen_logps / ref_rejected_logps: the training reference's
log-probs of chosen and rejected under the training prompt. They are taken from the version's
scores, which is right only when the version was scored with the training prompt (native mode)
and its scoring reference is the training reference, and when the scored span is TRL's (the
end-of-turn token counted, and that token is the tokenizer's EOS, which TRL appends). Anything
else is refused with the reason. The rows are then written in TRL's standard text format
(prompt = the rendered chat prompt, chosen/rejected = response + end-of-turn token) so TRL
tokenizes exactly the span these numbers cover; TRL's conversational format would also count
what the template emits after the end-of-turn token.
"""

from __future__ import annotations

import json
from pathlib import Path

from icr_data import store
from icr_data.errors import IcrError
from icr_data.files import atomic_write, atomic_write_text

FORMATS = ("trl", "llamafactory", "jsonl")


class ExportError(IcrError):
    """An export that cannot be written as asked; the message says why."""


def _text(messages) -> str:
    return messages[-1]["content"]


def ref_logps_refusal(manifest: dict) -> str | None:
    """Why the version's reference scores are not the training reference's, or None if they are."""
    scoring = manifest.get("scoring", {})
    if scoring.get("mode") != "native":
        return (
            f"the version was scored in {scoring.get('mode')} mode (x = English instruction + "
            "directive), but training uses the native instruction; rescore it with --mode native"
        )
    ref = (manifest.get("models") or {}).get("reference") or {}
    train_ref = (manifest.get("training") or {}).get("reference")
    if not train_ref:
        return "the manifest records no training reference (built before rounds were recorded)"
    same = ref.get("sha256") and ref.get("sha256") == train_ref.get("sha256")
    if not same and not (not ref.get("sha256") and ref.get("name") == train_ref.get("name")):
        return (
            f"the scoring reference ({ref.get('name')}) is not the training reference "
            f"({train_ref.get('name')}); set training.reference to it or rescore"
        )
    if not scoring.get("count_eot", True):
        return "the version does not count the end-of-turn token, which TRL always trains on"
    return None


def _eot_text(recipe: dict) -> tuple[object, str]:
    """The training tokenizer and its end-of-turn token text; it must be the EOS token TRL adds."""
    from icr_data.chat import ChatEncoder
    from icr_data.models import ModelError, load_tokenizer, resolve

    try:
        tok = load_tokenizer(resolve(recipe["models"]["reference"], "reference"),
                             recipe["models"].get("chat_template"))  # fmt: skip
    except (ModelError, OSError) as e:
        raise ExportError(f"--ref-logps needs the reference's tokenizer: {e}") from None
    eot = tok.convert_ids_to_tokens(ChatEncoder(tok).encode("x", "").response_ids[-1])
    if eot != tok.eos_token:
        raise ExportError(
            f"--ref-logps: the template ends a turn with {eot!r} but TRL appends the EOS token "
            f"{tok.eos_token!r}, so TRL would score a different span"
        )
    return tok, eot


def _ref_columns(version_dir: Path, pairs) -> tuple[list[float], list[float]]:
    cands = store.read_table(version_dir, "candidates")
    logp = {
        (p, lang, i): v
        for p, lang, i, v in zip(cands["prompt_id"], cands["lang"], cands["sample_idx"], cands["logp_ref"])
    }  # fmt: skip
    chosen, rejected = [], []
    for p, lang, c, r in zip(pairs["prompt_id"], pairs["lang"], pairs["chosen_sample_idx"],
                             pairs["rejected_sample_idx"]):  # fmt: skip
        chosen.append(logp[(p, lang, c)])
        rejected.append(logp[(p, lang, r)])
    return chosen, rejected


def _write_jsonl(path: Path, rows) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    atomic_write(path, write)


def export(version: str | Path, fmt: str, out: str | Path, ref_logps: bool = False) -> list[Path]:
    """Write `version`'s pairs to `out` in `fmt`; return the files written."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if ref_logps and fmt != "trl":
        raise ExportError("--ref-logps applies to --format trl only (TRL reads those columns)")
    version_dir = store.resolve_version(version)
    manifest = store.read_manifest(version_dir)
    out = Path(out)
    name = f"{manifest['dataset']}_{manifest['version']}"
    try:
        store.refuse_inside_version(out, "--out")
        store.inside(out / f"{name}.jsonl", out, "--out file")  # a manifest's names stay in --out
    except store.StoreError as e:
        raise ExportError(str(e)) from None
    pairs = store.read_table(version_dir, "pairs")
    if ref_logps and (why := ref_logps_refusal(manifest)):
        raise ExportError(f"--ref-logps refused: {why}")
    targets = {"trl": ["train.parquet"], "llamafactory": [f"{name}.jsonl", "dataset_info.json"],
               "jsonl": ["pairs.jsonl"]}[fmt]  # fmt: skip
    existing = [t for t in targets if t != "dataset_info.json" and (out / t).exists()]
    if existing:
        raise ExportError(f"{out / existing[0]} already exists; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {out}: {e.strerror}") from None

    if fmt == "trl":
        table = pairs
        if ref_logps:
            from icr_data.chat import render_prompt

            tok, eot = _eot_text(store.local_recipe(version_dir, manifest))  # this machine's paths
            chosen, rejected = _ref_columns(version_dir, pairs)
            table = pairs.map(
                lambda r: {"prompt": render_prompt(tok, _text(r["prompt"])),
                           "chosen": _text(r["chosen"]) + eot, "rejected": _text(r["rejected"]) + eot},
                remove_columns=["prompt", "chosen", "rejected"],
            )  # fmt: skip
            table = table.add_column("ref_chosen_logps", chosen)
            table = table.add_column("ref_rejected_logps", rejected)
        atomic_write(out / "train.parquet", lambda tmp: table.to_parquet(tmp))
        return [out / "train.parquet"]

    flat = [
        {"prompt_id": p, "lang": lang, "prompt": _text(x), "chosen": _text(c), "rejected": _text(r),
         "chosen_reward": cr, "rejected_reward": rr, "margin": m}
        for p, lang, x, c, r, cr, rr, m in zip(
            pairs["prompt_id"], pairs["lang"], pairs["prompt"], pairs["chosen"], pairs["rejected"],
            pairs["chosen_reward"], pairs["rejected_reward"], pairs["margin"])
    ]  # fmt: skip
    if fmt == "jsonl":
        _write_jsonl(out / "pairs.jsonl", flat)
        return [out / "pairs.jsonl"]

    _write_jsonl(out / f"{name}.jsonl", (
        {"instruction": r["prompt"], "input": "", "chosen": r["chosen"], "rejected": r["rejected"],
         "lang": r["lang"], "prompt_id": r["prompt_id"]} for r in flat))  # fmt: skip
    info_path = out / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    except ValueError as e:
        raise ExportError(
            f"{info_path} exists but is not valid JSON ({e}); not touching it"
        ) from None
    info[name] = {
        "file_name": f"{name}.jsonl",
        "ranking": True,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    }  # fmt: skip
    atomic_write_text(info_path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return [out / f"{name}.jsonl", info_path]
