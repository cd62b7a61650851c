"""User-facing errors: each carries one line that says what went wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BitError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits with code 2."""


class UnknownNameError(BitError, KeyError):
    """A model, recipe or data set name that is not registered."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], hint: str | None = None) -> None:
        choices = sorted(choices)
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
        if not close:
            close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.5)
            close = [c for c in choices if close and c.lower() == close[0]]
        if close:
            hint = f"did you mean '{close[0]}'?"
        hint = hint or f"run 'bit {kind}s' to list them"
        super().__init__(f"unknown {kind} '{name}': {hint}")
        self.name = name

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class CheckpointError(BitError):
    """A weights file that is corrupt, of another format, or does not fit the model."""


class DataError(BitError):
    """A data set path, layout or file that cannot be read."""


class DownloadError(BitError):
    """A file that could not be downloaded or failed its checksum."""
