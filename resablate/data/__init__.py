"""Datasets: layout detection, decode-once cache, batched device augmentation, demo data.

See ``docs/data.md``. The modules: :mod:`~resablate.data.layouts` (``scan``),
:mod:`~resablate.data.tables` (parquet files and Hugging Face datasets as layouts),
:mod:`~resablate.data.images` (the one safe decoder), :mod:`~resablate.data.cache`
(``decode_split``), :mod:`~resablate.data.augment` (``BatchTransform``),
:mod:`~resablate.data.demo` (``demo_data``, ``demo_proxy_data``) and
:mod:`~resablate.data.fetch` (the public sets, downloaded on request).
"""

from __future__ import annotations

from resablate.data.augment import BatchTransform, CropParams, RecyclingTransform
from resablate.data.cache import DecodedSplit, ImageSource, StreamingSplit, decode_split
from resablate.data.demo import demo_data, demo_proxy_data
from resablate.data.images import BadImageError, decode_image, read_header
from resablate.data.layouts import BadFile, DatasetScan, Sample, SizeSummary, scan

__all__ = [
    "BadFile",
    "BadImageError",
    "BatchTransform",
    "CropParams",
    "DatasetScan",
    "DecodedSplit",
    "ImageSource",
    "RecyclingTransform",
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
