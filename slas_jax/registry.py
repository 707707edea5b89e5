"""Name -> implementation tables (advantage methods, samplers, rewards, prompt sources, scorers), and the
plugins that fill them.

A plugin is a module named by an entry point of the group ``slas_jax.plugins`` in its distribution's
metadata; importing it registers its entries. The shapes testbed is such a plugin (``pyproject.toml``), so
the library never imports it, and a user's own package adds rewards or prompt sources the same way::

    [project.entry-points."slas_jax.plugins"]
    my_rewards = "my_package.rewards"
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from slas_jax.errors import ConfigError, UserError

T = TypeVar("T")
PLUGIN_GROUP = "slas_jax.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Imports every ``slas_jax.plugins`` entry point once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    # Set first: a plugin that looks a name up while it is being imported must not load itself again.
    _plugins_loaded = True
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        entry_point.load()


class Registry(Generic[T]):
    """Entries of one kind by name. ``kind`` words the error (e.g. "reward"); ``field`` is the config field
    that names an entry (e.g. "reward.name")."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding its target under ``name``; a name can be registered once."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str, field: str | None = None) -> T:
        """The entry ``name``; ConfigError naming ``field`` (default: the registry's) and the choices."""
        load_plugins()
        if name not in self._entries:
            raise ConfigError(
                f"config.{field or self.field}: unknown {self.kind} {name!r}; choose one of "
                f"{', '.join(self.names())}"
            )
        return self._entries[name]

    def build(self, name: str, options: Mapping[str, Any], section: str) -> Any:
        """Calls the entry ``name`` (a builder) with keyword ``options``, checked against its signature;
        ``section`` is the config section naming it (``reward``: fields ``reward.name``, ``reward.options``).
        A builder's ValueError about its options becomes a ConfigError on ``<section>.options``."""
        # Imported here: config imports the modules that hold registries.
        from slas_jax.config import bind_options

        builder = self.get(name, f"{section}.name")
        kwargs = bind_options(builder, options, f"{section}.options")
        try:
            return builder(**kwargs)
        except UserError:
            raise
        except ValueError as e:
            raise ConfigError(f"config.{section}.options: {e}") from e

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
