"""The dataset card: a Jinja template (cards/dataset_card.md) rendered from a version's manifest.

`render_card(manifest)` is pure: the same manifest gives the same README.md. The YAML header
carries what the Hub reads (language, configs, task_categories, size_categories, license, tags);
`huggingface_hub.DatasetCard.load` parses the result.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from icr_data.base.languages import language_name

# The load snippet's dataset argument in a local card; publish puts the repo id there (for_repo).
LOAD_PLACEHOLDER = "<this folder or Hub repo>"


def for_repo(card: str, repo_id: str) -> str:
    """The card as published to `repo_id`: its load snippet names the repo."""
    return card.replace(f'"{LOAD_PLACEHOLDER}"', f'"{repo_id}"')


def template_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (
        here.parent.parent / "cards",
        here.parent / "_cards",
    ):  # source tree, then wheel
        if (candidate / "dataset_card.md").is_file():
            return candidate
    raise FileNotFoundError("dataset card template cards/dataset_card.md not found")


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]  # fmt: skip
    return next((label for bound, label in bounds if n < bound), "n>10M")


def card_header(manifest: dict) -> dict:
    langs = list(manifest["counts"])
    total_pairs = sum(c["pairs"] for c in manifest["counts"].values())
    return {
        "language": langs,
        "license": manifest["recipe"].get("license") or "other",
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total_pairs)],
        "tags": ["dpo", "preference", "multilingual", "implicit-reward", "icr-data"],
        "pretty_name": f"{manifest['dataset']} {manifest['version']}",
        "configs": [
            {"config_name": "pairs", "default": True, "data_files": _data_files(manifest, "pairs")},
            {"config_name": "candidates", "data_files": _data_files(manifest, "candidates")},
        ],
    }


def _data_files(manifest: dict, config: str) -> list[dict]:
    # Exact (content-addressed) file names rather than a glob: `datasets` derives its cache key
    # from this metadata, so distinct content must give distinct metadata.
    files = manifest.get("files", {}).get(config) or [f"data/{config}/*.parquet"]
    return [{"split": "train", "path": files if len(files) > 1 else files[0]}]


def environment():
    """The Jinja environment of the card templates (cards/): strict, with `language_name`."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["language_name"] = language_name
    return env


def prompt_rows(manifest: dict) -> str:
    """The card's prompt count, labelled: rows are (prompt_id, language), not prompts, e.g.
    '25 prompt rows (5 prompts x 5 languages)' or '9 prompt rows (en 5, de 4)'."""
    per_lang = {lang: c["prompts"] for lang, c in manifest["counts"].items()}
    total = manifest["totals"]["prompts"]
    sizes = set(per_lang.values())
    if len(sizes) == 1:
        n = len(per_lang)
        detail = f"{sizes.pop()} prompts x {n} language{'s' if n != 1 else ''}"
    else:
        detail = "one per prompt_id and language: " + ", ".join(
            f"{k} {v}" for k, v in per_lang.items()
        )
    return f"{total} prompt rows ({detail})"


def stability(facts: dict | None) -> str:
    """The card's score stability (the manifest's scoring.stability, commands/stability.py):
    'max |Δ log-prob| 2.1e-06 nats over 16 rescored candidates of 120 ...; bound 0.01', or
    'not measured' (scoring.stability_sample 0, or a version made before it was measured)."""
    if not facts or not facts.get("measured"):
        return "not measured"
    return (f"max |Δ log-prob| {facts['max']:.1e} nats over {facts['rescored']} rescored "
            f"candidates of {facts['candidates']} under the policy and the reference, in "
            f"{facts['order']}; bound {facts['bound']:g}")  # fmt: skip


def render_card(manifest: dict) -> str:
    env = environment()
    env.filters["prompt_rows"] = prompt_rows
    env.filters["fmt"] = lambda v: "-" if v is None else f"{v:.3f}"
    env.filters["reasons"] = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "-"
    env.filters["stability"] = stability
    header = yaml.safe_dump(card_header(manifest), sort_keys=False, allow_unicode=True)
    return env.get_template("dataset_card.md").render(header=header, m=manifest)
