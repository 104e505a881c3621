"""Shared fixtures: a tiny (policy, reference) pair built offline once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    from icr_data.stages.tiny import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def build_tiny(tiny_pair):
    """`build_tiny(store_dir, *overrides)`: build recipes/demo_tiny.yaml with the tiny pair as
    generator, policy and reference, through the transformers backend (no vLLM start-up), 3
    samples per prompt; returns the version folder."""
    from pathlib import Path

    from icr_data.base.config import load_recipe
    from icr_data.commands.build import build

    policy, reference = tiny_pair
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo_tiny.yaml"

    def run(store_dir, *overrides: str):
        base = [f"store={store_dir}", f"models.generator={policy}", f"models.policy={policy}",
                f"models.reference={reference}", "sampling.backend=transformers", "sampling.n=3"]  # fmt: skip
        return build(load_recipe(recipe, [*base, *overrides])).path

    return run


@pytest.fixture(scope="session")
def tokenizer(tiny_pair):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_pair[0])


@pytest.fixture(autouse=True)
def _builtin_cache(tmp_path_factory, monkeypatch):
    """Builtin models (recipes' builtin:tiny-*) go to a per-session folder, not the user's cache."""
    monkeypatch.setenv("ICR_DATA_CACHE", str(tmp_path_factory.getbasetemp() / "icr_cache"))
