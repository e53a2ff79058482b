"""Where draftheads keeps converted models and other caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user's draftheads cache: $DRAFTHEADS_CACHE, else $XDG_CACHE_HOME/draftheads, else ~/.cache/draftheads."""
    explicit = os.environ.get("DRAFTHEADS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "draftheads"
