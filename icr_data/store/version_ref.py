"""A version's own reference log-probs, used as a DPO trainer's reference log-probs: when they
are the training reference's, and their values for given pairs. `export --ref-logps` and the DPO
recipe (`ref_logps: auto|version`) both ask here, so both refuse for the same reasons.

They are the training reference's under the training prompt only when the version was scored
- by the transformers scorer backend, the trainer's own forward (`scoring.backend`: another
  backend's sums, vLLM's, differ from it in their last digits and are never mixed with a
  training run's own),
- in native mode (training's prompt is each pair's own instruction, not the English one),
- by the training reference itself (the same content hash; the same name where none was recorded),
- counting the end-of-turn token (training trains on it),
- under the training's chat_template setting.
"""

from __future__ import annotations

from pathlib import Path

TRAINER_BACKEND = "transformers"
"""The scorer backend whose log-probs are those of training's own forward."""


def refusal(manifest: dict, reference: dict | None, chat_template: str | None) -> str | None:
    """Why `manifest`'s reference scores are not those of `reference` (a models.identity record)
    under `chat_template`, or None when they are."""
    scoring = manifest.get("scoring", {})
    backend = ((manifest.get("recipe") or {}).get("scoring") or {}).get("backend", "transformers")
    if backend != TRAINER_BACKEND:
        return (
            f"the version's log-probs were computed by the {backend} scorer backend, not by the "
            f"trainer's own forward ({TRAINER_BACKEND}), so they are not the training "
            f"reference's; rescore it with --backend {TRAINER_BACKEND}"
        )
    if scoring.get("mode") != "native":
        scored = (
            "y = each response's English translation, x = the English instruction"
            if scoring.get("mode") == "translate_en"
            else "x = English instruction + directive"
        )
        return (
            f"the version was scored in {scoring.get('mode')} mode ({scored}), but training "
            "uses the native instruction; rescore it with --mode native"
        )
    if not reference:
        return "the manifest records no training reference (built before rounds were recorded)"
    scorer = (manifest.get("models") or {}).get("reference") or {}
    ours, theirs = scorer.get("sha256"), reference.get("sha256")
    same = ours == theirs if ours or theirs else scorer.get("name") == reference.get("name")
    if not same:
        return (
            f"the version's scoring reference ({scorer.get('name')}) is not the training "
            f"reference ({reference.get('name')}); train with that reference, or rescore"
        )
    if not scoring.get("count_eot", True):
        return "the version does not count the end-of-turn token, which training trains on"
    template = ((manifest.get("recipe") or {}).get("models") or {}).get("chat_template")
    if (template or None) != (chat_template or None):
        return "the version was scored with another chat_template setting"
    return None


def pair_logps(version_dir: str | Path, pairs: dict[str, list]) -> tuple[list, list] | str:
    """The version's reference log-probs of each pair's chosen and rejected candidate, named by
    `pairs`' prompt_id, lang, chosen_sample_idx and rejected_sample_idx columns: ([chosen],
    [rejected]), or a str saying why they cannot be had."""
    from icr_data.store import store

    need = ("prompt_id", "lang", "chosen_sample_idx", "rejected_sample_idx")
    if any(c not in pairs for c in need):
        return "the pairs do not name their candidates (prompt_id, lang, *_sample_idx)"
    cands = store.read_table(version_dir, "candidates").select_columns(
        ["prompt_id", "lang", "sample_idx", "logp_ref"]
    )
    logp = dict(zip(zip(cands["prompt_id"], cands["lang"], cands["sample_idx"]), cands["logp_ref"]))
    ids = list(zip(pairs["prompt_id"], pairs["lang"]))
    try:
        chosen = [logp[(p, lang, i)] for (p, lang), i in zip(ids, pairs["chosen_sample_idx"])]
        rejected = [logp[(p, lang, i)] for (p, lang), i in zip(ids, pairs["rejected_sample_idx"])]
    except KeyError as e:
        return f"candidate {e.args[0]} of a pair is not among the version's candidates"
    if any(v is None for v in chosen + rejected):
        return "some of the version's candidates have no reference log-prob"
    return chosen, rejected
