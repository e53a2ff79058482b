"""Typed configs: YAML and `key.sub=value` overrides into dataclasses, strictly.

Every config is a dataclass whose fields carry a docstring (a string literal right after the field,
read here with `ast`). Loading rejects unknown keys and wrong types with the full key path, so a typo
in a recipe fails at once instead of silently training with a default.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from draftheads.utils.errors import ConfigError

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass `cls` to the docstring written right below it in the source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _type_name(tp: Any) -> str:
    """How an error names a type: `int or null`, `int or 'auto'`."""
    if isinstance(tp, type):
        return "null" if tp is type(None) else tp.__name__
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(arg) for arg in typing.get_args(tp))
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value against a type hint; `where` is the key path for errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [arg for arg in args if arg is not type(None)]
        if len(arms) == 1 and (dataclasses.is_dataclass(arms[0]) or hasattr(arms[0], "__from_config__")):
            return _convert(value, arms[0], where)  # an optional section: its own, precise error
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and hasattr(tp, "__from_config__"):
        # A tagged family of configs (e.g. head configs keyed by `head_type`) picks its own class.
        return tp.__from_config__(value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
            return float(value)  # YAML 1.1 reads exponents without a dot ("1e-4") as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"typed_config cannot handle type {tp!r} at {where}")  # a bug in a config class


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types.

    `where` is the key path of `data` inside the whole config, used in every error message.
    """
    label = where or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1) or _nested_home(hints, fields, str(key))
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(fields)
            raise ConfigError(f"{_join(where, key)}: unknown key{hint}; known keys here: {known}")
    kwargs = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name in data:
            kwargs[name] = _convert(_over_default(f, hints[name], data[name]), hints[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, ConfigError) as exc:  # __post_init__ checks across fields
        raise ConfigError(f"{label}: {exc}") from None


def _over_default(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """A section given in part keeps its field's own default for the rest: `tree: {budget: 8}` in a
    config whose `tree` defaults to an auto tree stays an auto tree (not the section class's default
    kind). Tagged families (`__from_config__`) choose their class from the value and are left as given."""
    if not dataclasses.is_dataclass(tp) or hasattr(tp, "__from_config__") or f.default_factory is dataclasses.MISSING:
        return value
    if value is None:  # an empty section (`tree:` with every key commented out): the field's default
        return dataclasses.asdict(f.default_factory())
    return {**dataclasses.asdict(f.default_factory()), **value} if isinstance(value, dict) else value


def _nested_home(hints: dict, fields: dict, key: str) -> list[str]:
    """`[section.key]` when `key` belongs to a dataclass one level down (a key written one level
    too high, such as `temperature` for `sampling.temperature`), else []."""
    for name in fields:
        if dataclasses.is_dataclass(hints[name]) and key in {f.name for f in dataclasses.fields(hints[name])}:
            return [f"{name}.{key}"]
    return []


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested mapping (in place) and return it.

    Values are parsed as YAML (`3` is an int, `true` a bool, `[1, 2]` a list, `null` None); a
    number segment indexes a list (`data.sources.0.path=x.jsonl`).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}': empty key segment")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from None
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            node = _step(node, part, ".".join(parts[: depth + 1]), item)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key, item)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override '{item}': '{'.'.join(parts[:-1])}' is not a mapping")
    return data


def _step(node: Any, part: str, path: str, item: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"override '{item}': '{path}' is not a mapping")
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    return child


def _index(node: list, part: str, path: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{item}': '{path}' needs a list index below {len(node)}")
    return int(part)


def merge(base: dict, over: dict) -> dict:
    """Deep-merge mapping `over` onto a copy of `base`: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning a missing file or bad YAML into a `ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def to_dict(cfg: Any) -> dict:
    """The plain-data form of a config dataclass (what `dump_yaml` writes)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    """Render a config as YAML in field order; loading it back gives an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
