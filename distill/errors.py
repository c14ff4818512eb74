"""The errors a user's mistake raises, and the one way every command turns them into a message.

This is the bottom of the project: it imports nothing else of ours, so every layer (training, study, export,
deploy) raises the same errors and every command ends the same way (docs/architecture.md §2).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (a key, a file, a value, a run that diverged): a command reports it in one
    line ``error: ...`` on stderr and exits with status 2, without a traceback."""


class ConfigError(UserError, ValueError):
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


def command(main: Callable[[list[str] | None], T], status: Callable[[T], int] = lambda _: 0) -> Callable[..., int]:
    """A command's entry point (its ``cli``, what ``[project.scripts]`` names) from its ``main(argv)``: the exit
    status is ``status(result)`` when ``main`` returns (0 unless the command says otherwise, e.g. 1 for a failed
    parity gate), and 2 with one line ``error: ...`` on stderr when it raises a :class:`UserError`."""

    def cli(argv: list[str] | None = None) -> int:
        try:
            result = main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return status(result)

    return cli
