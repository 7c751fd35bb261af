"""One grid process per run directory: an exclusive ``flock`` on ``OUT/.lock``.

``fcntl.flock`` locks belong to the open file and the kernel drops them when the holder exits,
however it exits: a run killed with SIGKILL leaves no stale lock behind (only the file, which the
next holder takes over). The holder writes who it is (pid, host, start time) into the file so that
a refused process can name it, and removes the file when it releases the lock, so that a finished
or refused run leaves nothing in the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from resablate.errors import StoreError, StoreLockedError

LOCK_FILENAME = ".lock"


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"  # it holds the lock but has not written its name yet


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class RunLock:
    """Exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release`.

    Use as a context manager. Locks are per open file: a second ``RunLock`` on the same folder
    is refused even inside the same process.

    Args:
        out_dir: The run directory (created if missing).
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLockedError` naming the holder (``StoreError``
        when the lock file cannot be created at all)."""
        fd = self._open()
        # The releasing holder removes the file: a lock taken on a file that is no longer (or
        # no longer the one) at the path is void; take the one there now.
        while not _is_at(fd, self.path):
            os.close(fd)
            fd = self._open()
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def _open(self) -> int:
        """Open the lock file (created if missing) and lock it, or raise naming the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only place, a file where the folder should be, ...
            raise StoreError(
                f"cannot lock {self.path}: {(exc.strerror or str(exc)).lower()}", field="out_dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise StoreLockedError(
                f"{self.path.parent} is in use by {holder} (lock {self.path}); wait for that "
                "grid to finish or choose another output folder",
                field="out_dir",
            ) from None
        return fd

    def release(self) -> None:
        """Drop the lock and remove its file (idempotent)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then sees it is void
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
