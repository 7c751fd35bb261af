"""Checkpoints: one atomically written file per checkpoint; the newest loadable one wins.

A checkpoint is a ``torch.save`` of plain containers and tensors only (so it loads with
``torch.load(weights_only=True)``), written through :mod:`resablate.atomic`: a file that exists is
complete. Files are named ``step-00001200.pt`` after the optimiser step they were taken at; only
the newest :data:`KEEP` are kept.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from resablate.atomic import sweep_stale, write_bytes

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


def load_latest(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads (``weights_only=True``, on CPU), or ``None``.

    A file that fails to load (e.g. truncated by a full disk before the atomic rename existed) is
    passed over in favour of the next older one. Stale temporary files are swept first.
    """
    sweep_stale(folder)
    for _, path in list_checkpoints(folder):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):
            continue
        if isinstance(state, dict):
            return path, state
    return None


def clear_checkpoints(folder: Path) -> None:
    """Delete every checkpoint in ``folder`` (a fresh, non-resumed run)."""
    for _, path in list_checkpoints(folder):
        path.unlink(missing_ok=True)
