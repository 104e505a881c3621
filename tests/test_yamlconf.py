"""The one YAML loader (base/yamlconf.py): every config file is read, overridden, built and
resolved the same way, and each failure names the file, or the --set override, at fault."""

from dataclasses import dataclass, field

import pytest

from icr_data.base.errors import IcrError
from icr_data.base.yamlconf import ConfigError, load


@dataclass
class Inner:
    n: int = 1
    path: str = ""


@dataclass
class Widget:
    name: str = ""
    source: str = ""
    model: str = ""
    inner: Inner = field(default_factory=Inner)


def write(tmp_path, text, name="w.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_file_loads_with_its_overrides(tmp_path):
    path = write(tmp_path, "name: a\ninner: {n: 2}\n")
    w = load(path, Widget, ["inner.n=5", "name=b"])
    assert (w.name, w.inner.n, w.inner.path) == ("b", 5, "")
    assert load(write(tmp_path, ""), Widget) == Widget()  # an empty file: the defaults


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^widget not found: .*nope.yaml$"):
        load(tmp_path / "nope.yaml", Widget, what="widget")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read widget .*dir.yaml"):
        load(tmp_path / "dir.yaml", Widget, what="widget")


def test_text_that_is_not_utf8_names_the_line(tmp_path):
    (tmp_path / "w.yaml").write_bytes("name: a\nsource: caf\xe9\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=r"w.yaml:2: not UTF-8 text \(byte 0xe9\); save the widget"
    ):
        load(tmp_path / "w.yaml", Widget, what="widget")


def test_bad_yaml_and_a_file_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"w.yaml: not valid YAML: "):
        load(write(tmp_path, "name: [a\n"), Widget)
    with pytest.raises(ConfigError, match=r"w.yaml: a widget is a mapping of keys \(name:, source:, "
                       r"model:, \.\.\.\), this file holds a list"):  # fmt: skip
        load(write(tmp_path, "- a\n"), Widget, ["name=x"], what="widget")


def test_unknown_keys_and_wrong_types_name_the_file_and_key(tmp_path):
    path = write(tmp_path, "inner: {nn: 2}\n")
    with pytest.raises(ConfigError) as e:
        load(path, Widget)
    assert str(e.value).startswith(f"{path}: unknown key 'inner.nn' (did you mean 'inner.n'?)")
    with pytest.raises(ConfigError, match=r"w.yaml: 'inner.n' must be int, got 'two'"):
        load(write(tmp_path, "inner: {n: two}\n"), Widget)
    with pytest.raises(ConfigError, match=r"w.yaml: 'inner' must be a mapping"):
        load(write(tmp_path, "inner: 3\n"), Widget)


def test_a_typo_in_an_override_is_the_overrides_not_the_files(tmp_path):
    path = write(tmp_path, "name: a\n")
    with pytest.raises(ConfigError) as e:
        load(path, Widget, ["inner.n=2", "inner.nn=3"])
    message = str(e.value)
    assert message.startswith("--set inner.nn=3: unknown key 'inner.nn' (did you mean 'inner.n'?)")
    assert str(path) not in message
    with pytest.raises(ConfigError, match=r"^--set inner.n=two: 'inner.n' must be int"):
        load(path, Widget, ["inner.n=two"])
    with pytest.raises(ConfigError, match=r"^--set inner=\{nn: 1\}: unknown key 'inner.nn'"):
        load(path, Widget, ["inner.n=2", "inner={nn: 1}"])  # a mapping above the key set it
    with pytest.raises(ConfigError, match=r"^--set: 'name.x' goes through a non-mapping value"):
        load(path, Widget, ["name.x=1"])
    with pytest.raises(ConfigError, match=r"^--set: 'inner.n' is not KEY=VALUE"):
        load(path, Widget, ["inner.n"])
    # the file's own mistake stays the file's, overrides or not
    with pytest.raises(ConfigError, match=r"w.yaml: unknown key 'nme'"):
        load(write(tmp_path, "nme: a\n"), Widget, ["inner.n=2"])


def test_relative_paths_resolve_against_the_files_folder_when_they_name_something_there(
    tmp_path, monkeypatch
):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "data.jsonl").write_text("")
    (conf / "dpo.yaml").write_text("")
    (conf / "previous").write_text("")  # a word kept as a word, even with a file by that name
    monkeypatch.chdir(tmp_path)
    path = write(conf, "source: data.jsonl\nmodel: train:dpo.yaml\ninner: {path: elsewhere.txt}\n")
    paths = ("source", "model", "inner.path", "name")
    w = load(path, Widget, paths=paths)
    assert w.source == str(conf / "data.jsonl")  # there: resolved (absolute)
    assert w.model == f"train:{conf / 'dpo.yaml'}"  # the prefix kept, the path resolved
    assert w.inner.path == str(conf / "elsewhere.txt")  # in neither place: named in the folder
    (tmp_path / "elsewhere.txt").write_text("")
    w = load(path, Widget, paths=paths)
    assert w.inner.path == "elsewhere.txt"  # only from the working directory: as written
    w = load(path, Widget, ["source=org/model-7b"], paths=paths)
    assert w.source == "org/model-7b"  # no file suffix, in neither place: a Hub id, as written
    w = load(path, Widget, ["source=/abs/x", "model=builtin:tiny", "name=previous"], paths=paths,
             keep=("previous",))  # fmt: skip
    assert (w.source, w.model, w.name) == ("/abs/x", "builtin:tiny", "previous")
    assert load(path, Widget).source == "data.jsonl"  # only the fields named in `paths`


def test_errors_are_raised_as_the_callers_kind(tmp_path):
    class WidgetError(IcrError):
        pass

    with pytest.raises(WidgetError, match="widget not found"):
        load(tmp_path / "nope.yaml", Widget, what="widget", error=WidgetError)
    with pytest.raises(WidgetError, match="^--set nam=x: unknown key 'nam'"):
        load(write(tmp_path, "{}"), Widget, ["nam=x"], error=WidgetError)


def test_the_three_loaders_read_through_it(tmp_path):
    from icr_data.base.config import RecipeError, load_recipe
    from icr_data.base.train_config import TrainError, load_train_config
    from icr_data.commands.evaluation import EvalError, load_eval

    with pytest.raises(RecipeError, match="^recipe not found"):
        load_recipe(tmp_path / "r.yaml")
    with pytest.raises(TrainError, match="^training config not found"):
        load_train_config(tmp_path / "t.yaml")
    with pytest.raises(EvalError, match="^eval recipe not found"):
        load_eval(tmp_path / "e.yaml")
    recipe = write(tmp_path, "dataset: t\nprompts: {source: p.jsonl}\n")
    with pytest.raises(RecipeError, match=r"^--set sampling.temprature=1: unknown key "
                       r"'sampling.temprature' \(did you mean 'sampling.temperature'\?\)"):  # fmt: skip
        load_recipe(recipe, ["sampling.temprature=1"])
    with pytest.raises(TrainError, match=r"t.yaml: not valid YAML"):
        load_train_config(write(tmp_path, "model: [\n", "t.yaml"))
    with pytest.raises(EvalError, match=r"^--set judgs=\[\]: unknown key 'judgs'"):
        load_eval(write(tmp_path, "name: e\n", "e.yaml"), ["judgs=[]"])
