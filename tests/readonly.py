"""Run a command with one folder read-only, as on a mounted archive or a colleague's results.

As root (where file modes do not stop writes) the folder is bind-mounted read-only in a private
mount namespace (``unshare -m``); otherwise its files and folders lose their write bits for the
duration of the command.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _chmod_tree(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


def run_read_only(
    folder: Path, argv: list[str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``argv`` (its first item ``python`` = this interpreter) with ``folder`` read-only."""
    argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    if os.geteuid() != 0:
        _chmod_tree(folder, writable=False)
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        finally:
            _chmod_tree(folder, writable=True)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare(1): cannot make a folder read-only")
    where = shlex.quote(str(folder))
    script = f"mount --bind -o ro {where} {where} && exec {shlex.join(argv)}"
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if "mount" in done.stderr and done.returncode != 0 and "Permission denied" in done.stderr:
        pytest.skip("cannot bind-mount read-only here (no CAP_SYS_ADMIN)")
    return done
