"""The weights choice of a run: random init, ImageNet's weights, the demo weights or a file.

The one owner of the weights mini-language. A choice is written ``"none"``, ``"imagenet"``,
``"demo"`` (any case; empty = ``"none"``) or a path to a state-dict file (``.safetensors``,
``.pth``, ``.pt``), which is made absolute. :class:`WeightsChoice` parses and writes it; cells,
grid specs, tables and the CLI go through it, so a cell's id (a hash of the canonical text) never
depends on how the choice was spelled. Loading the weights is :mod:`resablate.weights`' business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from resablate.errors import ConfigError


class WeightsKind(StrEnum):
    """Where a run's initial weights come from."""

    NONE = "none"
    IMAGENET = "imagenet"
    DEMO = "demo"
    FILE = "file"


#: The choices that name no file, as users write them.
NAMED_WEIGHTS = (WeightsKind.NONE, WeightsKind.IMAGENET, WeightsKind.DEMO)


@dataclass(frozen=True)
class WeightsChoice:
    """A validated, canonical weights choice (construct with :meth:`parse`).

    Attributes:
        kind: Random init (``none``), ImageNet's, the demo weights, or a ``file``.
        path: The absolute state-dict path of a ``file`` choice; ``None`` for the others.
    """

    kind: WeightsKind
    path: Path | None = None

    def __post_init__(self) -> None:
        if (self.kind == WeightsKind.FILE) != (self.path is not None):
            raise ConfigError(f"weights {self.kind}: a path goes with (only) the 'file' kind")

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> WeightsChoice:
        """Parse ``"none"``, ``"imagenet"``, ``"demo"`` (any case) or a path (made absolute; the
        file need not exist: :class:`~resablate.grid.spec.GridSpec` checks it)."""
        value = os.fspath(text)
        if not value:
            return cls(WeightsKind.NONE)
        if value.lower() in NAMED_WEIGHTS:
            return cls(WeightsKind(value.lower()))
        return cls(WeightsKind.FILE, Path(value).expanduser().resolve())

    @property
    def text(self) -> str:
        """The canonical text: the kind's name, or the file's absolute path."""
        return str(self.path) if self.path is not None else str(self.kind)

    def __str__(self) -> str:
        return self.text

    @property
    def label(self) -> str:
        """Table label: the kind's name, or the file's name (``"init.safetensors"``)."""
        return self.path.name if self.path is not None else str(self.kind)


#: Random initialisation (a cell's default).
NO_WEIGHTS = WeightsChoice(WeightsKind.NONE)
