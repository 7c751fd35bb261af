"""Images per second delivered to a model (no model): decode-once + batched augmentation vs a
plain torchvision pipeline, measured in the same process on the demo data.

Ours: ``scan`` + ``decode_split`` (the uint8 cache, memory-mapped) + ``BatchTransform`` in train
mode (random-resized crop, flip, normalise) on the chosen device, batches of random indices,
written into reused buffers (``RecyclingTransform``) as the engine's loops do. Both sides run with
the allocator setting the engine uses on the CPU (``keep_freed_memory``).
Reference: ``torchvision.datasets.ImageFolder`` + PIL transforms (``RandomResizedCrop``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) + ``DataLoader(num_workers=2,
shuffle=True, persistent_workers=True)``, fp32 NCHW tensors on the same device.

Each measurement delivers ``--images`` images after a warm-up; mean ± std over ``--repeats``.

    python benchmarks/data_pipeline.py                      # CPU, 32x32 and 224x224 output
    python benchmarks/data_pipeline.py --device cuda --sizes 224
    RESABLATE_KEEP_FREED_MEMORY=0 python benchmarks/data_pipeline.py   # glibc's default allocator
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo, plus the cores in use."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} torch threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    deliver: Callable[[int], int], n_images: int, repeats: int, device: torch.device
) -> tuple[list[float], float]:
    """Images/s of ``deliver(n)`` (which returns how many images it produced), per repeat, and
    the minor page faults of this process per image delivered over the timed repeats (a
    DataLoader's faults happen in its workers and are not counted)."""
    deliver(min(n_images, 512))  # warm-up: caches, workers, allocator
    _sync(device)
    rates = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start = time.perf_counter()
        produced = deliver(n_images)
        _sync(device)
        rates.append(produced / (time.perf_counter() - start))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return rates, faults / (n_images * repeats)


def ours(root: Path, size: int, batch: int, device: torch.device) -> Callable[[int], int]:
    from resablate.data import BatchTransform, RecyclingTransform, decode_split, scan

    split = decode_split(scan(root), "train", storage_size=None).to(device)
    transform = RecyclingTransform(BatchTransform(size, train=True))
    generator = torch.Generator().manual_seed(0)

    def deliver(n: int) -> int:
        produced = 0
        while produced < n:
            order = torch.randperm(len(split), generator=generator)
            for start in range(0, len(order), batch):
                images = transform(split.get_batch(order[start : start + batch]), generator)
                produced += images.shape[0]
                if produced >= n:
                    break
        return produced

    return deliver


def reference(
    root: Path, size: int, batch: int, device: torch.device, workers: int
) -> Callable[[int], int]:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from resablate.data.augment import IMAGENET_MEAN, IMAGENET_STD

    pipeline = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(str(root / "train"), transform=pipeline),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    def deliver(n: int) -> int:
        produced = 0
        while produced < n:
            for images, _ in loader:
                images = images.to(device, non_blocking=True)
                produced += images.shape[0]
                if produced >= n:
                    break
        return produced

    return deliver


def _summary(rates: list[float]) -> str:
    spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
    return f"{statistics.mean(rates):>10,.0f} ± {spread:>7,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="CIFAKE-style folder (default: demo data)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="output sides (px)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=4096, help="images per measurement at 32 px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from resablate.data import demo_data
    from resablate.engine.memory import keep_freed_memory

    device = torch.device(args.device)
    root = args.data if args.data is not None else demo_data()
    # As the engine does on the CPU; before either side runs, so that both (and the reference's
    # forked DataLoader workers) use the same allocator setting.
    kept = keep_freed_memory()
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; data: {root}; "
        f"keep_freed_memory: {kept}"
    )
    print(f"batch {args.batch}, {args.repeats} repeats after a warm-up, images/s (mean ± std)")
    print(
        f"{'output':>8} {'decode-once + batched':>22} {'ImageFolder+DataLoader':>24} {'ratio':>7}"
        f" {'page faults per batch (ours)':>29}"
    )
    for size in args.sizes:
        # Same work per repeat in pixels delivered (fewer images at larger outputs), and at
        # least 4 batches so that one slow batch does not decide the figure.
        n_images = max(
            4 * args.batch, args.images * 32 * 32 // (size * size) // args.batch * args.batch
        )
        fast, faults = measure(ours(root, size, args.batch, device), n_images, args.repeats, device)
        plain, _ = measure(
            reference(root, size, args.batch, device, args.workers), n_images, args.repeats, device
        )
        ratio = statistics.mean(fast) / statistics.mean(plain)
        print(
            f"{size:>5}x{size:<3} {_summary(fast):>22} {_summary(plain):>24} {ratio:>6.1f}x"
            f" {faults * args.batch:>29,.0f}"
        )


if __name__ == "__main__":
    main()
