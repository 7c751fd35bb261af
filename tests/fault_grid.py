"""``resablate grid`` that SIGKILLs itself at a chosen moment (the fault suite's kills).

``run(when, args)`` in a fresh process (the suite forks it from a forkserver that has imported
torch once), or ``python fault_grid.py WHEN GRID_ARGS...``; WHEN is ``None`` (no kill) or

* ``write:<glob>:<n>``: inside the n-th atomic write of a file whose name matches ``glob``
  (``step-*.pt`` checkpoints, ``results.csv``, ...): its bytes are in the temporary file, not
  yet fsynced or renamed;
* ``after:<seconds>``: at that time after start, wherever the run is.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import runpy
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from resablate import atomic


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_inside_writes(pattern: str, nth: int) -> None:
    original = atomic.atomic_open
    seen = 0

    @contextlib.contextmanager
    def faulty(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
        nonlocal seen
        with original(path, mode) as handle:
            yield handle
            if fnmatch.fnmatch(Path(path).name, pattern):
                seen += 1
                if seen == nth:
                    handle.flush()
                    _die()

    atomic.atomic_open = faulty


def run(when: str | None, args: list[str]) -> None:
    """Run ``resablate grid ARGS`` in this process, killing it as ``when`` says."""
    if when is not None:
        kind, _, rest = when.partition(":")
        if kind == "write":
            pattern, _, nth = rest.rpartition(":")
            _kill_inside_writes(pattern, int(nth))
        else:
            threading.Timer(float(rest), _die).start()
    sys.argv = ["resablate", *args]
    runpy.run_module("resablate_cli", run_name="__main__")


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
