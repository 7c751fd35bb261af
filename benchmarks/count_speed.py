"""Time resablate's ``count()`` against fvcore's ``FlopCountAnalysis`` on the same model.

Both count one forward pass at batch 1 in fvcore's convention (one multiply-add = one flop) and
must agree exactly. ``count()`` runs the model on the meta device (shapes only); fvcore traces a
real forward with ``torch.jit.trace``. Warm-up once each, then mean ± std over ``--repeats``.

    python benchmarks/count_speed.py                          # ResNet-152 at 224×224, 5 repeats
    python benchmarks/count_speed.py --arch resnet50 --size 64
    python benchmarks/count_speed.py --arch vit_b_16          # any name `resablate count` takes

Models that compute outside their modules may differ from fvcore by the operators fvcore's rules
and ours treat differently (see resablate/counting.py); the ratio of the totals is printed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

# benchmarks are scripts, not a package: share the device description of data_pipeline.py
sys.path.insert(0, str(Path(__file__).parent))
from data_pipeline import device_name

from resablate.counting import count
from resablate.model_spec import parse_model


def timed(fn: Callable[[], int], repeats: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds per call over ``repeats`` calls after one warm-up, and the value.

    The process's CPU time is what the call costs when the cores are shared with other work
    (wall time then includes waiting for a core).
    """
    value = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet152")
    parser.add_argument("--source", default="torchvision")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = parse_model(args.arch, args.source).build().eval()
    image = torch.zeros(1, 3, args.size, args.size)

    def ours() -> int:
        return count(model, (3, args.size, args.size)).flops

    def fvcore() -> int:
        analysis = FlopCountAnalysis(model, image)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())

    ours_s, ours_cpu, ours_flops = timed(ours, args.repeats)
    ref_s, ref_cpu, ref_flops = timed(fvcore, args.repeats)
    print(f"device: {device_name(torch.device('cpu'))}")
    print(f"model: {args.arch} ({args.source}) at {args.size}×{args.size}, batch 1")
    for name, seconds, cpu, flops in (
        ("resablate count()", ours_s, ours_cpu, ours_flops),
        ("fvcore", ref_s, ref_cpu, ref_flops),
    ):
        spread = statistics.stdev(seconds) if len(seconds) > 1 else 0.0
        print(
            f"{name:>18}: {statistics.mean(seconds) * 1e3:8.1f} ± {spread * 1e3:6.1f} ms wall "
            f"({statistics.mean(cpu) * 1e3:.1f} ms CPU) over {len(seconds)} runs; {flops:,} flops"
        )
    print(f"agree exactly: {ours_flops == ref_flops} (ours / fvcore: {ours_flops / ref_flops:.4f})")
    print(f"speed-up: {statistics.mean(ref_s) / statistics.mean(ours_s):.1f}×")


if __name__ == "__main__":
    main()
