"""Keep freed memory inside the process on glibc, so CPU training stops page-faulting each step.

Every training step on the CPU allocates and frees the same multi-megabyte tensors (augmented
batches, activations, gradients). glibc's ``malloc`` hands blocks above its ``mmap`` threshold
back to the kernel when they are freed and trims the top of its heap once more than the trim
threshold is free, so the next step gets fresh pages, and each first touch of a 4 KiB page is a
fault in which the kernel zeroes it. On the 2-core CPU of ``docs/performance.md`` this was about
half of the augmentation time (``benchmarks/data_pipeline.py``, batch 256: 3,560 faults per batch
at 32 × 32 output and 20,660 at 224 × 224 with glibc's defaults, 8 and 502 with this setting).
PyTorch's CPU tuning guide suggests swapping in jemalloc or TCMalloc for the same
reason; :func:`keep_freed_memory` gets the effect without a preloaded library by raising the two
thresholds with ``mallopt``. The cost: memory freed by the process is reused by it rather than
returned to the system, so its resident size stays near its peak.

Set ``RESABLATE_KEEP_FREED_MEMORY=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import cache

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Blocks up to this size come from the heap (glibc's largest allowed value: 32 MiB on 64-bit)."""

TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
"""Free memory at the top of the heap is kept up to this size (1 GiB)."""

ENV_VAR = "RESABLATE_KEEP_FREED_MEMORY"


@cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls are free).

    Blocks up to :data:`MMAP_THRESHOLD_BYTES` then come from the heap, and up to
    :data:`TRIM_THRESHOLD_BYTES` of freed heap stays mapped for reuse. Larger blocks are still
    mapped and unmapped per allocation, which is why the engine also reuses its batch buffers
    (:class:`resablate.data.RecyclingTransform`). Processes forked afterwards (DataLoader
    workers) inherit the setting.

    Returns:
        Whether the thresholds were changed: ``False`` on a C library other than glibc (macOS,
        musl, Windows) or when ``RESABLATE_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get(ENV_VAR, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mmap_ok and trim_ok
