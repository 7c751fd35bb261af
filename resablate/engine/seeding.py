"""Named random streams derived from one seed.

Why and what is promised: ``docs/architecture.md``, "Reproducibility and paired arms".

Every random choice of a run comes from a generator seeded by ``(seed, stream, position...)``:
the data order of epoch ``e`` from ``("order", e)``, the augmentation of micro-batch ``b`` of
epoch ``e`` from ``("augment", e, b)``, the model initialisation from ``("init",)``. A resumed run
therefore re-derives exactly the generators it needs and never draws numbers just to skip
batches, and the arms of one ablation with the same seed see the same images in the same order.
"""

from __future__ import annotations

import hashlib
import json

import torch

_SEED_MASK = (1 << 63) - 1


def stream_seed(seed: int, *names: str | int) -> int:
    """A 63-bit seed for the named stream ``names`` of ``seed`` (stable across platforms)."""
    blob = json.dumps([seed, *names], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & _SEED_MASK


def stream_generator(
    seed: int, *names: str | int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`stream_seed`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, *names))
    return generator


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The training order of epoch ``epoch``: a permutation of ``range(n)`` (int64, CPU)."""
    return torch.randperm(n, generator=stream_generator(seed, "order", epoch))
