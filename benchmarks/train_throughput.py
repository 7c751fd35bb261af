"""End-to-end training throughput: the engine vs stock PyTorch loops (fp32 and AMP), same process.

All train the same architecture with the same batch size, input size and optimiser on the demo
data. The engine path is ``resablate.engine.train`` (decode-once cache resident on the device,
batched on-device augmentation, bf16 autocast and channels_last on CUDA). The references are the
plain recipe: torchvision ``ImageFolder`` + PIL ``RandomResizedCrop``/flip/``ToTensor``/
``Normalize`` + ``DataLoader`` (2 workers), once in fp32 NCHW (the **stock fp32 loop**) and once
with bf16 autocast (the **stock AMP loop**, with channels_last on CUDA as the engine), so that the
ratio against the AMP loop credits the engine's data path only, never AMP's own gain. On the CPU,
whose engine default is fp32, the engine is also run with ``amp=bf16`` for that comparison.
Throughput is training images per second over timed steps after warm-up steps (evaluation
excluded); each configuration is repeated and reported as mean ± std, with the ratios. The fp32
reference is measured twice: plain (glibc's default allocator, first) and under the allocator
setting the engine applies on the CPU (``keep_freed_memory``), to show how much of the ratio that
setting accounts for.

Usage::

    python benchmarks/train_throughput.py          # ResNet-18 at 32 and 224 (+ ResNet-50 on CUDA)
    python benchmarks/train_throughput.py --quick  # one short repeat: checks that it runs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from resablate.data import decode_split, demo_data, scan
from resablate.engine import train
from resablate.engine.environment import device_name
from resablate.engine.memory import keep_freed_memory
from resablate.recipes import Recipe, get_recipe
from resablate.weights import build_model


@dataclasses.dataclass(frozen=True)
class Config:
    arch: str
    image_size: int
    batch_size: int
    steps: int
    warmup: int
    device: str
    workers: int = 2  # DataLoader workers of the stock loops


class Head:
    """The first ``n`` samples of a split (a small eval set: evaluation is not timed anyway)."""

    def __init__(self, split, n: int) -> None:
        self.split, self.n = split, min(n, len(split))
        self.labels = split.labels[: self.n]
        self.paths = split.paths[: self.n]
        self.classes = split.classes

    def __len__(self) -> int:
        return self.n

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.split.get_batch(indices)

    def to(self, device: torch.device) -> Head:
        return Head(self.split.to(device), self.n)


def recipe_for(config: Config, steps: int, amp: str = "auto", compile: str = "off") -> Recipe:
    return get_recipe(
        "cifake",
        image_size=config.image_size,
        batch_size=config.batch_size,
        grad_accum=1,
        epochs=1000,
        max_steps=steps,
        eval_every=None,
        checkpoint_every=None,
        eval_batch_size=config.batch_size,
        amp=amp,
        compile=compile,
    )


def engine_rate(
    config: Config, root: Path, seed: int, amp: str = "auto", compile: str = "off"
) -> float:
    """Images/s of ``resablate.engine.train`` (``compile``: the recipe's compile mode)."""
    dataset = scan(root)
    train_split = decode_split(dataset, "train", storage_size=None)
    test_split = Head(decode_split(dataset, "test", storage_size=None), config.batch_size)
    torch.manual_seed(seed)
    model = build_model(config.arch, num_classes=len(dataset.classes))
    # A short warm-up run, then the timed run on the warmed-up model; the engine's clock covers
    # training steps only (not evaluation or checkpoints).
    rates = []
    with tempfile.TemporaryDirectory() as run_dir:
        for name, steps in (("warm", config.warmup), ("timed", config.steps)):
            result = train(
                model,
                train_split,
                test_split,
                recipe_for(config, steps, amp, compile),
                run_dir=Path(run_dir) / name,
                seed=seed,
                device=config.device,
                resume=False,
            )
            rates.append(result.images_per_second)
    return rates[-1]


def reference_rate(config: Config, root: Path, seed: int, amp: bool = False) -> float:
    """Images/s of the stock loop: fp32 NCHW, or (``amp``) bf16 autocast, channels_last on CUDA."""
    device = torch.device(config.device)
    channels_last = amp and device.type == "cuda"
    recipe = recipe_for(config, config.steps)
    pipeline = transforms.Compose(
        [
            transforms.RandomResizedCrop(config.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(recipe.mean, recipe.std),
        ]
    )
    dataset = datasets.ImageFolder(str(root / "train"), transform=pipeline)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.workers,
        drop_last=True,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)
    model = build_model(config.arch, num_classes=len(dataset.classes)).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def step() -> None:
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(config.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(config.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return config.steps * config.batch_size / (time.perf_counter() - start)


def summarise(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):8.1f} ± {spread:6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, few steps")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    scale = 0.25 if args.quick else 1.0

    def steps(n: int) -> int:
        return max(2, int(n * scale))

    configs = [
        Config("resnet18", 32, 64, steps(40), steps(8), "cpu"),
        Config("resnet18", 224, 32, steps(8), steps(4), "cpu"),
    ]
    if torch.cuda.is_available():
        # Fair to the stock loops on a GPU machine: as many DataLoader workers as cores (<= 16).
        workers = min(16, os.cpu_count() or 2)
        configs += [
            Config("resnet50", 224, 128, steps(60), steps(15), "cuda", workers),
            Config("resnet18", 32, 256, steps(100), steps(20), "cuda", workers),
        ]
    root = demo_data()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, data {root}")
    # The plain reference runs first, under glibc's default allocator, as a plain script would.
    # The engine keeps freed memory in the process on the CPU (a process-wide setting that cannot
    # be undone), so it comes second, and the reference is measured once more under the same
    # setting to show how much of the ratio that setting accounts for.
    plain = {
        config: [reference_rate(config, root, seed=r) for r in range(repeats)] for config in configs
    }
    kept = keep_freed_memory()
    for config in configs:
        cpu = config.device == "cpu"
        engine, reference, amp_engine, amp_reference, graphs = [], [], [], [], []
        for r in range(repeats):
            engine.append(engine_rate(config, root, seed=r))
            reference.append(reference_rate(config, root, seed=r))
            # On CUDA the engine's default is already bf16: compare it with the AMP loop.
            amp_engine.append(engine_rate(config, root, seed=r, amp="bf16") if cpu else engine[-1])
            amp_reference.append(reference_rate(config, root, seed=r, amp=True))
            if not cpu:  # launch-bound small images: CUDA graphs
                graphs.append(engine_rate(config, root, seed=r, compile="reduce-overhead"))
        base = statistics.mean(plain[config])
        engine_mean, amp_mean = statistics.mean(engine), statistics.mean(amp_engine)
        default = "fp32" if cpu else "bf16 + channels_last"
        print(
            f"{config.arch} {config.image_size}px batch {config.batch_size} on "
            f"{device_name(torch.device(config.device))} "
            f"({repeats} repeats, {config.steps} timed steps after {config.warmup} warm-up):\n"
            f"  engine ({default}) {summarise(engine)} img/s\n"
            f"  stock fp32 loop {summarise(plain[config])} img/s -> ratio "
            f"{engine_mean / base:.2f}x\n"
            f"  stock fp32 loop with keep_freed_memory={kept} {summarise(reference)} img/s -> "
            f"ratio {engine_mean / statistics.mean(reference):.2f}x\n"
            + (f"  engine (bf16) {summarise(amp_engine)} img/s\n" if cpu else "")
            + f"  stock AMP loop (bf16 autocast{'' if cpu else ' + channels_last'}, "
            f"{config.workers} workers) {summarise(amp_reference)} img/s -> ratio "
            f"{amp_mean / statistics.mean(amp_reference):.2f}x"
            + (
                f"\n  engine (bf16, compile reduce-overhead) {summarise(graphs)} img/s -> ratio "
                f"{statistics.mean(graphs) / statistics.mean(amp_reference):.2f}x the AMP loop"
                if graphs
                else ""
            )
        )


if __name__ == "__main__":
    main()
