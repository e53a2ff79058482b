"""Where draftheads keeps converted models and other caches, and where its shipped files are."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cache_dir() -> Path:
    """The user's draftheads cache: $DRAFTHEADS_CACHE, else $XDG_CACHE_HOME/draftheads, else ~/.cache/draftheads."""
    explicit = os.environ.get("DRAFTHEADS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "draftheads"


def recipes_dir() -> Path:
    """The folder of the shipped recipes (installed, or this checkout's in an editable install).

    `draftheads.recipes` is a namespace package, and an editable install adds a placeholder entry
    to its path that is no folder, which `importlib.resources` (Python 3.11) refuses."""
    spec = importlib.util.find_spec("draftheads.recipes")
    return next(Path(p) for p in spec.submodule_search_locations if Path(p).is_dir())


def accelerate_config_path(name: str) -> Path:
    """A shipped accelerate config by name, or a path as given."""
    from draftheads.utils.errors import ConfigError

    path = Path(name)
    if path.is_file():
        return path
    shipped = recipes_dir() / "accelerate" / f"{name}.yaml"
    if not shipped.is_file():
        known = sorted(p.stem for p in (recipes_dir() / "accelerate").glob("*.yaml"))
        raise ConfigError(f"--accelerate-config {name}: not a file and not a shipped config ({', '.join(known)})")
    return shipped
