"""User-facing errors: each carries one line that says what went wrong and how to fix it."""

from __future__ import annotations

import difflib
import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path


def _original_message(text: str) -> str:
    """The worker's own message out of the text PyTorch's DataLoader re-raises (its traceback included)."""
    caught = re.match(r"Caught (\w+) ", text)
    name = re.escape(caught.group(1)) if caught else r"\w+"
    for line in reversed(text.splitlines()):
        found = re.match(rf"(?:[A-Za-z_][\w]*\.)*{name}: (.*)$", line)
        if found:
            return found.group(1)
    return text


class BitError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits with code 2."""

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str) and "Original Traceback" in args[0]:
            args = (_original_message(args[0]), *args[1:])  # re-raised from a DataLoader worker
        super().__init__(*args)


class UnknownNameError(BitError, KeyError):
    """A model, recipe or data set name that is not registered."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], hint: str | None = None) -> None:
        choices = sorted(choices)
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
        if not close:
            close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.5)
            close = [c for c in choices if close and c.lower() == close[0]]
        hint = f"did you mean '{close[0]}'?" if close else hint or f"run 'bit {kind}s' to list them"
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


class UsageError(BitError):
    """A command line that does not parse: a missing, unknown or out-of-range argument."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was saved. ``code`` is the exit code to use (128 + signal)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by signal {signum}; checkpoint {checkpoint}; run again to resume")
        self.signum, self.code, self.checkpoint = signum, 128 + signum, checkpoint

    def __reduce__(self):  # a few-shot worker process sends it back to the sweep
        return type(self), (self.signum, self.checkpoint)


NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})
NO_ACCESS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_FIXES = {
    errno.EROFS: "choose a writable folder",
    **dict.fromkeys((errno.EACCES, errno.EPERM), "choose a writable folder or fix its permissions"),
    errno.EISDIR: "it is a folder; give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.ENOENT: "check the path",
    **dict.fromkeys((errno.EEXIST, errno.ENOTEMPTY),
                    "a file or folder is in the way; remove it or choose another path"),
}


def error_errno(err: BaseException) -> int | None:
    """The errno of a failed file operation, also when a library reports it only in its message."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = re.search(r"Os \{ code: (\d+)", str(err))
    return int(found.group(1)) if found else None


def error_reason(err: BaseException) -> str:
    """The cause of a failed file operation in a few words: an OSError's text, or a library's first line."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    found = re.search(r'message: "([^"]+)"', text)  # safetensors wraps the OS error in Rust's debug format
    if found:
        return found.group(1)
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)[:200]  # torch's C++ prefix


def file_error_line(err: BaseException, path: str | os.PathLike | None = None, verb: str | None = None,
                    fix: str | None = None) -> str:
    """``cannot write|read|open 'PATH' (reason); fix``: the one line for any failed file operation."""
    path = os.fsdecode(path if path is not None else getattr(err, "filename", None) or "?")
    code = error_errno(err)
    if verb is None:
        if code in NO_SPACE or code in (errno.EROFS, errno.EEXIST, errno.ENOTEMPTY):
            verb = "write"
        elif code in NO_ACCESS:  # denied: a write unless the file exists and cannot be read
            verb = "read" if os.path.exists(path) and not os.access(path, os.R_OK) else "write"
        else:
            verb = "read" if code == errno.ENOENT else "open"
    if fix is None:
        fix = "free disk space, then run again" if code in NO_SPACE else _FIXES.get(
            code, "free disk space or fix permissions, then run again")
        if verb == "read" and code in NO_ACCESS:
            fix = "fix its permissions"
    return f"cannot {verb} '{path}' ({error_reason(err)}); {fix}"
