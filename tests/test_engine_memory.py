"""keep_freed_memory: freed CPU tensors are reused by the process instead of faulted in anew."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt thresholds exist only in glibc"
)

# Five training-style augmentation steps (batch 64, 32 -> 96 px; each allocates and frees a few
# MiB of intermediates) after a warm-up; prints whether the setting applied and the page faults.
SCRIPT = """
import resource, sys, torch
from resablate.data import BatchTransform, RecyclingTransform
from resablate.engine.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
transform = RecyclingTransform(BatchTransform(96, train=True))
images = torch.zeros((64, 3, 32, 32), dtype=torch.uint8)
generator = torch.Generator().manual_seed(0)
for _ in range(3):
    transform(images, generator)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    transform(images, generator)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


def test_kept_memory_is_not_faulted_in_again() -> None:
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 5 * 1000  # glibc's defaults: every step faults its intermediates in again
    assert kept < 100  # measured: 0


def test_the_environment_variable_turns_it_off() -> None:
    applied, faults = _faults("keep", RESABLATE_KEEP_FREED_MEMORY="0")
    assert applied == "False"
    assert faults > 5 * 1000
