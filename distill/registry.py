"""Name -> builder registries (models, heads, datasets, losses), as timm does for its models.

A name that is not registered is an error that lists the valid choices and the closest match.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing configuration error: the message names the key or value and what was expected."""

    def __init__(self, message: str) -> None:
        # Raised in a DataLoader worker (e.g. a corrupt image), the error is rebuilt in the main process
        # from "Caught ... in DataLoader worker ... Original Traceback ...": keep the original message only.
        if message.startswith("Caught ") and "in DataLoader worker" in message.split("\n", 1)[0]:
            message = message.rpartition(f"{type(self).__module__}.{type(self).__qualname__}: ")[2].strip()
        super().__init__(message)


def unknown_choice(kind: str, name: str, choices: Iterable[str], where: str = "") -> ConfigError:
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(choices) if len(choices) <= 40 else ", ".join(choices[:40]) + ", ..."
    location = f" (at {where})" if where else ""
    return ConfigError(f"unknown {kind} {name!r}{location}.{hint} Valid choices: {shown}")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str, where: str = "") -> T:
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self._entries, where)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
