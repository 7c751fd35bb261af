"""Loading the next micro-batch of a source that is not resident on the device, off the step.

A split kept in host memory (it did not fit the GPU's share,
:data:`resablate.engine.data.GPU_CACHE_FRACTION`) or a streaming split (decoded on demand) cannot be
sliced on the device. :class:`Prefetcher` loads
micro-batch ``b + 1`` in a background thread while micro-batch ``b`` trains: it gathers (or
decodes) the images on the host and, on CUDA, stages them in pinned memory and copies them to the
GPU on a side stream. The step only waits for an event on its own stream; it never decodes.
"""

from __future__ import annotations

from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from resablate.engine.data import ImageSource

_Loaded = tuple[torch.Tensor, "torch.cuda.Event | None"]


class Prefetcher:
    """Loads the batches of ``source`` one step ahead, delivering them on ``device``.

    Args:
        source: The split; ``get_batch`` is called from a background thread with CPU indices.
        device: Where batches are delivered.
    """

    def __init__(self, source: ImageSource, device: torch.device) -> None:
        self.source = source
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="resablate-prefetch")
        self._pending: tuple[Hashable, Future[_Loaded]] | None = None

    def _load(self, indices: torch.Tensor) -> _Loaded:
        batch = self.source.get_batch(indices)
        if self.stream is None:
            return batch.to(self.device), None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            staged = batch if batch.is_pinned() else batch.pin_memory()
            on_device = staged.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return on_device, event

    def request(self, key: Hashable, indices: torch.Tensor) -> None:
        """Start loading the batch ``key`` (e.g. ``(epoch, micro-batch)``) of ``indices`` (CPU)."""
        self._pending = (key, self._pool.submit(self._load, indices))

    def take(self, key: Hashable, indices: torch.Tensor) -> torch.Tensor:
        """The batch ``key``: the one requested last when it has that key, else loaded now.

        On CUDA the current stream waits for the side stream's copy (no host synchronisation).
        """
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            images, event = pending[1].result()
        else:
            if pending is not None:
                pending[1].result()
            images, event = self._load(indices)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            images.record_stream(current)
        return images

    def close(self) -> None:
        """Wait for a batch in flight and stop the thread."""
        self._pending = None
        self._pool.shutdown(wait=True)
