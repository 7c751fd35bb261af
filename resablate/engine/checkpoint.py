"""Checkpoints: one atomically written file per checkpoint; the newest loadable one wins.

A checkpoint is a ``torch.save`` of plain containers and tensors only (so it loads with
``torch.load(weights_only=True)``), written through :mod:`resablate.atomic`: a file that exists is
complete. Files are named ``step-00001200.pt`` after the optimiser step they were taken at; only
the newest :data:`KEEP` are kept.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resablate.atomic import sweep_stale, write_bytes
from resablate.weights import load_failure

KEEP = 2
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    """The file of the checkpoint taken after ``step`` optimiser steps."""
    return folder / f"step-{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; delete all but the newest ``keep``.

    Returns:
        The checkpoint file.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = checkpoint_path(folder, step)
    write_bytes(path, buffer.getvalue())
    for _, old in list_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class Latest:
    """What :func:`load_latest` found.

    Attributes:
        path: The newest checkpoint that loads, or None.
        state: Its contents (None with ``path``).
        skipped: ``"<file>: <why>"`` for each newer checkpoint passed over because it does not
            load, newest first.
    """

    path: Path | None
    state: dict[str, Any] | None
    skipped: tuple[str, ...]


def load_latest(folder: Path) -> Latest:
    """The newest checkpoint that loads (``weights_only=True``, on CPU), and the ones passed over.

    A file that fails to load for any reason (random bytes, a pickle of objects, text, a file cut
    by a full disk, not a dict) is skipped and named in :attr:`Latest.skipped`; the next older
    one is tried. Stale temporary files are swept first.
    """
    sweep_stale(folder)
    skipped = []
    for _, path in list_checkpoints(folder):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except MemoryError:
            raise
        except Exception as exc:
            skipped.append(f"{path}: does not load: {load_failure(exc)}")
            continue
        if isinstance(state, dict):
            return Latest(path, state, tuple(skipped))
        skipped.append(f"{path}: not a checkpoint (holds a {type(state).__name__})")
    return Latest(None, None, tuple(skipped))


def clear_checkpoints(folder: Path) -> None:
    """Delete every checkpoint in ``folder`` (a fresh, non-resumed run)."""
    for _, path in list_checkpoints(folder):
        path.unlink(missing_ok=True)
