"""The head-family registry: `@register_head("name")` on a `DraftHeads` subclass makes the family
available to recipes (`heads.head_type: name`), the trainer, the engine and `from_pretrained`.

Nothing outside a family's own file names a family: everything goes through this table.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from draftheads.utils.errors import ConfigError

if TYPE_CHECKING:
    from draftheads.models.heads.base import DraftHeads, HeadConfig


class HeadRegistry:
    """Maps a head type to its module class (which names its config class)."""

    def __init__(self) -> None:
        self._families: dict[str, type[DraftHeads]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[type[DraftHeads]], type[DraftHeads]]:
        """Class decorator registering a `DraftHeads` subclass under `name`."""

        def add(cls: type[DraftHeads]) -> type[DraftHeads]:
            if name in self._families and self._families[name] is not cls:
                raise ValueError(f"head type '{name}' is registered twice")
            if getattr(cls.config_class, "head_type", None) != name:
                raise ValueError(f"{cls.__name__}.config_class must have head_type = {name!r} (the tag recipes use)")
            cls.head_type = name
            self._families[name] = cls
            return cls

        return add

    def _load_families(self) -> None:
        # The families register themselves on import; the package imports each family file.
        if not self._loaded:
            importlib.import_module("draftheads.models.heads")
            self._loaded = True

    def names(self) -> list[str]:
        """Registered head types, sorted."""
        self._load_families()
        return sorted(self._families)

    def required(self, config: HeadConfig | None, what: str) -> HeadConfig:
        """`config`, or an error listing the families when a recipe names none."""
        if config is None:
            raise ConfigError(f"heads.head_type: {what} needs a head family; the recipe names none (one of: {', '.join(self.names())})")
        return config

    def get(self, name: str, where: str = "head_type") -> type[DraftHeads]:
        """The module class of head type `name`, or a `ConfigError` listing the known ones."""
        self._load_families()
        if name not in self._families:
            raise ConfigError(f"{where}: unknown head type {name!r}; known: {', '.join(self.names())}")
        return self._families[name]

    def config_class(self, name: str, where: str = "head_type") -> type[HeadConfig]:
        """The config dataclass of head type `name`."""
        return self.get(name, where).config_class


HEADS = HeadRegistry()
"""The one registry (read-only after the families' files are imported)."""


def register_head(name: str):
    """Decorator: `@register_head("medusa") class MedusaHeads(DraftHeads): ...`."""
    return HEADS.register(name)
