"""Run every benchmark in turn (``make bench``); each prints its own device, figures and ratio.

python benchmarks/run_all.py           # full runs
python benchmarks/run_all.py --quick   # shorter runs where a benchmark offers them
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

# (script, extra arguments for --quick)
BENCHMARKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("count_speed.py", ("--repeats", "2")),
    ("data_pipeline.py", ("--repeats", "1")),
    ("train_throughput.py", ("--quick",)),
    ("packing.py", ("--archs", "resnet18", "--ks", "1", "4", "--steps", "1")),
    ("cpu_workers.py", ("--steps", "5")),
    ("dry_run_estimate.py", ("--depths", "18")),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    failed = []
    for script, quick in BENCHMARKS:
        print(f"\n=== {script}", flush=True)
        command = [sys.executable, str(HERE / script), *(quick if args.quick else ())]
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
