"""Name -> builder registries (models, heads, datasets, losses), as timm does for its models.

A name that is not registered is an error that lists the valid choices and the closest match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from segdistill.errors import unknown_choice

T = TypeVar("T")


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
