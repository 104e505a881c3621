"""Nothing published may carry a local path (issue 19, section 2): portable manifests and cards,
this machine's recipe kept in the version's hidden local file, publish refusing strings that look
like local paths unless --allow-local-paths, and the published card (repo id in its load
snippet, a citation, limitations)."""

import json
from pathlib import Path

import pytest
from datasets import Dataset
from huggingface_hub import DatasetCard
from synthetic import tables

from icr_data.base.config import Recipe
from icr_data.cli import main
from icr_data.commands import publish
from icr_data.commands.versioning import run_facts
from icr_data.pairing.pairs import PairingConfig, make_pairs
from icr_data.store import store
from icr_data.store.card import render_card
from icr_data.store.manifest import make_manifest, margin_summary

LOAD_PLACEHOLDER = "<this folder or Hub repo>"  # the local card's load snippet (card.py)


def portable_path(*args):
    return store.portable_path(*args)


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


@pytest.fixture
def project(tmp_path):
    """A recipe folder with a prompts file and a train: config, models in a cache elsewhere."""
    recipes = tmp_path / "home" / "alice" / "proj" / "recipes"
    (recipes / "data").mkdir(parents=True)
    (recipes / "data" / "prompts.jsonl").write_text('{"prompt_id": "a"}\n')
    (recipes / "dpo.yaml").write_text("model: x\n")
    cache = tmp_path / "cache" / "models" / "policy"
    cache.mkdir(parents=True)
    return recipes, cache


def local_manifest(project, recipe_dir=None):
    recipes, cache = project
    tabs, _ = tables()
    pairs, stats = make_pairs(tabs["candidates"], PairingConfig())
    prompts = Dataset.from_list([{"lang": "en"}, {"lang": "de"}])
    counts, margins = margin_summary(pairs, tabs["candidates"], prompts, ["en", "de"])
    recipe = Recipe(dataset="t", store=str(recipes.parent / "icr_store"))
    recipe.prompts.source = str(recipes / "data" / "prompts.jsonl")
    recipe.models.generator = f"train:{recipes / 'dpo.yaml'}"
    recipe.models.policy = f"train:{recipes / 'dpo.yaml'}"
    recipe.models.reference = str(cache)
    ids = {"generator": {"name": recipe.models.generator, "sha256": "ab" * 32},
           "policy": {"name": recipe.models.policy, "sha256": "ab" * 32},
           "reference": {"name": str(cache), "sha256": "cd" * 32}}  # fmt: skip
    manifest = make_manifest(
        recipe, ids, run_facts(recipe, ids, stats, None), counts, margins, {}, recipe_dir=recipe_dir
    )
    return tabs, manifest, recipe


def test_portable_paths():
    base = "/home/alice/proj/recipes"
    assert portable_path("/home/alice/proj/recipes/data/p.jsonl", base) == "data/p.jsonl"
    assert portable_path("train:/home/alice/proj/recipes/dpo.yaml", base) == "train:dpo.yaml"
    assert portable_path("/home/alice/.cache/icr/policy", base) == "policy"
    assert portable_path("/home/alice/proj/recipes/data/p.jsonl") == "p.jsonl"
    assert portable_path("C:\\Users\\alice\\p.jsonl") == "p.jsonl"
    for kept in ("builtin:tiny-reference", "org/model", "data/p.jsonl", "https://hf.co/a/b/c"):
        assert portable_path(kept, base) == kept


@pytest.mark.parametrize("with_recipe_dir", [True, False])
def test_manifest_and_card_hold_no_local_path(project, tmp_path, with_recipe_dir):
    recipes, _ = project
    tabs, manifest, recipe = local_manifest(project, recipes if with_recipe_dir else None)
    v1 = store.write_version(tmp_path / "store", "t", tabs, manifest, render_card)
    for name in ("manifest.json", "README.md"):
        text = (v1 / name).read_text()
        assert str(tmp_path) not in text and publish.local_paths(text) == [], name
    m = store.read_manifest(v1)
    source = "data/prompts.jsonl" if with_recipe_dir else "prompts.jsonl"
    assert m["recipe"]["prompts"]["source"] == source
    assert m["recipe"]["models"]["policy"] == "train:dpo.yaml"
    assert m["models"]["reference"] == {"name": "policy", "sha256": "cd" * 32}
    assert m["sources"]["prompts"] == {
        "path": source, "sha256": store.sha256_file(recipes / "data" / "prompts.jsonl")
    }  # fmt: skip
    assert store.LOCAL_KEY not in m
    # this machine's recipe stays beside it, hidden and never published
    assert store.local_recipe(v1) == recipe.to_dict()
    assert store.local_recipe(v1)["prompts"]["source"] == str(recipes / "data" / "prompts.jsonl")
    assert store.local_info(v1)["recipe_dir"] == (str(recipes) if with_recipe_dir else None)
    plan = publish.plan_publish(v1, "me/icr")
    assert store.LOCAL_FILE not in [op.path_in_repo for op in plan.adds]


def test_a_version_without_local_file_falls_back_to_the_portable_recipe(tmp_path):
    tabs, manifest = tables()
    v1 = store.write_version(tmp_path / "store", "t", tabs, manifest, render_card)
    assert not (v1 / store.LOCAL_FILE).exists()  # nothing local to keep
    assert store.local_recipe(v1) == store.read_manifest(v1)["recipe"]


def write_with(tmp_path, **edit) -> Path:
    """A version whose manifest.json and card were edited after writing: as a version written
    before manifests became portable, or edited by hand."""
    tabs, manifest = tables()
    v = store.write_version(tmp_path / "store", "t", tabs, manifest, render_card)
    manifest = store.read_manifest(v)
    for dotted, value in edit.items():
        node = manifest
        *path, last = dotted.split("__")
        for k in path:
            node = node[k]
        node[last] = value
    (v / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (v / "README.md").write_text(render_card(manifest))
    return v


def test_any_writer_s_manifest_is_made_portable(tmp_path):
    """A manifest not made by make_manifest (translate's, say) loses its absolute paths too."""
    tabs, manifest = tables()
    manifest["model"] = {"name": str(tmp_path / "models" / "mt"), "sha256": "ab" * 32}
    manifest["recipe"]["models"]["chat_template"] = str(tmp_path / "t.jinja")
    v = store.write_version(tmp_path / "store", "t", tabs, manifest, render_card)
    m = store.read_manifest(v)
    assert m["model"]["name"] == "mt" and m["recipe"]["models"]["chat_template"] == "t.jinja"
    assert str(tmp_path) not in (v / "manifest.json").read_text() + (v / "README.md").read_text()
    assert manifest["model"]["name"] == "mt"  # the caller's dict says what was written


@pytest.mark.parametrize(
    ("edit", "where", "string"),
    [
        ({"models__policy__name": "train:/home/alice/proj/dpo.yaml"}, "models.policy.name",
         "/home/alice/proj/dpo.yaml"),
        ({"recipe__prompts__source": "/tmp/pytest-of-bob/p.jsonl"}, "recipe.prompts.source",
         "/tmp/pytest-of-bob/p.jsonl"),
        ({"recipe__store": "C:\\Users\\carol\\icr_store"}, "recipe.store",
         "C:\\Users\\carol\\icr_store"),
        ({"recipe__description": "built in /Users/dave/work"}, "recipe.description",
         "/Users/dave/work"),
        ({"recipe__description": "see ~/notes/run.txt"}, "recipe.description", "~/notes/run.txt"),
        ({"recipe__description": "from /root"}, "recipe.description", "/root"),
    ],
)  # fmt: skip
def test_publish_refuses_a_local_path_and_names_it(tmp_path, capsys, edit, where, string):
    v1 = write_with(tmp_path, **edit)
    with pytest.raises(publish.PublishError) as e:
        publish.plan_publish(v1, "me/icr")
    msg = str(e.value)
    assert msg.startswith(f"manifest.json ({where}) holds a local path {string!r}")
    assert "--allow-local-paths" in msg and "\n" not in msg
    out = tmp_path / "dry"
    assert run_cli(["publish", str(v1), "--repo", "me/icr", "--dry-run", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: manifest.json") and err.count("\n") == 1 and not out.exists()
    # allowed explicitly: planned and written as it is
    assert publish.plan_publish(v1, "me/icr", allow_local_paths=True).tag == "v1"


def test_cli_allow_local_paths_writes_the_dry_run(tmp_path, capsys):
    v1 = write_with(tmp_path, recipe__prompts__source="/home/alice/p.jsonl")
    out = tmp_path / "dry"
    assert run_cli(["publish", str(v1), "--repo", "me/icr", "--dry-run", str(out),
                    "--allow-local-paths"]) == 0  # fmt: skip
    assert capsys.readouterr().out == f"{out}\n"
    assert json.loads((out / "manifest.json").read_text())["recipe"]["prompts"]["source"] == (
        "/home/alice/p.jsonl"
    )


def test_a_local_path_in_the_card_is_named_with_its_line(tmp_path):
    v1 = write_with(tmp_path, recipe__description="Made from D:\\data\\prompts.jsonl")
    m = store.read_manifest(v1)
    m["recipe"]["description"] = "clean"  # the card keeps it, the manifest does not
    (v1 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(publish.PublishError, match=r"^README.md \(line \d+\) holds a local path "
                       r"'D:\\\\data\\\\prompts.jsonl'"):  # fmt: skip
        publish.plan_publish(v1, "me/icr")


def test_ordinary_text_is_not_a_local_path():
    text = ("see https://huggingface.co/datasets/me/icr/tree/v1 and data/pairs/x.parquet, "
            "en/de/fr, 1/2/3, and/or, `reward - alpha * length`, \\x1f")  # fmt: skip
    assert publish.local_paths(text) == []


def test_published_card_names_the_repo_cites_the_paper_and_states_limitations(tmp_path):
    tabs, manifest = tables()
    v1 = store.write_version(tmp_path / "store", "t", tabs, manifest, render_card)
    local = (v1 / "README.md").read_text()
    assert f'load_dataset("{LOAD_PLACEHOLDER}", "pairs"' in local  # a local card: the folder
    for heading in ("## Limitations", "## Citation"):
        assert heading in local
    assert "@inproceedings{yang-etal-2025-implicit" in local and "2503.04647" in local
    assert (
        "Implicit Cross-Lingual Rewarding for Efficient Multilingual Preference Alignment" in local
    )
    assert "Yang, Wen and Wu, Junhong and Wang, Chen and Zong, Chengqing and Zhang, Jiajun" in local
    out = publish.dry_run(publish.plan_publish(v1, "me/icr-demo"), tmp_path / "dry")
    card = (out / "README.md").read_text()
    assert LOAD_PLACEHOLDER not in card
    assert 'load_dataset("me/icr-demo", "pairs", split="train")' in card
    assert 'load_dataset("me/icr-demo", "candidates", split="train")' in card
    assert (
        DatasetCard.load(out / "README.md").data.configs
        == DatasetCard.load(v1 / "README.md").data.configs
    )


def test_a_child_version_keeps_paths_relative_to_the_parents_recipe(project, tmp_path):
    from icr_data.commands.derive import repair

    recipes, _ = project
    tabs, manifest, recipe = local_manifest(project, recipes)
    v1 = store.write_version(tmp_path / "store", "t", tabs, manifest, render_card)
    v2, m2 = repair(v1, {"rule": "max_random"})
    assert m2["recipe"]["prompts"]["source"] == "data/prompts.jsonl"
    assert m2["sources"]["prompts"]["path"] == "data/prompts.jsonl"
    assert store.local_info(v2) == store.local_info(v1) | {"recipe": store.local_recipe(v2)}
    assert store.local_recipe(v2)["pairing"]["rule"] == "max_random"
    assert str(tmp_path) not in (v2 / "manifest.json").read_text()
