"""Datasets: layout detection, decode-once cache, batched device augmentation, demo data.

Public names (imported lazily, so ``import resablate.data`` loads neither torch nor Pillow)::

    scan, DatasetScan, Sample, BadFile, SizeSummary        # resablate.data.layouts
    decode_image, read_header, BadImageError               # resablate.data.images
    decode_split, DecodedSplit, StreamingSplit, ImageSource  # resablate.data.cache
    BatchTransform, CropParams                             # resablate.data.augment
    demo_data, demo_proxy_data                             # resablate.data.demo
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "scan": "resablate.data.layouts",
    "DatasetScan": "resablate.data.layouts",
    "Sample": "resablate.data.layouts",
    "BadFile": "resablate.data.layouts",
    "SizeSummary": "resablate.data.layouts",
    "decode_image": "resablate.data.images",
    "read_header": "resablate.data.images",
    "BadImageError": "resablate.data.images",
    "decode_split": "resablate.data.cache",
    "DecodedSplit": "resablate.data.cache",
    "StreamingSplit": "resablate.data.cache",
    "ImageSource": "resablate.data.cache",
    "BatchTransform": "resablate.data.augment",
    "CropParams": "resablate.data.augment",
    "demo_data": "resablate.data.demo",
    "demo_proxy_data": "resablate.data.demo",
}

__all__ = [
    "BadFile",
    "BadImageError",
    "BatchTransform",
    "CropParams",
    "DatasetScan",
    "DecodedSplit",
    "ImageSource",
    "Sample",
    "SizeSummary",
    "StreamingSplit",
    "decode_image",
    "decode_split",
    "demo_data",
    "demo_proxy_data",
    "read_header",
    "scan",
]

if TYPE_CHECKING:
    from resablate.data.augment import BatchTransform, CropParams
    from resablate.data.cache import DecodedSplit, ImageSource, StreamingSplit, decode_split
    from resablate.data.demo import demo_data, demo_proxy_data
    from resablate.data.images import BadImageError, decode_image, read_header
    from resablate.data.layouts import BadFile, DatasetScan, Sample, SizeSummary, scan


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'resablate.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
