"""Resolving a model string is pure; preparing `builtin:` and `train:` models is its own step."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

import pytest
import yaml

from icr_data.commands import prepare
from icr_data.stages import models
from icr_data.stages.models import ModelError, NotPrepared

ROOT = Path(__file__).resolve().parents[1]
DEMO_TRAIN = ROOT / "recipes" / "dpo_demo_tiny.yaml"  # LoRA, 4 steps on the tiny reference


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty icr_data cache of this test's own."""
    path = tmp_path / "cache"
    monkeypatch.setenv("ICR_DATA_CACHE", str(path))
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def _train_config(folder: Path, name: str, **kw) -> Path:
    cfg = yaml.safe_load(DEMO_TRAIN.read_text())
    cfg["data"]["source"] = str(ROOT / "recipes" / cfg["data"]["source"])
    cfg.update(kw)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_resolve_builds_nothing_and_says_how_to_prepare(cache):
    with pytest.raises(NotPrepared, match=r"models\.policy: builtin:tiny-policy is not prepared yet; "
                       r"run `icr-data prepare builtin:tiny-policy`"):  # fmt: skip
        models.resolve("builtin:tiny-policy", "policy")
    with pytest.raises(
        NotPrepared, match=r"models\.generator: builtin:smollm2-135m-instruct is not"
    ):
        models.resolve("builtin:smollm2-135m-instruct", "generator")
    with pytest.raises(ModelError, match=r"models\.policy: unknown builtin model 'builtin:nope'"):
        models.resolve("builtin:nope", "policy")
    assert _files(cache) == []


def test_prepare_builds_a_builtin_once_and_resolve_finds_it(cache):
    steps = prepare.plan(["builtin:tiny-policy", "builtin:tiny-policy", "some/hub-id"])
    assert [(s.spec, s.what, s.done) for s in steps] == [
        ("builtin:tiny-policy", "build tiny models", False)
    ]
    assert steps[0].path is not None and cache in steps[0].path.parents
    assert _files(cache) == []  # planning built nothing

    prepare.run(steps)
    assert steps[0].done
    path = models.resolve("builtin:tiny-policy", "policy")
    assert path == str(steps[0].path) and (Path(path) / "config.json").is_file()
    ref = models.resolve("builtin:tiny-reference", "reference")  # the pair is built together
    assert Path(ref).parent == Path(path).parent
    assert [s.done for s in prepare.plan(["builtin:tiny-policy", "builtin:tiny-reference"])] == [
        True,
        True,
    ]
    before = {f: f.stat().st_mtime_ns for f in _files(cache)}
    prepare.ensure(["builtin:tiny-policy", "builtin:tiny-reference"])  # idempotent
    assert {f: f.stat().st_mtime_ns for f in _files(cache)} == before


def test_a_killed_preparation_leaves_nothing_that_counts(cache, monkeypatch):
    import icr_data.stages.tiny

    def killed(out_dir, seed=0):
        (Path(out_dir) / "tiny-policy").mkdir(parents=True)
        (Path(out_dir) / "tiny-policy" / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(icr_data.stages.tiny, "build_tiny_pair", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare.ensure(["builtin:tiny-policy"])
    with pytest.raises(NotPrepared):
        models.resolve("builtin:tiny-policy", "policy")
    assert not prepare.plan(["builtin:tiny-policy"])[0].done


def test_plan_puts_what_a_training_starts_from_first(cache, tmp_path):
    first = _train_config(tmp_path, "first")  # starts from builtin:tiny-reference
    second = _train_config(tmp_path, "second", model=f"train:{first}",
                           reference="builtin:tiny-policy")  # fmt: skip
    steps = prepare.plan([f"train:{second}", "builtin:tiny-reference"])
    assert [(s.spec, s.what) for s in steps] == [
        ("builtin:tiny-reference", "build tiny models"),
        (f"train:{first}", "train"),
        ("builtin:tiny-policy", "build tiny models"),
        (f"train:{second}", "train"),
    ]
    assert not any(s.done for s in steps)
    # a training's folder hashes the model it starts from: unknown until that one is prepared
    assert steps[1].path is None and steps[3].path is None
    with pytest.raises(NotPrepared, match=rf"models\.policy: train:{second} is not prepared yet "
                       r"\(nor is the model it starts from\); run `icr-data prepare train:"):  # fmt: skip
        models.resolve(f"train:{second}", "policy")
    assert _files(cache) == []

    loop_a, loop_b = tmp_path / "loop_a.yaml", tmp_path / "loop_b.yaml"
    _train_config(tmp_path, "loop_a", model=f"train:{loop_b}")
    _train_config(tmp_path, "loop_b", model=f"train:{loop_a}")
    with pytest.raises(ModelError, match="start from each other: .*loop_a.yaml -> .*loop_b.yaml"):
        prepare.plan([f"train:{loop_a}"])
    adapter = _train_config(tmp_path, "adapter", lora={"r": 4, "alpha": 8, "merge": False})
    with pytest.raises(ModelError, match="lora.merge is false"):
        prepare.plan([f"train:{adapter}"])


def _old_trained_path(config: Path) -> Path:
    """The cache folder as trained_model computed it before resolving became pure."""
    import icr_data.commands.train
    from icr_data.base.train_config import load_train_config
    from icr_data.stages.tiny import builtin_cache
    from icr_data.store.shards import digest
    from icr_data.store.store import sha256_file

    cfg = load_train_config(config, need_output=False)
    src = Path(cfg.data.source)
    data_key = (sha256_file(src) if src.is_file() else
                sha256_file(src / "manifest.json") if src.is_dir() else
                f"{cfg.data.source}@{cfg.data.revision}")  # fmt: skip
    start = models.identity(cfg.model, models.resolve(cfg.model, "model"))
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "output_dir"}
    settings["data"].pop("source")
    package = Path(icr_data.commands.train.__file__).parents[1]
    code = {
        Path(where).name: sha256_file(package / where)
        for where in (
            "commands/train.py",
            "store/version_ref.py",
            "stages/score.py",
            "stages/chat.py",
        )
    }
    code["trl"] = importlib.metadata.version("trl")  # the trainer's version is part of the key
    key = digest({"config": settings, "data": data_key, "code": code,
                  "model": start.get("sha256") or start["name"]})  # fmt: skip
    return builtin_cache() / "trained" / f"{Path(config).stem}-{key[:16]}"


def test_prepare_trains_a_chain_once_where_the_old_key_put_it(cache, tmp_path):
    first = _train_config(tmp_path, "first", max_steps=2)
    second = _train_config(tmp_path, "second", model=f"train:{first}", max_steps=1)
    steps = prepare.plan([f"train:{second}"])
    assert [s.spec for s in steps] == [
        "builtin:tiny-reference",
        f"train:{first}",
        f"train:{second}",
    ]
    prepare.run(steps)
    assert all(s.done for s in steps)
    assert steps[1].path == models.trained_path(first) == _old_trained_path(first)
    assert steps[2].path == models.trained_path(second) == _old_trained_path(second)
    assert models.resolve(f"train:{second}", "policy") == str(steps[2].path)
    assert (steps[2].path / "training.json").is_file()
    assert all(s.done for s in prepare.plan([f"train:{second}"]))

    # a run killed mid-training (no training.json yet) counts as not prepared, and is redone
    (steps[2].path / "training.json").unlink()
    with pytest.raises(NotPrepared):
        models.resolve(f"train:{second}", "policy")
    prepare.ensure([f"train:{second}"])
    assert models.resolve(f"train:{second}", "policy") == str(steps[2].path)
