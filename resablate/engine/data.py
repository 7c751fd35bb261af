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
        """uint8 images ``[B, 3, S, S]`` of the samples ``indices`` (int64, on the CPU or where the
        split is held)."""
        ...


class Transform(Protocol):
    """uint8 ``[B, 3, S, S]`` → normalised float ``[B, 3, H, W]`` on the images' device.

    ``generator`` is one generator, or K of them for a batch of K groups' equal chunks (a packed
    session, one call per micro-batch): chunk ``k`` must come out as a call on it alone with
    generator ``k`` would give.
    """

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]
    ) -> torch.Tensor: ...


def to_device(source: ImageSource, device: torch.device) -> ImageSource:
    """The source moved to ``device`` when it can move (decoded splits); else unchanged."""
    move = getattr(source, "to", None)
    return move(device) if callable(move) else source


GPU_CACHE_FRACTION = 0.5
"""A decoded split stays in GPU memory only while the splits kept there fit in this fraction of
the GPU memory free when the run starts (the rest is left to the model, activations and the
allocator); the others stay in host memory and reach the GPU batch by batch."""


def device_resident(
    sizes: Sequence[int | None], free_bytes: int, fraction: float = GPU_CACHE_FRACTION
) -> tuple[bool, ...]:
    """Which splits to keep in device memory: in order (training split first), each one whose
    bytes still fit, with the ones kept before it, in ``fraction * free_bytes``.

    Args:
        sizes: Bytes of each split's decoded images; ``None`` for a source that cannot move
            (a streaming split), which is never kept.
        free_bytes: Free device memory in bytes.
        fraction: Share of ``free_bytes`` the kept splits may take.

    Returns:
        One flag per split.
    """
    budget = int(free_bytes * fraction)
    kept, used = [], 0
    for size in sizes:
        keep = size is not None and used + size <= budget
        used += size if keep and size is not None else 0
        kept.append(keep)
    return tuple(kept)


def place_sources(
    sources: Sequence[ImageSource],
    device: torch.device,
    *,
    free_bytes: int | None = None,
    fraction: float = GPU_CACHE_FRACTION,
) -> list[ImageSource]:
    """The sources moved to ``device`` where they may live there, else unchanged (host memory).

    On the CPU every source that can move is moved. On CUDA the decision is
    :func:`device_resident` over the sources' ``nbytes`` and ``free_bytes`` (default: the free
    memory ``torch.cuda.mem_get_info`` reports now).
    """
    if device.type != "cuda":
        return [to_device(source, device) for source in sources]
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    sizes = [getattr(source, "nbytes", None) for source in sources]
    keep = device_resident(sizes, free_bytes, fraction)
    return [to_device(s, device) if k else s for s, k in zip(sources, keep, strict=True)]


def is_resident(source: ImageSource, device: torch.device) -> bool:
    """Whether ``source`` holds its images in memory on ``device`` (batches are then slices)."""
    return getattr(source, "nbytes", None) is not None and getattr(source, "device", None) == device
