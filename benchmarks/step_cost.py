"""Cost of one bare training step per image on this device, by model and batch size.

The figures that set the demo recipe's batch size: torchvision model, AdamW, random 32×32 input,
the median of timed steps after one warm-up step.

    python benchmarks/step_cost.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

CASES = (("resnet18", 32), ("resnet18", 64), ("resnet34", 32), ("resnet50", 32), ("resnet50", 64))


def ms_per_image(arch: str, batch: int, steps: int = 4) -> float:
    """Median milliseconds per image of a forward + backward + AdamW step."""
    model = getattr(torchvision.models, arch)(num_classes=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images = torch.randn(batch, 3, 32, 32)
    labels = torch.randint(0, 2, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:]) / batch


def main() -> None:
    print(f"device: cpu ({torch.get_num_threads()} torch threads), torch {torch.__version__}")
    for arch, batch in CASES:
        print(f"{arch} batch {batch}: {ms_per_image(arch, batch):.1f} ms/image", flush=True)


if __name__ == "__main__":
    main()
