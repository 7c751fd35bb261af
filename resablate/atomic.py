"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Recipe (``docs/architecture.md``, "Safety"): write a temporary file in the same folder, flush and
fsync it, ``os.replace`` it over the target, then fsync the folder so the rename itself is durable.
Temporary files carry a fixed marker in their name so that :func:`sweep_stale` can remove the
ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TMP_MARKER = ".resablate-tmp-"


def _default_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse O_RDONLY on folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` atomically when the block exits cleanly.

    Args:
        path: The final file. Its folder is created if missing.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    If the block raises, the temporary file is removed and ``path`` is untouched; an
    ``OSError`` without a file name (a full disk, an I/O error) is raised again naming ``path``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_MARKER + target.name + ".", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600 files; results and reports are meant to be shared like any other.
        os.fchmod(fd, _default_mode())
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # A full disk (ENOSPC) or an I/O error surfaces at write or fsync without a name.
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_with(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> None:
    """Call ``writer(fh)`` on a binary temporary file, then move it over ``path`` atomically.

    For serialisers that want a file object (``torch.save``, ``numpy.save``, ``PIL.Image.save``).
    """
    with atomic_open(path, "wb") as fh:
        writer(fh)


def sweep_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files that a killed process left under ``folder`` (recursively).

    Returns:
        The paths removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for tmp in root.rglob(TMP_MARKER + "*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed
