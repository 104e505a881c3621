"""No NaN or infinity reaches an engine (issue 29): every float option of every config (build
recipes, training configs, eval recipes; found by walking their dataclasses, so a new one is
tried without editing this file), numbers inside a training config's `trainer:` pass-through, and
every float option of every command of the CLI (found by walking the typer app) are refused as
NaN, +inf and -inf, in one line naming the key or option.

    pytest tests/test_finite.py
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from pathlib import Path

import pytest
from typer.models import ArgumentInfo, OptionInfo

from icr_data import cli
from icr_data.base.config import Recipe, RecipeError, load_recipe
from icr_data.base.train_config import TrainConfig, TrainError, load_train_config, validate_train
from icr_data.commands.evaluation import EvalConfig, EvalError, load_eval

ROOT = Path(__file__).resolve().parents[1]
BAD = [".nan", ".inf", "-.inf", ".NaN", "+.Inf"]  # YAML 1.1's spellings of the three values


def float_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of the fields of dataclass `cls` (and of its nested dataclasses) that hold a
    float (`float` or `float | None`)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out += float_keys(tp, f"{prefix}{f.name}.")
        elif tp is float or float in typing.get_args(tp):
            out.append(f"{prefix}{f.name}")
    return out


def test_the_walk_finds_the_float_options():
    assert {"scoring.beta", "sampling.temperature", "sampling.top_p", "pairing.threshold",
            "pairing.alpha_step", "ray.gpus_per_actor"} <= set(float_keys(Recipe))  # fmt: skip
    assert {"beta", "learning_rate", "lora.dropout"} <= set(float_keys(TrainConfig))
    assert {"beta", "sampling.temperature"} <= set(float_keys(EvalConfig))


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("key", float_keys(Recipe))
def test_a_recipe_refuses_a_non_finite_number(key, value):
    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "demo_tiny.yaml", [f"{key}={value}"])
    assert f"--set {key}={value}: '{key}' must be a finite number" in str(e.value), str(e.value)


TRAIN = "data: {source: pairs.jsonl}\nmodel: builtin:tiny-reference\noutput_dir: out\n"


def _nested(key: str, value: str) -> str:
    """`a.b: v` as YAML: a: {b: v}."""
    *parents, name = key.split(".")
    text = f"{name}: {value}"
    for p in reversed(parents):
        text = f"{p}: {{{text}}}"
    return text


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("key", float_keys(TrainConfig))
def test_a_training_config_refuses_a_non_finite_number(tmp_path, key, value):
    path = tmp_path / "dpo.yaml"
    path.write_text(TRAIN + _nested(key, value) + "\n")
    with pytest.raises(TrainError) as e:
        load_train_config(path)
    assert str(e.value).startswith(f"{path}: '{key}' must be a finite number"), str(e.value)


@pytest.mark.parametrize(
    "trainer, key",
    [("{adam_beta1: .nan}", "trainer.adam_beta1"), ("{adam_epsilon: .inf}", "trainer.adam_epsilon"),
     ("{lr_scheduler_kwargs: {power: -.inf}}", "trainer.lr_scheduler_kwargs.power"),
     ("{weights: [1.0, .nan]}", "trainer.weights[1]")],
)  # fmt: skip
def test_numbers_passed_through_to_trl_are_finite(tmp_path, trainer, key):
    path = tmp_path / "dpo.yaml"
    path.write_text(TRAIN + f"trainer: {trainer}\n")
    with pytest.raises(TrainError, match=re.escape(f"'{key}' must be a finite number")):
        load_train_config(path)
    cfg = TrainConfig(
        model="m", output_dir="o", trainer={"warmup_steps": 2, "adam_beta2": math.nan}
    )
    with pytest.raises(TrainError, match=r"'trainer.adam_beta2' must be a finite number"):
        validate_train(cfg, "in code")  # a config built in code is checked as a file's is


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("key", float_keys(EvalConfig))
def test_an_eval_recipe_refuses_a_non_finite_number(tmp_path, key, value):
    path = tmp_path / "eval.yaml"
    path.write_text("name: ev\ncandidate: a\nbaseline: b\njudges: ['llm:c']\n"
                    + _nested(key, value) + "\n")  # fmt: skip
    with pytest.raises(EvalError) as e:
        load_eval(path)
    assert str(e.value).startswith(f"{path}: '{key}' must be a finite number"), str(e.value)


def test_an_alias_bomb_of_numbers_is_walked_by_its_distinct_nodes(tmp_path):
    """Nine levels of nine aliases under `trainer:` (387 million numbers once expanded) are
    checked in well under a second: each shared list is visited once."""
    import time

    levels = ["  a0: &a0 [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, .nan]"]
    levels += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "dpo.yaml"
    path.write_text(TRAIN + "trainer:\n" + "\n".join(levels) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(TrainError, match=r"'trainer\.a\d(\[\d\])*' must be a finite number"):
        load_train_config(path)
    assert time.perf_counter() - t0 < 2


def _params(info) -> list[tuple[str, type, object, bool]]:
    """(option or argument, its type, its typer info, required) of a registered command."""
    fn = inspect.unwrap(info.callback)
    hints = typing.get_type_hints(fn, include_extras=True)
    out = []
    for name, param in inspect.signature(fn).parameters.items():
        tp, *meta = typing.get_args(hints[name]) or (hints[name],)
        info_ = next((m for m in meta if isinstance(m, (OptionInfo, ArgumentInfo))), None)
        decls = [d for d in getattr(info_, "param_decls", None) or () if d.startswith("--")]
        flag = decls[0] if decls else "--" + name.replace("_", "-")
        out.append((flag, tp, info_, param.default is inspect.Parameter.empty))
    return out


def _name(info) -> str:
    return info.name or inspect.unwrap(info.callback).__name__.replace("_", "-")


def float_options() -> list[tuple[str, str]]:
    """(command, --option) for every float option of every command of the CLI, read from the
    commands' signatures (typer builds its options from them)."""
    out = []
    for info in cli.app.registered_commands:
        for flag, tp, _, _ in _params(info):
            if tp is float or float in typing.get_args(tp):
                out.append((_name(info), flag))
    return sorted(out)


def _required(command: str) -> list[str]:
    """Placeholder values for a command's required arguments and options."""
    info = next(i for i in cli.app.registered_commands if _name(i) == command)
    args = []
    for flag, tp, typer_info, required in _params(info):
        if required:
            value = "1" if tp is int else "x"
            args += [value] if isinstance(typer_info, ArgumentInfo) else [flag, value]
    return args


def test_the_cli_has_float_options_to_try():
    found = set(float_options())
    assert {("score", "--beta"), ("pair", "--threshold"), ("check-reward", "--beta")} <= found


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
@pytest.mark.parametrize("command, option", float_options())
def test_every_float_option_of_the_cli_refuses_a_non_finite_number(
    command, option, value, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # whatever a command might write would land here
    with pytest.raises(SystemExit) as e:
        cli.main([command, *_required(command), f"{option}={value}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {option} must be a finite number, got "), err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ratio", ["nan:2", "0.5:nan", "0.5:inf", "-inf:2", "es=0.5:inf"])
def test_translate_ratio_bounds_are_finite(ratio):
    from icr_data.commands.translate import (
        TranslateConfig,
        TranslateError,
        check_config,
        parse_ratios,
    )

    default, by_lang = parse_ratios([ratio])
    cfg = TranslateConfig(source="p.jsonl", languages=["es"], model="m", ratio=default,
                          ratio_by_lang=by_lang)  # fmt: skip
    with pytest.raises(TranslateError, match=r"--ratio \((default|es)\): need finite 0 <= LO"):
        check_config(cfg)
