"""A small name -> object registry, shared by methods, attacks, defenses and models.

Entries register themselves with a decorator (as ``timm.models.register_model`` does)::

    VICTIMS = Registry("victim model")

    @VICTIMS.register("small-cnn")
    def small_cnn(num_classes: int, image_size: int) -> nn.Module: ...

The CLI lists its choices from the registry. Third-party packages add entries through the
``unlearnable.plugins`` entry-point group: each entry point names a module (or callable) that is
imported (or called) once, and registers what it brings with the same decorators.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")

PLUGIN_GROUP = "unlearnable.plugins"
_plugins_loaded = False


class Registry(Generic[T]):
    """Maps names to objects of one kind; names are case-insensitive and unique."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[key] = obj

    def get(self, name: str) -> T:
        load_plugins()
        key = name.lower()
        if key not in self._entries:
            choices = ", ".join(self.names())
            raise KeyError(f"unknown {self.kind} {name!r}; choose from: {choices}")
        return self._entries[key]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def load_plugins() -> None:
    """Import every ``unlearnable.plugins`` entry point once (they register themselves)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=PLUGIN_GROUP):
        loaded = entry.load()
        if callable(loaded):
            loaded()
