from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from draftheads.train.config import Recipe, find_recipe, load_recipe, recipe_yaml, save_resolved
from draftheads.utils.errors import ConfigError
from draftheads.utils.typed_config import field_docs, from_dict

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").glob("*/*.yaml"))


def config_classes(cls=Recipe, seen=None):
    """Recipe and every dataclass reachable from its fields."""
    import typing

    seen = seen if seen is not None else []
    if cls in seen:
        return seen
    seen.append(cls)
    for hint in typing.get_type_hints(cls).values():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate):
                config_classes(candidate, seen)
    return seen


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_has_a_docstring(cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert names == set(field_docs(cls)), f"{cls.__name__} fields without a docstring: {names - set(field_docs(cls))}"


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name != "accelerate"], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_load_and_name_their_launch_command(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert path.read_text().startswith("# draftheads "), "a recipe's header is its launch command"


def test_unknown_key_names_file_and_path(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  sorces: []\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: data.sorces: unknown key (did you mean 'sources'?)")


def test_cross_field_checks_name_the_section(tmp_path):
    with pytest.raises(ConfigError, match=r"defaults: data.sources\[0\]: limit must be at least 1"):
        load_recipe(None, ["data.sources.0.limit=0"])


def test_overrides_apply_and_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe("smollm2-135m/data", ["data.max_length=128", "data.sources.0.limit=5", "model.dtype=bfloat16"])
    assert (recipe.data.max_length, recipe.data.sources[0].limit, recipe.model.dtype) == (128, 5, "bfloat16")
    saved = save_resolved(recipe, tmp_path / "run")
    assert from_dict(Recipe, yaml.safe_load(saved.read_text())) == recipe
    assert yaml.safe_load(recipe_yaml(recipe))["data"]["packing"] is False  # defaults filled in


def test_find_recipe_errors_for_unknown_names():
    with pytest.raises(ConfigError, match="no-such/recipe: no such recipe file"):
        find_recipe("no-such/recipe")


def test_a_recipe_for_another_family_gets_that_familys_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("heads:\n  head_type: clover\n  num_heads: 2\n")
    assert load_recipe(path).heads.head_type == "clover" and load_recipe(path).heads.head_layers == 1
    assert load_recipe(None, ["heads.head_type=clover"]).heads.augmenting_block is True
    with pytest.raises(ConfigError, match="defaults: heads.head_type: unknown head type 'nope'"):
        load_recipe(None, ["heads.head_type=nope"])


def test_no_family_is_the_default_and_training_without_one_names_them(tmp_path):
    from draftheads.train.loop import train

    recipe = load_recipe(None, [f"train.output_dir={tmp_path / 'run'}"])
    assert recipe.heads is None
    with pytest.raises(
        ConfigError, match=r"heads.head_type: training needs a head family; the recipe names none \(one of: clover, eagle, hydra, medusa\)"
    ):
        train(recipe, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="heads.head_type: required key is missing"):
        load_recipe(None, ["heads.num_heads=2"])
    assert load_recipe(None, ["heads.head_type=hydra"]).heads.head_layers == 1  # the family's own defaults
