"""Several cells at once on a CPU: worker processes with a share of the cores each, against one.

Trains a plain torchvision ResNet at 32×32 (fused AdamW as the engine, fp32, random input) for
``--steps`` steps in: one process with all of torch's threads (what one local worker does); N
processes with threads // N each (what ``resablate grid --workers N`` does); and N processes with
all the threads each (oversubscribed: what workers did before they split the threads). Prints the
images/s of each setting, summed over its processes, and the ratio to one process.

    python benchmarks/cpu_workers.py                  # N = 2, ResNet-18, batch 64
    python benchmarks/cpu_workers.py --workers 4 --arch resnet50
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch
import torch.nn.functional as F
import torchvision
from data_pipeline import device_name


def _train(arch: str, batch: int, steps: int, threads: int, rates: object) -> None:
    """Train ``steps`` steps after three warm-up steps; put images/s on ``rates``."""
    torch.set_num_threads(threads)
    model = getattr(torchvision.models, arch)(num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 2, (batch,))

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rates.put(steps * batch / (time.perf_counter() - start))  # type: ignore[attr-defined]


def _images_per_second(args: argparse.Namespace, processes: int, threads: int) -> float:
    """Summed images/s of ``processes`` processes training at once with ``threads`` each."""
    context = multiprocessing.get_context("spawn")
    rates = context.Queue()
    running = [
        context.Process(target=_train, args=(args.arch, args.batch, args.steps, threads, rates))
        for _ in range(processes)
    ]
    for process in running:
        process.start()
    total = sum(rates.get() for _ in running)
    for process in running:
        process.join()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(
        f"device: {device_name(torch.device('cpu'))}, torch {torch.__version__}; {args.arch} "
        f"32x32, batch {args.batch}, fused AdamW, fp32; {args.steps} steps after 3 warm-up",
        flush=True,
    )
    one = _images_per_second(args, 1, threads)
    print(f"1 process x {threads} threads: {one:.0f} images/s", flush=True)
    for each in (max(1, threads // args.workers), threads):
        rate = _images_per_second(args, args.workers, each)
        print(
            f"{args.workers} processes x {each} threads: {rate:.0f} images/s together "
            f"({rate / one:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
