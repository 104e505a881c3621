"""New versions from existing ones, without regenerating: rescore, or pair again.

    icr-data score icr_store/demo/v1 --policy P --reference R [--mode native] [--beta 0.1]
    icr-data pair icr_store/demo/v1 --strategy top_bottom --k 2 [--filters truncated,empty]

The candidates of the parent version are read back (responses are never regenerated), scored
under the new pair (rescore) or reused as they are (pair), paired, and written as a new version of
the same dataset whose manifest names its parent.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from datasets import Dataset

from icr_data.base.config import Recipe, RecipeError, from_dict, validate_scoring
from icr_data.base.errors import IcrError
from icr_data.base.languages import scoring_prompt
from icr_data.core.executor import writing
from icr_data.stages import models
from icr_data.store import store
from icr_data.store.integrity import require_whole


class DeriveError(IcrError):
    """A derived version that cannot be made from its parent."""


def parent_recipe(version_dir: Path) -> tuple[dict, Recipe]:
    """The parent's manifest and its recipe: as this machine loaded it (the version's hidden local
    file, with absolute paths), else the manifest's portable one (paths relative to the recipe's
    folder, or names: give --policy/--reference where they no longer resolve)."""
    manifest = store.read_manifest(version_dir)
    recipe = store.local_recipe(version_dir, manifest)
    return manifest, from_dict(Recipe, recipe, where=str(version_dir / "manifest.json"))


def open_parent(version: str | Path, name: str | None) -> tuple[Path, dict, Recipe]:
    """The version a new one derives from, checked before any work: the new version's `name`
    (valid, and not taken), the folder (whole: sizes and footers, a damaged file is one line),
    its manifest and recipe."""
    if name is not None:
        store.check_version_name(name)
    version_dir = store.resolve_version(version)
    # the new version goes beside its parent: never inside another version (immutable)
    store.refuse_inside_version(version_dir.parent, "the dataset folder", "the new version ")
    if name is not None and (version_dir.parent / name).exists():
        raise store.StoreError(f"version {name} already exists at {version_dir.parent / name}; "
                               "versions are immutable")  # fmt: skip
    require_whole(version_dir)
    return (version_dir, *parent_recipe(version_dir))


def rescoring_prompts(candidates: Dataset, mode: str) -> list[str]:
    """Scoring prompts for `mode`, using the English rows the candidates carry."""
    english = {p: x for p, lang, x in zip(candidates["prompt_id"], candidates["lang"], candidates["instruction"]) if lang == "en"}  # fmt: skip
    out = []
    for p, lang, x in zip(candidates["prompt_id"], candidates["lang"], candidates["instruction"]):
        if mode in ("cross_lingual", "translate_en") and p not in english:
            raise DeriveError(
                f"prompt_id {p} ({lang}) has no English candidates in this version, so its "
                f"English instruction is unknown; {mode} rescoring needs English rows"
            )
        out.append(scoring_prompt(english.get(p, ""), x, lang, mode))
    return out


def rescore(
    version: str | Path,
    policy: str | None = None,
    reference: str | None = None,
    scoring: dict | None = None,
    name: str | None = None,
    console=None,
    executor: str = "local",
    address: str | None = None,
    if_changed: bool = False,
) -> tuple[Path, dict]:
    """Score the parent's candidates under a (new) reward pair; write and return a new version.

    The two log-prob passes run shard by shard through an executor, with their work kept under
    the dataset's .work folder exactly as a build keeps it: a killed rescore resumes."""
    from icr_data.base.console import progress_bar, stderr_console
    from icr_data.commands import prepare
    from icr_data.commands.score_phase import candidate_columns, score_phase
    from icr_data.commands.stability import not_measured
    from icr_data.commands.stability import require as require_stable
    from icr_data.core import runner
    from icr_data.store.shards import WorkDir

    console = console or stderr_console()
    version_dir, parent_manifest, recipe = open_parent(version, name)
    if policy:
        recipe.models.policy = policy
    if reference:
        recipe.models.reference = reference
    if scoring:
        recipe.scoring = dataclasses.replace(recipe.scoring, **scoring)
        if recipe.scoring.mode != "cross_lingual":  # agreement compares cross_lingual with native
            recipe.scoring.agreement = None
        try:
            validate_scoring(recipe.scoring, "icr-data score")
        except RecipeError as e:
            raise DeriveError(str(e)) from None
    # the candidates' own checks first: they need no model
    candidates = store.read_table(version_dir, "candidates")
    candidates = candidates.remove_columns("scoring_prompt").add_column(
        "scoring_prompt", rescoring_prompts(candidates, recipe.scoring.mode)
    )
    specs = {r: getattr(recipe.models, r) for r in ("policy", "reference")}
    translating = (
        recipe.scoring.mode == "translate_en" and "response_en" not in candidates.column_names
    )
    if translating:  # translate_en of a version without translations: the translator too
        specs["translator"] = recipe.scoring.translator or recipe.models.generator
    elif recipe.scoring.mode != "translate_en" and "response_en" in candidates.column_names:
        candidates = candidates.remove_columns("response_en")
    keys = {"policy": "--policy" if policy else "models.policy",
            "reference": "--reference" if reference else "models.reference",
            "translator": "scoring.translator"}  # fmt: skip
    try:
        found = prepare.resolve_models({keys[r]: spec for r, spec in specs.items()}, console)
        resolved = {r: found[keys[r]] for r in specs}
    except models.ModelError as e:
        if (version_dir / store.LOCAL_FILE).is_file() or str(e).startswith("--"):
            raise  # this machine's paths, or a model given on the command line
        raise DeriveError(f"{e} ({version_dir} records its models by name and content hash, "
                          "not by this machine's paths: give --policy and --reference)") from None  # fmt: skip
    ids = dict(parent_manifest["models"])
    ids.update({r: models.identity(spec, resolved[r]) for r, spec in specs.items()})
    translator = None
    if translating:  # translate_en of a version without translations: the translator too
        from icr_data.commands.translate import response_translator

        translator = response_translator(resolved["translator"], ids["translator"],
                                         recipe.sampling, recipe.models.chat_template)  # fmt: skip
    # language ID only where the parent has none (its values are kept as they are)
    languages = None if "lid_lang" in candidates.column_names else tuple(parent_manifest["counts"])
    phase = score_phase(resolved["policy"], resolved["reference"], ids, recipe.scoring,
                        recipe.models.chat_template, models.pick_device(recipe.scoring.device),
                        translator, languages=languages, seed=recipe.sampling.seed)  # fmt: skip
    work = WorkDir(version_dir.parent / ".work")
    shards, positions = runner.candidate_shards(candidates, recipe.shard_prompts)
    t0 = time.perf_counter()
    with progress_bar(console) as progress:
        ex = runner.make_executor(executor, work, console, progress, address, recipe.ray)
        reports = runner.run(ex, phase.steps(work, shards))
    stability = phase.stability_facts(work, shards) or not_measured(recipe.scoring.stability_bound)
    require_stable(stability)  # before any pairing: above the bound, no version
    parts = [phase.assemble(work, s) for s in shards]
    scored = runner.in_order(parts, positions, len(candidates))
    scored = scored.select_columns(candidate_columns(scored.column_names, phase.translated))
    timings = {"score_s": round(time.perf_counter() - t0, 2),
               "scoring_throughput": {r: reports[r].get("stats") for r in ("policy", "reference")}}  # fmt: skip
    path, manifest = write_child(version_dir, parent_manifest, recipe, scored, ids, timings,
                                 {"operation": "rescore", "reused": ["candidates (responses)"]}, name,
                                 if_changed, console, stability=stability)  # fmt: skip
    return path, manifest


def repair(
    version: str | Path, pairing: dict | None = None, name: str | None = None,
    if_changed: bool = False, console=None,
) -> tuple[Path, dict]:  # fmt: skip
    """Pair the parent's scored candidates again under new pairing settings (nothing regenerated
    or rescored); write and return a new version."""
    from icr_data.base.config import RecipeError, validate_pairing

    version_dir, parent_manifest, recipe = open_parent(version, name)
    if pairing:
        recipe.pairing = dataclasses.replace(recipe.pairing, **pairing)
    try:
        validate_pairing(recipe.pairing, "icr-data pair")
    except RecipeError as e:
        raise DeriveError(str(e)) from None
    candidates, files = reused_candidates(version_dir)
    return write_child(version_dir, parent_manifest, recipe, candidates, parent_manifest["models"], {},
                       {"operation": "pair", "reused": ["candidates (responses and scores)"]}, name,
                       if_changed, console, candidate_files=files)  # fmt: skip


def reused_candidates(version_dir: Path) -> tuple[Dataset, list[Path]]:
    """A version's candidates reused as they are (pair, drop): their files, to be linked or
    copied, and a table of only what pairing and the manifest read (responses and instructions
    are read a row group at a time, in pairing)."""
    import pyarrow.parquet as pq

    from icr_data.pairing.pairs import READS

    files = store.config_files(version_dir, "candidates")
    present = pq.read_schema(files[0]).names
    wanted = [c for c in (*READS, "reward_native") if c not in ("response", "instruction")]
    return store.read_table(version_dir, "candidates", [c for c in wanted if c in present]), files


def write_child(
    version_dir: Path, parent_manifest: dict, recipe: Recipe, candidates: Dataset, model_ids: dict,
    timings: dict, derived: dict, name: str | None, if_changed: bool = False, console=None,
    candidate_files: list[Path] | None = None, paired: tuple[Dataset, object] | None = None,
    stability: dict | None = None,
) -> tuple[Path, dict]:  # fmt: skip
    """Pair `candidates` under `recipe` and write them as a new version whose parent is the given
    one (with `candidate_files`, the parent's candidates, linked or copied; versioning.write_paired). When the
    latest version already holds this content, say so; with `if_changed`, write nothing and
    return that version. With `paired` (pairs, pair stats: curate's drop), no pairing runs.
    `stability`: the rescore's score stability; None: the scores are the parent's, and so is it."""
    from icr_data.commands.versioning import version_manifest, write_paired

    counts = parent_manifest["counts"]
    prompts = Dataset.from_dict(
        {"lang": [lang for lang, c in counts.items() for _ in range(c["prompts"])]}
    )
    rounds = [dict(r) for r in parent_manifest.get("rounds") or []]
    if rounds:  # same round; a rescore changes its reward pair
        rounds[-1]["reward"] = {
            "policy": model_ids.get("policy"),
            "reference": model_ids.get("reference"),
        }

    if stability is None:
        stability = (parent_manifest.get("scoring") or {}).get("stability")

    def manifest_for(pairs: Dataset, stats) -> dict:
        manifest = version_manifest(recipe, model_ids, pairs, stats, candidates, prompts,
                                    list(counts), timings, stability=stability,
                                    parent=f"{parent_manifest['dataset']}/{parent_manifest['version']}",
                                    rounds=rounds or None,
                                    recipe_dir=store.local_info(version_dir).get("recipe_dir"))  # fmt: skip
        manifest["derived"] = derived
        return manifest

    dataset_dir = version_dir.parent
    with writing(dataset_dir):  # a full disk: one line, the unfinished version removed
        path, manifest, same = write_paired(dataset_dir, candidates, recipe.pairing,
                                            manifest_for, name, if_changed, candidate_files,
                                            paired)  # fmt: skip
    if same:
        from icr_data.base.console import stderr_console

        skip = (
            "nothing written"
            if if_changed
            else "a new version is written anyway (--if-changed skips it)"
        )
        (console or stderr_console()).print(
            f"{dataset_dir.name}/{same} already holds this content: {skip}"
        )
    return path, manifest
