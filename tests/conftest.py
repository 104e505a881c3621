"""Shared fixtures: a tiny (policy, reference) pair built offline once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    from icr_data.tiny import build_tiny_pair

    return build_tiny_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tokenizer(tiny_pair):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_pair[0])


@pytest.fixture(autouse=True)
def _builtin_cache(tmp_path_factory, monkeypatch):
    """Builtin models (recipes' builtin:tiny-*) go to a per-session folder, not the user's cache."""
    monkeypatch.setenv("ICR_DATA_CACHE", str(tmp_path_factory.getbasetemp() / "icr_cache"))
