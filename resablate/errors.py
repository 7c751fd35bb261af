"""The errors resablate raises for bad input.

Every error here carries a one-line message that names what was wrong and where, and (when
there is a fixed set of legal values) lists them. The CLI prints that line and exits non-zero
without a traceback; library users can catch the standard base class each one also derives
from (``ValueError``, ``FileNotFoundError``, ...).
"""

from __future__ import annotations


class ResablateError(Exception):
    """Base class: a problem with the user's input or environment, described in one line."""

    exit_code: int = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        """Args:
        message: What was wrong and where, in library terms (argument and field names).
        field: The argument or config field at fault (e.g. ``"depths"``, ``"resume"``), so that
            a front end can name its own spelling of it (the CLI adds its flag).
        """
        # Keep the message on one line: the CLI prints exactly this (plus the field's flag).
        super().__init__(" ".join(str(message).split()))
        self.field = field


class ConfigError(ResablateError, ValueError):
    """An unknown architecture, depth, stage, plan, recipe field or axis value."""


class UnsupportedBlockError(ResablateError, TypeError):
    """A model holds a block type the registry has no declaration for."""


class WeightsError(ResablateError, ValueError):
    """A weights file that cannot be used: wrong architecture, not a state dict, unreadable."""


class WeightsUnavailableError(WeightsError):
    """Weights that are not on this machine and cannot be downloaded now (offline).

    A grid marks cells that need them ``skipped`` with this message as the reason.
    """


class DataError(ResablateError, ValueError):
    """A dataset that cannot be used: missing, empty, one class, no readable image in a class."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset path that does not exist."""


class StoreError(ResablateError, RuntimeError):
    """A results store that cannot be opened: missing, newer format, network file system."""


class StoreLockedError(StoreError):
    """Another process holds the run directory's lock."""
