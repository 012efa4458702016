"""Name registries: attacks, models, datasets, recipes, certifiers and reproductions.

Names are the contract: the CLI, the config files and the tests all address components by the
name they were registered under. Registering a name twice raises; asking for an unknown name
raises :class:`~advlab.errors.UnknownNameError` listing the close matches and all known names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from advlab.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, the object and a one-line description."""

    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A mapping from names to components of one kind.

    Args:
        kind: what the registry holds, used in error messages ("attack", "model", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, description: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; duplicate names raise ``ValueError``."""

        def deco(obj: T) -> T:
            self.add(name, obj, description=description)
            return obj

        return deco

    def add(self, name: str, obj: T, *, description: str) -> None:
        """Register ``obj`` under ``name`` (see :meth:`register`)."""
        if not name or name != name.strip().lower():
            raise ValueError(
                f"{self.kind} names must be non-empty lower-case strings, got {name!r}"
            )
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, obj, description.strip().splitlines()[0])

    def get(self, name: str) -> T:
        """Return the component registered under ``name``."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """Return the :class:`Entry` registered under ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            known = ", ".join(self.names()) or "(none registered)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}. "
                f"Run `advlab list {self.kind}s` for descriptions."
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """Map each name to its one-line description."""
        return {n: self._entries[n].description for n in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


# The registries themselves live beside the components; these are the shared instances.
ATTACKS: Registry = Registry("attack")
MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")
RECIPES: Registry = Registry("recipe")
CERTIFIERS: Registry = Registry("certifier")
REPRODUCTIONS: Registry = Registry("reproduction")

REGISTRIES: dict[str, Registry] = {
    "attacks": ATTACKS,
    "models": MODELS,
    "datasets": DATASETS,
    "recipes": RECIPES,
    "certifiers": CERTIFIERS,
    "reproductions": REPRODUCTIONS,
}
