"""The one YAML loader: build recipes, DPO training configs and eval recipes are all read here.

    cfg = load(path, Recipe, ["sampling.n=8"], what="recipe", error=RecipeError,
               paths=("prompts.source", "models.policy"))

reads the file (a clear error naming it when it is missing, not UTF-8, not YAML or not a
mapping), applies the `--set key=value` overrides (a key an override got wrong is reported as
that override's, not the file's), builds the dataclass with unknown keys and wrongly typed values
refused (did-you-mean included), and resolves the relative paths among `paths` against the
file's folder. What a config means beyond its types (required keys, ranges, `previous`) is its
own module's business: config.py, train_config.py, commands/evaluation.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml

from icr_data.base.errors import IcrError

PATH_PREFIXES = ("train:", "reward:")
"""Model strings whose rest is a path: `train:CONFIG` (the model a training config trains) and
`reward:MODEL` (scoring.judge); the path after the prefix is resolved like any other."""


class ConfigError(IcrError):
    """A config file that cannot be read or built; the message names the file (or the --set
    override) and the key. Loaders pass their own subclass of IcrError as `error`."""


# ---------------------------------------------------------------------------- reading the file
def read_mapping(path: str | Path, what: str = "config", error: type[IcrError] = ConfigError,
                 keys: Iterable[str] = ()) -> dict:  # fmt: skip
    """The YAML mapping in `path` ({} for an empty file). `what` names the kind of file in the
    messages ("recipe", "training config", ...); `keys`, a few of its keys, for the one that
    says a file is not a mapping."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:  # a folder, no permission, ...: not "not found"
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                    f"save the {what} as UTF-8") from None  # fmt: skip
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        shown = ", ".join(f"{k}:" for k in list(keys)[:3])
        raise error(f"{path}: a {what} is a mapping of keys ({shown + ', ' if shown else ''}...), "
                    f"this file holds a {type(data).__name__}")  # fmt: skip
    return data


def apply_override(data: dict, override: str, where: str = "--set",
                   error: type[IcrError] = ConfigError) -> str:  # fmt: skip
    """Apply one `dotted.key=value` override (value parsed as YAML) to a raw mapping; returns the
    dotted key it set."""
    if "=" not in override:
        raise error(f"{where}: '{override}' is not KEY=VALUE (e.g. sampling.n=8)")
    if not isinstance(data, dict):
        raise error(f"{where}: '{override}': the recipe is not a mapping of keys")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""  # a value, not a file
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise error(f"{where}: '{key}' goes through a non-mapping value")
    node[parts[-1]] = value
    return ".".join(parts)


# ---------------------------------------------------------------------- building the dataclass
def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _origin(key: str, where: str, origins: dict[str, str]) -> str:
    """Who set the dotted `key`: the --set override of it (or of a mapping above it), else the
    file `where`."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:i]))
        if found:
            return found
    return where


def non_finite(value: Any, key: str) -> tuple[str, float] | None:
    """(dotted key, value) of the first NaN or infinity in `value` (a number, or one inside its
    lists and mappings, e.g. `trainer.adam_beta1`), else None. No option of any config means
    NaN or an infinity, and such a value would reach an engine (a NaN temperature, an infinite
    beta). Each list or mapping is walked once however often YAML aliases share it, so an alias
    bomb costs its distinct nodes, not its expansion."""
    seen: set[int] = set()
    todo = [(key, value)]
    while todo:
        k, v = todo.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return k, v
        if isinstance(v, (list, tuple, dict)) and id(v) not in seen:
            seen.add(id(v))
            items = v.items() if isinstance(v, dict) else enumerate(v)
            todo.extend((f"{k}.{i}" if isinstance(v, dict) else f"{k}[{i}]", x)
                        for i, x in items)  # fmt: skip
    return None


def shown(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters: an error message never formats an unbounded value
    (a YAML alias bomb expands to billions of items; repr would never end). Containers are
    shown by their first items, never walked whole."""
    if isinstance(value, dict):
        head = ", ".join(f"{k!r}: ..." for k in list(value)[:3])
        text = f"{{{head}{', ...' if len(value) > 3 else ''}}} (a mapping of {len(value)} keys)"
    elif isinstance(value, (list, tuple)):
        head = ", ".join(shown(v, 20) for v in value[:3])
        text = f"[{head}{', ...' if len(value) > 3 else ''}] (a list of {len(value)} items)"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_dict(cls: type, data: Any, where: str, prefix: str = "",
              error: type[IcrError] = ConfigError,
              origins: dict[str, str] | None = None) -> Any:  # fmt: skip
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrongly typed values.
    Messages start with `where` (the file), or with the override that set the key at fault when
    `origins` (dotted key -> "--set KEY=VALUE") names one."""
    origins = origins or {}
    if not isinstance(data, dict):
        key = prefix.rstrip(".")
        raise error(f"{_origin(key, where, origins)}: '{key or 'recipe'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            parts.append(f"'{prefix}{k}'{hint}")
        at = _origin(f"{prefix}{unknown[0]}", where, origins)
        raise error(f"{at}: unknown key {', '.join(parts)}; known: {', '.join(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, where, f"{prefix}{name}.", error, origins)
        elif not _type_ok(value, tp):
            at = _origin(f"{prefix}{name}", where, origins)
            raise error(f"{at}: '{prefix}{name}' must be {_describe(tp)}, got {shown(value)}")
        elif (bad := non_finite(value, f"{prefix}{name}")) is not None:
            at = _origin(f"{prefix}{name}", where, origins)
            raise error(f"{at}: '{bad[0]}' must be a finite number, got {bad[1]!r}")
        else:
            kwargs[name] = float(value) if tp is float else value
    return cls(**kwargs)


# ------------------------------------------------------------------------------ relative paths
FILE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".parquet", ".csv", ".txt", ".jinja", ".md")
"""Names that can only be files: when one is found neither in the config file's folder nor in
the working directory, it is reported in the config file's folder (where the rule looks first)."""


def resolve_relative(value: str, base: Path) -> str:
    """The one rule for a relative path in a config file: looked up first in `base` (the config
    file's folder), then in the working directory. Found in `base`: that path (absolute). Found
    only from the working directory: as written. Found in neither: a file name (FILE_SUFFIXES)
    becomes its path in `base`, so the "not found" error says where it was looked for first;
    anything else stays as written (a Hub id, a word). Absolute paths and names with a scheme
    (builtin:x, hf:...) are kept as they are."""
    if not value or Path(value).is_absolute() or ":" in value.split("/")[0]:
        return value
    candidate = base / value
    try:
        if candidate.exists():
            return str(candidate.resolve())
        if Path(value).exists() or not value.lower().endswith(FILE_SUFFIXES):
            return value
        return str(candidate.resolve())
    except OSError:  # not a file name at all (an inline chat template, say)
        return value


def resolve_path(value: str, base: Path) -> str:
    """resolve_relative, keeping a PATH_PREFIXES prefix (`train:dpo.yaml`) in front of the path."""
    for prefix in PATH_PREFIXES:
        if value.startswith(prefix):
            return prefix + resolve_relative(value.removeprefix(prefix), base)
    return resolve_relative(value, base)


def resolve_fields(cfg: Any, fields: Iterable[str], base: Path, keep: Iterable[str] = ()) -> None:
    """Resolve each dotted field of `cfg` (a string) with resolve_path; None, empty values and
    the words in `keep` (e.g. `previous`) are left as they are."""
    keep = set(keep)
    for dotted in fields:
        *parents, name = dotted.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        value = getattr(node, name)
        if isinstance(value, str) and value and value not in keep:
            setattr(node, name, resolve_path(value, base))


# ------------------------------------------------------------------------------------ the loader
def load(path: str | Path, cls: type, overrides: Iterable[str] = (), *, what: str = "config",
         error: type[IcrError] = ConfigError, paths: Iterable[str] = (),
         keep: Iterable[str] = ()) -> Any:  # fmt: skip
    """Read `path`, apply the `--set` overrides, build `cls` and resolve its dotted `paths`
    against the file's folder (see the module docstring); errors are raised as `error`."""
    path = Path(path)
    names = [f.name for f in dataclasses.fields(cls)]
    data = read_mapping(path, what, error, keys=names)
    origins: dict[str, str] = {}
    for o in overrides:
        key = apply_override(data, o, error=error)
        origins = {k: v for k, v in origins.items() if not k.startswith(key + ".")}
        origins[key] = f"--set {o}"
    cfg = from_dict(cls, data, str(path), error=error, origins=origins)
    resolve_fields(cfg, paths, path.resolve().parent, keep)
    return cfg
