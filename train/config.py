"""The recipe: one typed config for every stage, loaded from YAML with `key.sub=value` overrides.

Each stage owns its section's dataclass (`BackboneConfig` in models/backbone.py, `DataConfig` in
data/config.py); this module assembles them into `Recipe` and does the loading, so a recipe file is
checked as a whole before anything runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from draftheads.data.config import DataConfig
from draftheads.models.backbone import BackboneConfig
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.errors import ConfigError
from draftheads.utils.typed_config import apply_overrides, dump_yaml, from_dict, merge, read_yaml, to_dict


@dataclass
class Recipe:
    """A complete, runnable description of a job."""

    model: BackboneConfig = field(default_factory=BackboneConfig)
    """The base model heads are trained for."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training conversations and how they are tokenised."""


def find_recipe(name_or_path: str) -> Path:
    """A recipe path as given, or a recipe shipped with draftheads (`smollm2-135m/data`)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = resources.files("draftheads.recipes") / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"{name_or_path}: no such recipe file, and no shipped recipe of that name")


def load_recipe(source: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file (or the defaults when `source` is None) and apply overrides.

    Errors name the file and the key path: `recipes/x.yaml: data.sorces: unknown key (did you mean 'sources'?)`.
    """
    label = "defaults" if source is None else str(source)
    data = {} if source is None else read_yaml(find_recipe(str(source)))
    # Start from the defaults so that overrides can reach into default lists (data.sources.0.limit=5).
    data = apply_overrides(merge(to_dict(Recipe()), copy.deepcopy(data)), list(overrides or []))
    try:
        return from_dict(Recipe, data)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default filled in)."""
    return dump_yaml(recipe)


def save_resolved(recipe: Recipe, directory: str | Path) -> Path:
    """Write the resolved recipe as `recipe.yaml` in `directory` (atomically) and return its path."""
    path = Path(directory) / "recipe.yaml"
    atomic_write_text(path, recipe_yaml(recipe))
    return path
