"""How learnable the demo data is: a tiny CNN trained for a few epochs, test accuracy per epoch.

The demo's FAKE traces live at the pixel level (up-sampling checkerboards), so the geometry of
the training augmentation matters: ``--crop resize`` (flip only, at the native 32×32) keeps
them; ``--crop random_resized_crop`` re-samples every image and blurs them away.

    python benchmarks/demo_learnability.py                    # 8 epochs, resize + flip
    python benchmarks/demo_learnability.py --crop random_resized_crop --scale 0.6
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def tiny_cnn(classes: int) -> nn.Module:
    """Three 3×3 convolutions (16, 32, 64 channels; the last two stride 2), global pooling."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--crop", default="resize", choices=["resize", "random_resized_crop"])
    parser.add_argument("--scale", type=float, default=0.08, help="smallest crop area fraction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from resablate.data import BatchTransform, decode_split, demo_data, scan

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    dataset = scan(demo_data())
    train = decode_split(dataset, "train", storage_size=None)
    test = decode_split(dataset, "test", storage_size=None)
    model = tiny_cnn(len(dataset.classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    augment = BatchTransform(32, train=True, crop=args.crop, scale=(args.scale, 1.0))
    evaluate = BatchTransform(32)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    print(f"train {len(train)}, test {len(test)} images; crop={args.crop}; 1 thread")
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for first in range(0, len(order), 32):
            batch = order[first : first + 32]
            loss = nn.functional.cross_entropy(
                model(augment(train.get_batch(batch), generator)), train.labels[batch]
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            predictions = model(evaluate(test.images)).argmax(dim=1)
        accuracy = (predictions == test.labels).float().mean().item()
        elapsed = time.perf_counter() - start
        print(f"epoch {epoch}: test accuracy {accuracy:.3f} ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
