"""Packed cells against the same cells one at a time: training throughput of K cells.

For ResNet-18 and ResNet-50 at 32×32 (AdamW, fp32, random input, batch ``--batch`` per cell): the
reference trains each of the K cells alone, one after another (a plain torchvision model:
forward, backward, AdamW step); the packed run fuses K such models (``resablate.packing.fuse``)
and trains them as one model on K batches (the loss is the sum of the groups' mean losses, as
``resablate.engine.packed`` trains). Both advance K cells by one step: the ratio is
``K * seconds of one plain step / seconds of one packed step``, and images/s per cell is
``batch / seconds per step of all K cells``.

Plain and packed steps alternate (one warm-up each, then ``--steps`` timed rounds) so that both see
the same load on a shared machine; the figures are medians.

    python benchmarks/packing.py                 # K = 1, 2, 4, 8
    python benchmarks/packing.py --ks 1 4 --steps 3 --archs resnet18
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

from resablate.packing import fuse, pack_inputs, split_outputs


def _trainer(model: torch.nn.Module, k: int, batch: int) -> Callable[[], float]:
    """One training step of ``model`` as a function returning its seconds; ``k = 0``: a plain
    model, else a packed model of K groups."""
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images = [torch.randn(batch, 3, 32, 32) for _ in range(max(1, k))]
    labels = torch.randint(0, 2, (max(1, k), batch))
    x = images[0] if k == 0 else pack_inputs(images)
    model.train()

    def step() -> float:
        start = time.perf_counter()
        if k == 0:
            loss = F.cross_entropy(model(x), labels[0])
        else:
            logits = split_outputs(model(x), k)
            losses = [F.cross_entropy(out, y) for out, y in zip(logits, labels, strict=True)]
            loss = torch.stack(losses).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"device: cpu ({torch.get_num_threads()} torch threads), torch {torch.__version__}; "
        f"32x32, batch {args.batch} per cell, AdamW fp32; medians of {args.steps} alternating "
        "plain/packed rounds after one warm-up",
        flush=True,
    )
    for arch in args.archs:
        build = getattr(torchvision.models, arch)
        plain = _trainer(build(num_classes=2), 0, args.batch)
        for k in args.ks:
            packed = _trainer(fuse([build(num_classes=2) for _ in range(k)]), k, args.batch)
            plain(), packed()
            rounds = [(plain(), packed()) for _ in range(args.steps)]
            alone = statistics.median(t for t, _ in rounds)
            together = statistics.median(t for _, t in rounds)
            print(
                f"{arch} K={k}: one at a time {args.batch / (k * alone):.1f} images/s per cell, "
                f"packed {args.batch / together:.1f} images/s per cell: "
                f"{k * alone / together:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
