"""Packed cells against the same cells one at a time: training throughput of K cells.

For ResNet-18 and ResNet-50 at 32×32 (AdamW, fp32, random input, batch ``--batch`` per cell; the
fused AdamW the engine uses, on both sides; ``--unfused`` for torch's default): the reference
trains each of the K cells alone, one after another (a plain torchvision model:
forward, backward, AdamW step); the packed run fuses K such models (``resablate.packing.fuse``)
and trains them as one model on K batches (the loss is the sum of the groups' mean losses, as
``resablate.engine.loop.train_groups`` trains). Both advance K cells by one step: the ratio is
``K * seconds of one plain step / seconds of one packed step``, and images/s per cell is
``batch / seconds per step of all K cells``.

Plain and packed steps alternate (one warm-up each, then ``--steps`` timed rounds) so that both see
the same load on a shared machine; the figures are medians. Each row also gives the time of a
plain step, and of it ``optimizer.step()`` (work per model that packing cannot share), in ms.

``--device cuda`` runs it on a GPU (synchronising before each clock reading). ``--layers`` (CPU)
explains the ratios: for every convolution of the architecture (grouped by shape), the forward and
backward of K plain convolutions one after another against one grouped convolution over the K
groups, as the packed model runs it (``ms`` per step, summed over the layers of that shape).

    python benchmarks/packing.py                 # K = 1, 2, 4, 8
    python benchmarks/packing.py --ks 1 4 --steps 3 --archs resnet18
    python benchmarks/packing.py --archs resnet18 --ks 4 --layers
    python benchmarks/packing.py --device cuda --archs resnet18 --ks 1 4 16 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from data_pipeline import device_name

from resablate.packing import fuse, pack_inputs, split_outputs


def _clock(device: torch.device) -> float:
    """Seconds now, after the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _trainer(
    model: torch.nn.Module, k: int, batch: int, *, fused: bool, device: torch.device
) -> Callable[[], tuple[float, float]]:
    """One training step of ``model`` as a function returning its seconds and those of its
    optimiser step; ``k = 0``: a plain model, else a packed model of K groups."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=fused)
    images = [torch.randn(batch, 3, 32, 32, device=device) for _ in range(max(1, k))]
    labels = torch.randint(0, 2, (max(1, k), batch), device=device)
    x = images[0] if k == 0 else pack_inputs(images)

    def step() -> tuple[float, float]:
        start = _clock(device)
        if k == 0:
            loss = F.cross_entropy(model(x), labels[0])
        else:
            logits = split_outputs(model(x), k)
            losses = [F.cross_entropy(out, y) for out, y in zip(logits, labels, strict=True)]
            loss = torch.stack(losses).sum()
        loss.backward()
        update = _clock(device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = _clock(device)
        return end - start, end - update

    return step


def _conv_shapes(arch: str, batch: int) -> Counter[tuple[Any, ...]]:
    """The convolutions of ``arch`` at 32×32: (in, out, kernel, stride, padding, input side,
    whether the input needs a gradient) -> how many layers have that shape."""
    model = getattr(torchvision.models, arch)(num_classes=2)
    shapes: Counter[tuple[Any, ...]] = Counter()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(
                lambda conv, args, out: shapes.update(
                    [
                        (
                            conv.in_channels,
                            conv.out_channels,
                            conv.kernel_size[0],
                            conv.stride[0],
                            conv.padding[0],
                            args[0].shape[-1],
                            conv is not model.conv1,
                        )
                    ]
                )
            )
    model(torch.randn(batch, 3, 32, 32))
    return shapes


def _conv_passes(
    xs: list[torch.Tensor], ws: list[torch.Tensor], stride: int, padding: int, groups: int
) -> None:
    for x, w in zip(xs, ws, strict=True):
        F.conv2d(x, w, stride=stride, padding=padding, groups=groups).sum().backward()


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layers(arch: str, k: int, batch: int, repeats: int) -> None:
    """Print K plain convolutions against one grouped convolution, per shape of ``arch``."""
    totals = [0.0, 0.0]
    print(f"{arch} K={k}: convolution forward+backward, ms per step (K plain / grouped)")
    for shape, count in _conv_shapes(arch, batch).items():
        c_in, c_out, kernel, stride, padding, side, input_grad = shape
        xs = [torch.randn(batch, c_in, side, side, requires_grad=input_grad) for _ in range(k)]
        ws = [torch.randn(c_out, c_in, kernel, kernel, requires_grad=True) for _ in range(k)]
        x = torch.cat(xs, 1).detach().requires_grad_(input_grad)
        w = torch.cat(ws, 0).detach().requires_grad_()

        plain = partial(_conv_passes, xs, ws, stride, padding, 1)
        grouped = partial(_conv_passes, [x], [w], stride, padding, k)
        times = [count * 1000 * _median_seconds(f, repeats) for f in (plain, grouped)]
        totals = [a + b for a, b in zip(totals, times, strict=True)]
        print(
            f"  {count:2d} x {c_in:4d}->{c_out:4d} {kernel}x{kernel}/{stride} at {side:2d}px: "
            f"{times[0]:7.1f} / {times[1]:7.1f}  ({times[0] / times[1]:.2f}x)",
            flush=True,
        )
    print(f"  all: {totals[0]:.1f} / {totals[1]:.1f}  ({totals[0] / totals[1]:.2f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--unfused", action="store_true", help="torch's default AdamW")
    parser.add_argument(
        "--layers", action="store_true", help="per convolution shape, plain vs grouped"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(
        f"device: {device_name(device)}, torch {torch.__version__}; "
        f"32x32, batch {args.batch} per cell, {'default' if args.unfused else 'fused'} AdamW, "
        f"fp32; medians of {args.steps} alternating plain/packed rounds after one warm-up",
        flush=True,
    )
    if args.layers:
        for arch in args.archs:
            for k in args.ks:
                _layers(arch, k, args.batch, max(args.steps, 5))
        return
    for arch in args.archs:
        for k in args.ks:
            row = packed_vs_alone(arch, k, args.batch, args.steps, device, fused=not args.unfused)
            print(
                f"{arch} K={k}: one at a time {row['alone_images_per_s_per_cell']:.1f} images/s "
                f"per cell, packed {row['packed_images_per_s_per_cell']:.1f} images/s per cell: "
                f"{row['ratio']:.2f}x (plain step {row['plain_step_ms']:.0f} ms, of which the "
                f"optimiser {row['optimiser_ms']:.0f} ms)",
                flush=True,
            )


def packed_vs_alone(
    arch: str, k: int, batch: int, steps: int, device: torch.device, *, fused: bool = True
) -> dict[str, float]:
    """K cells of ``arch`` packed against the same cells one at a time (see the module
    docstring): images/s per cell both ways, their ratio, a plain step's and its optimiser's ms."""
    build = getattr(torchvision.models, arch)
    plain = _trainer(build(num_classes=2), 0, batch, fused=fused, device=device)
    packed = _trainer(
        fuse([build(num_classes=2) for _ in range(k)]), k, batch, fused=fused, device=device
    )
    plain(), packed()
    rounds = [(plain(), packed()) for _ in range(steps)]
    alone = statistics.median(t for (t, _), _ in rounds)
    update = statistics.median(u for (_, u), _ in rounds)
    together = statistics.median(t for _, (t, _) in rounds)
    return {
        "alone_images_per_s_per_cell": batch / (k * alone),
        "packed_images_per_s_per_cell": batch / together,
        "ratio": k * alone / together,
        "plain_step_ms": 1000 * alone,
        "optimiser_ms": 1000 * update,
    }


if __name__ == "__main__":
    main()
