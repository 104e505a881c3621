"""Writing a version: pairing scored candidates through the pair stage, the manifest's facts, the
check for an identical earlier version, and the text features kept for the next pairing.

    path, manifest, same = write_paired(dataset_dir, candidates, recipe.pairing, manifest_for,
                                        name, if_changed)

build (merge) and derive (rescore, pair) write their versions through here; store.write_version
does the writing itself (temporary folder, renamed when complete).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from datasets import Dataset

from icr_data.base.console import stderr_console
from icr_data.core.executor import LocalExecutor, MemoryWork, Task
from icr_data.stages.agreement import JUDGE_RULE, MODE_RULE, judge_figures, noise_verdicts
from icr_data.stages.stages import SCORING_CONVENTION, PairStage
from icr_data.store import store
from icr_data.store.card import render_card
from icr_data.store.manifest import make_manifest, margin_summary
from icr_data.store.shards import digest


def run_facts(recipe, model_ids: dict, stats, mode_agreement: dict | None,
              stability: dict | None = None) -> dict:  # fmt: skip
    """What the stages found, as the manifest records it (store/manifest.py reads these): the
    pairing funnel and figures, judge and mode agreement with their likely-noise verdicts,
    the translation (translate_en), the scoring convention and the score stability
    (stability.py; None: not measured)."""
    from icr_data.pairing.pairs import empty_funnel

    judge = judge_figures(stats.judge_agreement)
    modes = None
    if mode_agreement is not None:
        modes = {"compared": [recipe.scoring.mode, "native"], "rule": MODE_RULE,
                 "languages": mode_agreement}  # fmt: skip
    return {
        "funnel": {lang: dict(f) for lang, f in stats.funnel.items()},
        "empty_funnel": empty_funnel(),
        "alphas": stats.alphas,
        "judge_agreement": judge,
        "mean_length_diff": stats.mean_length_diff,
        "length_margin_corr": stats.length_margin_corr,
        "mode_agreement": modes,
        "likely_noise": {
            "rules": {"mode_agreement": MODE_RULE, "judge_agreement": JUDGE_RULE},
            "languages": noise_verdicts(
                mode_agreement, judge, [recipe.scoring.mode, "native"], recipe.scoring.judge
            ),  # fmt: skip
        },
        "translation": translation(recipe, model_ids),
        "convention": SCORING_CONVENTION,
        "stability": stability,
    }


def translation(recipe, model_ids: dict) -> dict | None:
    """translate_en: how the responses were translated to English (None in other modes)."""
    if recipe.scoring.mode != "translate_en":
        return None
    from icr_data.commands.translate import DEFAULT_TEMPLATE

    return {"translator": (model_ids.get("translator") or {}).get("name"),
            "template": DEFAULT_TEMPLATE,
            "decoding": "greedy (temperature 0), max_tokens = 2 x sampling.max_tokens",
            "scored": "the English translation (candidates' response_en) under the English "
                      "instruction; English responses as they are"}  # fmt: skip


def version_manifest(recipe, model_ids: dict, pairs: Dataset, stats, candidates: Dataset,
                     prompts: Dataset, langs: list[str], timings: dict,
                     stability: dict | None = None, **kwargs) -> dict:  # fmt: skip
    """The manifest of a version holding `pairs` paired from `candidates` (store.manifest's
    make_manifest, with run_facts and the per-language counts and margins)."""
    from icr_data.stages.agreement import candidate_agreement

    counts, margins = margin_summary(pairs, candidates, prompts, langs)
    facts = run_facts(recipe, model_ids, stats, candidate_agreement(candidates), stability)
    return make_manifest(recipe, model_ids, facts, counts, margins, timings, **kwargs)


def identical_version(dataset_dir: Path, tables: dict[str, Dataset | list[Path]],
                      manifest: dict) -> str | None:  # fmt: skip
    """The newest version of the dataset whose pairs and candidates hold the same rows as
    `tables` and whose recipe (but for `store`) and models are this manifest's; else None. Every
    version is a candidate, not only the latest (a rebuild after a `pair` equals v1, not the
    paired v2); each is ruled out cheaply first, by its manifest, then by the names of reused
    files (digests of their bytes) and by row counts from the Parquet footers, before any table
    is read."""
    for name in reversed(store.versions(dataset_dir)):
        if _same_content(dataset_dir / name, tables, manifest):
            return name
    return None


def _how(m: dict) -> tuple:
    """What makes a version's content, but for where it was written."""
    return ({k: v for k, v in (m.get("recipe") or {}).items() if k != "store"},
            m.get("models"))  # fmt: skip


def _same_content(version: Path, tables: dict[str, Dataset | list[Path]], manifest: dict) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if _how(store.read_manifest(version)) != _how(manifest):
            return False
        files = {config: store.config_files(version, config) for config in tables}
        for config, ds in tables.items():
            if isinstance(ds, list):  # files reused whole: their names are digests of their bytes
                if [f.name for f in ds] != [f.name for f in files[config]]:
                    return False
            elif sum(pq.ParquetFile(f).metadata.num_rows for f in files[config]) != len(ds):
                return False
        for config, ds in tables.items():  # the cheap checks passed: compare the rows
            if isinstance(ds, list):
                continue
            if not store.read_table(version, config).data.table.equals(ds.data.table):
                return False
    except (OSError, ValueError, pa.ArrowException, store.StoreError):
        return False  # an unreadable version is not "the same"
    return True


def write_paired(dataset_dir: Path, candidates: Dataset, pairing, manifest_for, name: str | None,
                 if_changed: bool, candidate_files: list[Path] | None = None,
                 paired: tuple[Dataset, object] | None = None,
                 ) -> tuple[Path, dict, str | None]:  # fmt: skip
    """Pair `candidates` (PairStage) and write both as a new version of `dataset_dir`, with the
    manifest `manifest_for(pairs, pair_stats)` gives: (path, manifest, the newest earlier version
    holding the same content, whichever it is, or None). With `if_changed` and such a version, nothing is written
    and the path and manifest are that version's. With `candidate_files` (another version's
    candidates, unchanged) those files are the version's candidates (linked or copied), and `candidates`
    need hold only the columns pairing and the manifest read: responses and instructions are
    read from the files a row group at a time. With `paired` (pairs, pair stats), pairing is
    not run: those pairs are written as they are (curate's pairs dropped by hand), and the text
    features the parent carries travel on unchanged. build.merge and derive's new versions share
    it."""
    from icr_data.pairing.textfeatures import ParquetTexts

    texts, kept, parent = None, None, None
    if candidate_files:
        texts = {c: ParquetTexts(candidate_files, c) for c in ("response", "instruction")}
        parent = candidate_files[0].parent.parent.parent  # <version>/data/candidates/<file>
        kept = load_text_features(parent, pairing)
    features = kept if kept is not None else {}  # empty: the pair stage fills it
    if paired is None:
        stage = PairStage(pairing=pairing, texts=texts, features=features)
        paired = pair(stage, candidates), stage.pair_stats
    pairs, stats = paired
    manifest = manifest_for(pairs, stats)
    tables = {"pairs": pairs, "candidates": candidate_files or candidates}
    same = identical_version(dataset_dir, tables, manifest)
    if same and if_changed:
        return dataset_dir / same, store.read_manifest(dataset_dir / same), same
    sidecars = None
    if features:  # every version carries its text features, for any later pairing of it
        sidecars = {TEXT_FEATURES: (features_table(features),
                                    lambda files: text_features_key(files["candidates"], pairing))}  # fmt: skip
    path = store.write_version(dataset_dir.parent, dataset_dir.name, tables, manifest, render_card,
                               name=name, sidecars=sidecars)  # fmt: skip
    return path, manifest, same


TEXT_FEATURES = "textfeatures"
"""The sidecar of a version holding pairing's text features (textfeatures.FEATURES), and the
manifest key recording what they were computed from."""


def text_features_key(candidate_files: list[str], pairing) -> dict:
    """What the text features depend on: the candidates' files (named by digests of their
    bytes), the repetition settings, and the code that computes them (textfeatures.py,
    textscan.py; pairs.py orders the candidates), read, not imported (numba stays unloaded)."""
    from icr_data.base.files import source_file

    code = b"".join(source_file(f"icr_data.pairing.{name}").read_bytes()
                    for name in ("pairs", "textfeatures", "textscan"))  # fmt: skip
    return {"candidates": [Path(f).name for f in candidate_files],
            "repetition": [pairing.repetition_ngram, pairing.repetition_max],
            "code": hashlib.sha256(code).hexdigest()}  # fmt: skip


def features_table(features: dict) -> Dataset:
    import pyarrow as pa

    table = pa.table({k: np.asarray(v) for k, v in features.items()})
    return Dataset(table, fingerprint=digest(sorted(features))[:16])


def load_text_features(version_dir: Path, pairing) -> dict | None:
    """The text features a version carries, when they were computed from its candidates under
    these repetition settings by this code; else None (the pair stage computes them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        manifest = store.read_manifest(version_dir)
        meta = manifest.get(TEXT_FEATURES)
        if not meta:
            return None
        files = store.config_files(version_dir, "candidates")
        want = text_features_key([f.name for f in files], pairing)
        if {k: meta.get(k) for k in want} != want:
            return None
        table = pq.read_table(version_dir / meta["file"])
    except (OSError, ValueError, KeyError, pa.ArrowException, store.StoreError) as e:
        stderr_console().print(f"[yellow]warning:[/] {version_dir}: its text features cannot be "
                               f"read ({e}); they are computed again", highlight=False)  # fmt: skip
        return None
    return {c: table.column(c).to_numpy() for c in table.column_names}


def pair(stage: PairStage, candidates: Dataset) -> Dataset:
    """The pair stage through an executor like every stage: a whole-table stage, so one task
    holding every candidate, run in memory (pairing is cheap and its output is the version)."""
    ex = LocalExecutor(MemoryWork())
    key = digest({"stage": stage.name, **stage.identity(), "rows": candidates._fingerprint})
    task = Task(0, key, len(candidates), lambda: candidates, {"stage": stage.name})
    ex.run(stage, [task])
    return ex.load(stage, task)
