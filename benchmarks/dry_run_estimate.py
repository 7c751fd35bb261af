"""The dry run's time estimate against the measured wall time of the same grid.

Runs the dry run (``resablate.grid.plan.plan_grid``: it probes a few steps of each distinct model)
and then the grid itself (``run_grid``) on the demo data in a temporary folder, and prints the
probe's own wall time, the estimate, the measured wall time of the grid and their ratio, with the
device and the load average (the estimate measures the machine as loaded when it probes; a run
under another load takes another time). The target: the probe takes at most ~30 s and the
estimate is within a factor of 1.5 of the measured time.

Usage::

    python benchmarks/dry_run_estimate.py                 # ResNet-18 and -50 x residual on/off
    python benchmarks/dry_run_estimate.py --depths 18     # smaller
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resablate.engine.environment import device_name, resolve_device
from resablate.grid.plan import plan_grid
from resablate.grid.runner import run_grid
from resablate.grid.spec import GridSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 50])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    spec = GridSpec(
        depths=tuple(args.depths), residual=("on", "off"), weights=("none",), data="demo"
    )
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "grid"
        load = os.getloadavg()[0]
        start = time.perf_counter()
        plan = plan_grid(spec, out, device=args.device)
        probe = time.perf_counter() - start
        estimate = plan.estimated_seconds or float("nan")
        start = time.perf_counter()
        summary = run_grid(spec, out, device=args.device, pack="off")
        measured = time.perf_counter() - start
    cells = len(summary.cells)
    print(
        f"{cells} cells (ResNet-{'/'.join(map(str, args.depths))} x residual on/off, demo data) "
        f"on {device_name(device)}, {os.cpu_count()} CPUs, load average {load:.2f} at the probe\n"
        f"  probe (dry run)    {probe:7.1f} s\n"
        f"  estimate           {estimate:7.1f} s\n"
        f"  measured (grid)    {measured:7.1f} s\n"
        f"  measured/estimate  {measured / estimate:7.2f}x"
    )


if __name__ == "__main__":
    main()
