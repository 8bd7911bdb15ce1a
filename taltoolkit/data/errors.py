"""The exceptions taltoolkit raises for bad input from the user (files, configs, checkpoints).

Every message names the offending file, video or config key and says how to fix it,
because the person reading it is usually pointing a config at a folder they downloaded
and needs to know which key to change or which file is wrong. ``tools/run.py`` prints
these messages alone (no traceback; ``HYDRA_FULL_ERROR=1`` shows it), so the message has
to stand on its own.
"""
from __future__ import annotations

from typing import Iterable


class UserInputError(ValueError):
    """Bad input from the user; the message names what is wrong and the fix."""


class DataError(UserInputError):
    """Bad dataset input: the message names the file or video and the fix."""


class ConfigError(UserInputError):
    """A config value that cannot work: the message names the key and the fix."""


class CheckpointError(UserInputError):
    """A checkpoint that cannot be used: the message names the file (and the config key)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


def preview(names: Iterable[str], limit: int = 5) -> str:
    """``'a', 'b', 'c' (and 12 more)`` for error messages that list offending names."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")
