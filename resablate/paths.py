"""Where resablate keeps files that outlive one run (the decode cache and weights), and the
check every output folder passes before any work starts.

The cache root is ``$RESABLATE_CACHE`` when set, else the user cache folder
(``~/.cache/resablate`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

from resablate.errors import ConfigError


def cache_root() -> Path:
    """The root folder of resablate's caches (not created)."""
    env = os.environ.get("RESABLATE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("resablate", appauthor=False))


def cache_dir(*parts: str) -> Path:
    """A sub-folder of :func:`cache_root`, created if missing."""
    folder = cache_root().joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``path`` as a folder resablate can write into, or say in one line why it cannot be.

    Called before any work (decoding, building, training), so that a mistyped ``--out`` costs
    nothing.

    Args:
        path: The folder (created with its parents when missing).
        what: What the folder is, for the message (e.g. ``"run directory"``).

    Returns:
        The folder.

    Raises:
        ConfigError: ``path`` is a file, lies below a file, or cannot be created or written
            (read-only file system, no permission); the message names the folder and the cause.
    """
    folder = Path(path).expanduser()
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            break
        if parent.exists() or parent.is_symlink():
            if parent == folder:
                raise ConfigError(f"{what} {folder} is a file, not a folder")
            raise ConfigError(f"{what} {folder} cannot be created: {parent} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {folder}: {exc.strerror.lower()}") from None
    # access(2) reports a read-only file system (EROFS) even to root.
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_mount(folder) else "permission denied"
        raise ConfigError(f"cannot write to {what} {folder}: {reason}")
    return folder


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
