"""Decode once: a split's images decoded a single time into a uint8 cache on disk, then reused.

A grid trains dozens of models on the same images (``docs/architecture.md``, "Safety").
:func:`decode_split` decodes each image of a split once (in a thread pool), stores the result as
one ``.npy`` array of shape [N, 3, H, W] under ``paths.cache_dir("decoded")``, and memory-maps it
on every later call. The cache key covers the split's file list (relative paths, labels, sizes,
mtimes), the stored resolution, the classes, the Pillow version and :data:`CACHE_FORMAT`, so
changing, adding or removing any file makes a fresh decode. Rows of table layouts (parquet,
Hugging Face datasets) are keyed by the digest of their encoded image instead of a file's size
and mtime. Files are written atomically: the array first, then a small JSON file that marks the
entry complete.

When the decoded split would not fit in the memory budget, :func:`decode_split` returns a
:class:`StreamingSplit` instead, which decodes the images of each batch on demand behind the same
``get_batch(indices)`` interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import PIL
import torch

from resablate import atomic, paths
from resablate.data import images
from resablate.data.layouts import BadFile, DatasetScan, Sample, image_source
from resablate.errors import ConfigError, DataError

CACHE_FORMAT = 1
"""Version of the cache's content; bump it when decoding changes what is stored."""

DEFAULT_MEMORY_FRACTION = 0.5
"""Default memory budget: this fraction of the memory available when the split is opened."""

_STALE_TEMP_SECONDS = 3600.0


class ImageSource(Protocol):
    """What the engine reads images from: a decoded split or a streaming one.

    ``labels``, ``paths`` and the images a batch returns are in the same order (index i is the
    i-th readable sample of the split, sorted by path).
    """

    labels: torch.Tensor
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    bad_files: tuple[BadFile, ...]

    def __len__(self) -> int: ...

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> ImageSource: ...


def _index(indices: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    """``indices`` as int64 on ``device``; a tensor already there is used as is (no copy, so no
    host synchronisation when the engine passes an order that lives on the GPU)."""
    if isinstance(indices, torch.Tensor) and indices.dtype == torch.long:
        return indices if indices.device == device else indices.to(device)
    return torch.as_tensor(indices, dtype=torch.long).to(device)


@dataclass(frozen=True, eq=False)
class DecodedSplit:
    """A split decoded into memory (or GPU memory).

    Attributes:
        images: uint8 tensor [N, 3, H, W], RGB (a copy-on-write memory map of the cache on CPU).
        labels: int64 tensor [N] of class indices, on the same device as ``images``.
        paths: The N source files, in order.
        classes: Class names; a label indexes this tuple.
        split: The split's name ("train", "val" or "test").
        bad_files: Files of this split skipped while decoding, with the reason.
        cache_file: The ``.npy`` file the images were stored in.
        from_cache: True when nothing was decoded (the cache already held this split).
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    split: str
    bad_files: tuple[BadFile, ...]
    cache_file: Path
    from_cache: bool

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the images are."""
        return self.images.device

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded images."""
        return self.images.numel() * self.images.element_size()

    def to(self, device: torch.device | str) -> DecodedSplit:
        """A copy with images and labels on ``device`` (self when already there)."""
        target = torch.device(device)
        if self.images.device == target:
            return self
        return dataclasses.replace(
            self, images=self.images.to(target), labels=self.labels.to(target)
        )

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The uint8 images [B, 3, H, W] at ``indices``, on :attr:`device`."""
        return self.images[_index(indices, self.images.device)]


@dataclass(frozen=True, eq=False)
class StreamingSplit:
    """A split too large for memory: each batch is decoded from the files when asked for.

    Same interface as :class:`DecodedSplit` minus the resident ``images`` tensor. Bad files are
    found once by a verification pass whose result is cached like a decoded split's.

    Attributes:
        samples: The readable samples, in order.
        labels: int64 tensor [N] of class indices, on :attr:`device`.
        paths: The N source files, in order.
        classes: Class names; a label indexes this tuple.
        split: The split's name.
        bad_files: Files of this split that cannot be decoded, with the reason.
        storage_size: Side in pixels the images are resized to (None = native size).
        device: Where batches are delivered.
        workers: Decoding threads (None = the CPUs available).
    """

    samples: tuple[Sample, ...]
    labels: torch.Tensor
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    split: str
    bad_files: tuple[BadFile, ...]
    storage_size: int | None
    device: torch.device
    workers: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def to(self, device: torch.device | str) -> StreamingSplit:
        """A copy that delivers batches (and holds labels) on ``device``."""
        target = torch.device(device)
        return dataclasses.replace(self, device=target, labels=self.labels.to(target))

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Decode the images at ``indices`` into a uint8 tensor [B, 3, H, W] on :attr:`device`.

        Raises:
            DataError: A file changed since the split was opened and can no longer be decoded.
        """
        chosen = [self.samples[i] for i in _index(indices, torch.device("cpu")).tolist()]
        arrays = images.parallel_map(self._decode, chosen, self.workers)
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return batch.to(self.device)

    def _decode(self, sample: Sample) -> np.ndarray:
        try:
            return images.decode_image(image_source(sample), self.storage_size)
        except images.BadImageError as exc:
            raise DataError(f"{sample.path} became unreadable during training: {exc}") from None


def default_memory_budget() -> int:
    """:data:`DEFAULT_MEMORY_FRACTION` of the memory available now, in bytes."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return 2**62  # unknown: never stream
    return int(available * DEFAULT_MEMORY_FRACTION)


def _cache_key(scan: DatasetScan, split: str, samples: Sequence[Sample], size: int | None) -> str:
    header = {
        "format": CACHE_FORMAT,
        "pillow": PIL.__version__,
        "background": images.BACKGROUND,
        "storage_size": size,
        "layout": scan.layout,
        "split": split,
        "classes": scan.classes,
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for s in samples:
        digest.update(f"{scan.relative(s.path)}\x1f{s.label}\x1f{s.identity}\n".encode())
    return digest.hexdigest()[:32]


def _sweep_old_temps(folder: Path) -> None:
    """Remove temporary files a killed process left, old enough not to be another's writing."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    for tmp in folder.glob(atomic.TMP_MARKER + "*"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def _stored_shape(split: str, samples: Sequence[Sample], size: int | None) -> tuple[int, int]:
    """(height, width) every stored image will have; native sizes must then all agree."""
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"storage_size must be a positive integer or None, not {size!r}")
        return size, size
    shapes = sorted({(s.height, s.width) for s in samples})
    if len(shapes) > 1:
        (h0, w0), (h1, w1) = shapes[0], shapes[-1]
        raise DataError(
            f"the {split} split has images of {len(shapes)} different sizes ({w0}x{h0} to "
            f"{w1}x{h1}); resize them to one stored size: set the recipe's storage_size",
            field="storage_size",
        )
    return shapes[0]


def _read_meta(meta_file: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


def _decode_all(
    samples: Sequence[Sample],
    size: int | None,
    shape: tuple[int, int],
    out: np.ndarray | None,
    workers: int | None,
) -> tuple[list[int], list[BadFile]]:
    """Decode every sample (into ``out[i]`` when given); return kept indices and bad files."""

    def work(i: int) -> str | None:
        try:
            array = images.decode_image(image_source(samples[i]), size)
        except images.BadImageError as exc:
            return str(exc)
        if array.shape[:2] != shape:
            height, width = shape
            return (
                f"decoded size {array.shape[1]}x{array.shape[0]} differs from the split's "
                f"{width}x{height}"
            )
        if out is not None:
            out[i] = array.transpose(2, 0, 1)
        return None

    reasons = images.parallel_map(work, range(len(samples)), workers)
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    bad = [BadFile(samples[i].path, r) for i, r in enumerate(reasons) if r is not None]
    return kept, bad


def _check_nonempty(
    scan: DatasetScan, split: str, samples: Sequence[Sample], kept: list[int]
) -> None:
    present = {samples[i].label for i in kept}
    for label, name in enumerate(scan.classes):
        if label not in present and any(s.label == label for s in samples):
            raise DataError(
                f"class {name!r} has no readable image in the {split} split of {scan.root} after "
                f"skipping unreadable files; run `resablate data check {scan.root}` to list them"
            )


def decode_split(
    scan: DatasetScan,
    split: str,
    *,
    storage_size: int | None,
    cache_dir: str | os.PathLike[str] | None = None,
    memory_budget: int | None = None,
    workers: int | None = None,
) -> DecodedSplit | StreamingSplit:
    """Decode one split once into the on-disk cache, or reuse the cache; load it into memory.

    Args:
        scan: The dataset, from :func:`resablate.data.scan`.
        split: "train", "val" or "test".
        storage_size: Side S in pixels at which images are stored: each whole image is resized
            to S×S (aspect ratio not kept, Pillow's antialiased bilinear). ``None`` keeps the
            native resolution, which all images of the split must then share (e.g. CIFAKE's
            32×32).
        cache_dir: Folder of the cache; default ``paths.cache_dir("decoded")``.
        memory_budget: Bytes the decoded split may occupy; above it a :class:`StreamingSplit` is
            returned. Default: :func:`default_memory_budget`.
        workers: Decoding threads (default: the CPUs available).

    Returns:
        A :class:`DecodedSplit` (images on CPU; call ``.to(device)``), or a
        :class:`StreamingSplit` when the split exceeds ``memory_budget``.

    Raises:
        ConfigError: Unknown split or invalid ``storage_size``.
        DataError: Native sizes differ while ``storage_size`` is None, or a class has no
            readable image left in this split.
    """
    samples = scan.samples(split)
    height, width = _stored_shape(split, samples, storage_size)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else paths.cache_dir("decoded")
    folder.mkdir(parents=True, exist_ok=True)
    _sweep_old_temps(folder)
    key = _cache_key(scan, split, samples, storage_size)
    meta_file, array_file = folder / f"{key}.json", folder / f"{key}.npy"
    meta = _read_meta(meta_file)
    budget = default_memory_budget() if memory_budget is None else memory_budget
    streaming = len(samples) * 3 * height * width > budget

    stored: np.ndarray | None = None
    if meta is not None and not streaming and array_file.exists():
        with contextlib.suppress(OSError, ValueError):
            stored = np.load(array_file, mmap_mode="c", allow_pickle=False)
        if stored is not None and stored.shape != (len(meta["kept"]), 3, height, width):
            stored = None
    from_cache = stored is not None and meta is not None
    if meta is not None and (from_cache or streaming):
        kept = [int(i) for i in meta["kept"]]
        bad = [BadFile(scan.absolute(p), r) for p, r in meta["bad"]]
    else:
        out = None if streaming else np.empty((len(samples), 3, height, width), np.uint8)
        kept, bad = _decode_all(samples, storage_size, (height, width), out, workers)
        _check_nonempty(scan, split, samples, kept)
        if out is not None:
            stored = out if len(kept) == len(samples) else out[kept]
            atomic.write_with(array_file, lambda fh: np.save(fh, stored, allow_pickle=False))
        record = {
            "format": CACHE_FORMAT,
            "root": str(scan.root),
            "split": split,
            "storage_size": storage_size,
            "shape": [len(kept), 3, height, width],
            "kept": kept,
            "bad": [[scan.relative(b.path), b.reason] for b in bad],
        }
        atomic.write_text(meta_file, json.dumps(record))

    chosen = tuple(samples[i] for i in kept)
    labels = torch.tensor([s.label for s in chosen], dtype=torch.int64)
    common: dict[str, Any] = {
        "labels": labels,
        "paths": tuple(s.path for s in chosen),
        "classes": scan.classes,
        "split": split,
        "bad_files": tuple(bad),
    }
    if streaming:
        return StreamingSplit(
            samples=chosen,
            storage_size=storage_size,
            device=torch.device("cpu"),
            workers=workers,
            **common,
        )
    assert stored is not None
    return DecodedSplit(
        images=torch.from_numpy(stored), cache_file=array_file, from_cache=from_cache, **common
    )
