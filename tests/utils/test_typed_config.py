from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from draftheads.utils.errors import ConfigError
from draftheads.utils.typed_config import apply_overrides, dump_yaml, field_docs, from_dict, read_yaml

import yaml


@dataclass
class Inner:
    path: str
    """Where."""
    limit: int | None = None
    """How many."""


@dataclass
class Outer:
    name: str = "x"
    """A name."""
    rate: float = 0.5
    """A rate."""
    mode: Literal["a", "b"] = "a"
    """A mode."""
    flag: bool = False
    """A flag."""
    items: list[Inner] = field(default_factory=list)
    """Inner items."""
    inner: Inner = field(default_factory=lambda: Inner("p"))
    """One inner."""


def test_builds_nested_and_converts_int_to_float():
    cfg = from_dict(Outer, {"rate": 1, "items": [{"path": "a", "limit": 3}], "inner": {"path": "q"}})
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert cfg.items == [Inner("a", 3)] and cfg.inner == Inner("q")
    assert from_dict(Outer, {"rate": "1e-4"}).rate == 1e-4  # YAML 1.1 reads "1e-4" as a string


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nmae": "y"}, "nmae: unknown key (did you mean 'name'?)"),
        ({"path": "q"}, "path: unknown key (did you mean 'inner.path'?)"),  # a key that belongs one section down
        ({"items": [{"path": "a", "limt": 1}]}, "items[0].limt: unknown key (did you mean 'limit'?)"),
        ({"rate": "fast"}, "rate: expected a number, got 'fast'"),
        ({"flag": "yes"}, "flag: expected true or false"),
        ({"mode": "c"}, "mode: 'c' is not one of 'a', 'b'"),
        ({"items": [{"limit": 2}]}, "items[0].path: required key is missing"),
        ({"items": {"path": "a"}}, "items: expected a list"),
        ({"inner": {"path": "a", "limit": 1.5}}, "inner.limit: expected int or null, got 1.5"),
    ],
)
def test_errors_name_the_key_path(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert message in str(err.value)


def test_overrides_parse_yaml_values_and_index_lists():
    data = {"items": [{"path": "a"}]}
    apply_overrides(data, ["rate=0.25", "flag=true", "items.0.limit=7", "inner.path=z", "name=null"])
    assert data == {"items": [{"path": "a", "limit": 7}], "rate": 0.25, "flag": True, "inner": {"path": "z"}, "name": None}


@pytest.mark.parametrize(
    "override, message",
    [
        ("rate", "expected key.path=value"),
        ("items.3.path=x", "needs a list index below 1"),
        ("a..b=1", "empty key segment"),
        ("name.x=1", "'name' is not a mapping"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"items": [{"path": "a"}], "name": "s"}, [override])


def test_yaml_round_trip_is_equal():
    cfg = from_dict(Outer, {"items": [{"path": "a", "limit": 2}], "mode": "b"})
    assert from_dict(Outer, yaml.safe_load(dump_yaml(cfg))) == cfg


def test_field_docs_are_read_from_source():
    assert field_docs(Outer) == {
        "name": "A name.",
        "rate": "A rate.",
        "mode": "A mode.",
        "flag": "A flag.",
        "items": "Inner items.",
        "inner": "One inner.",
    }


@pytest.mark.parametrize("content, message", [("", "the recipe is empty"), ("a: [1,\n", "not valid YAML"), ("- 1\n", "must be a mapping")])
def test_read_yaml_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "r.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_yaml(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="no such recipe file"):
        read_yaml(tmp_path / "missing.yaml")


def test_merge_replaces_lists_and_merges_mappings():
    from draftheads.utils.typed_config import merge

    base = {"a": {"x": 1, "y": 2}, "items": [1, 2], "k": 0}
    assert merge(base, {"a": {"y": 3}, "items": [9]}) == {"a": {"x": 1, "y": 3}, "items": [9], "k": 0}
    assert base["a"] == {"x": 1, "y": 2}  # the base is not modified


def test_a_section_given_in_part_keeps_its_fields_own_default():
    from draftheads.eval.config import EvalConfig

    config = from_dict(EvalConfig, {"heads": "h", "tree": {"budget": 8}})
    assert (config.tree.kind, config.tree.lookup, config.tree.budget) == ("auto", "auto", 8)
    assert from_dict(EvalConfig, {"heads": "h", "tree": None}).tree == EvalConfig(heads="h").tree  # an empty section
    assert from_dict(EvalConfig, {"heads": "h", "tree": {"kind": "dynamic", "lookup": 0}}).tree.resolved
    with pytest.raises(ConfigError, match=r"^tree.lookup: expected int or 'auto', got 'often'$"):
        from_dict(EvalConfig, {"heads": "h", "tree": {"lookup": "often"}})
