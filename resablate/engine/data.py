"""What the engine needs from a dataset split and a batch transform (structural types).

:class:`resablate.data.DecodedSplit` (decoded images held in memory or on the GPU) and the streaming
source both satisfy :class:`ImageSource`; :class:`resablate.data.BatchTransform` satisfies
:class:`Transform`. The engine asks for batches by index, so the order and augmentation of every
batch depend only on the seed and the batch's position (see :mod:`resablate.engine.seeding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class ImageSource(Protocol):
    """A split: ``labels`` (int64 ``[N]``), ``paths`` and uint8 batches by index."""

    @property
    def labels(self) -> torch.Tensor:
        """Class index of each sample."""
        ...

    @property
    def paths(self) -> Sequence[str]:
        """Source file of each sample."""
        ...

    def __len__(self) -> int: ...

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, 3, S, S]`` of the samples ``indices`` (int64, CPU)."""
        ...


class Transform(Protocol):
    """uint8 ``[B, 3, S, S]`` → normalised float ``[B, 3, H, W]`` on the images' device."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


def to_device(source: ImageSource, device: torch.device) -> ImageSource:
    """The source moved to ``device`` when it can move (decoded splits); else unchanged."""
    move = getattr(source, "to", None)
    return move(device) if callable(move) else source
