"""Where resablate keeps files that outlive one run (the decode cache and weights), and the
check every output folder passes before any work starts.

The cache root is ``$RESABLATE_CACHE`` when set, else the user cache folder: on Linux and other
Unix systems ``$XDG_CACHE_HOME/resablate`` (``~/.cache/resablate`` when that is unset or blank, as
the XDG Base Directory specification says), on macOS ``~/Library/Caches/resablate``, on Windows
``%LOCALAPPDATA%\\resablate\\Cache``: the folders ``platformdirs.user_cache_dir("resablate",
appauthor=False)`` names, without depending on it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from resablate.errors import ConfigError


def cache_root() -> Path:
    """The root folder of resablate's caches (not created)."""
    env = os.environ.get("RESABLATE_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "").strip()
        return Path(local or Path.home() / "AppData" / "Local") / "resablate" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "resablate"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "resablate"


def cache_dir(*parts: str) -> Path:
    """A sub-folder of :func:`cache_root`, created if missing."""
    folder = cache_root().joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Check that resablate can create and write the folder ``path``, creating nothing.

    Called before any work (decoding, building, training), so that a mistyped ``--out`` costs
    nothing and a failed run leaves no empty folder behind; the writers create the folder.

    Args:
        path: The folder (it and its parents may be missing).
        what: What the folder is, for the message (e.g. ``"run directory"``).

    Returns:
        The folder.

    Raises:
        ConfigError: ``path`` is empty, is a file, lies below a file, has a name longer than
            the file system allows, or its nearest existing folder cannot be written (read-only
            file system, no permission); the message names the folder and the cause.
    """
    if not os.fspath(path).strip():
        raise ConfigError(f"{what} is an empty path; name a folder (e.g. runs/study)")
    folder = Path(path).expanduser()
    existing = next(p for p in (folder, *folder.parents) if _exists(p))
    if not existing.is_dir():
        if existing == folder:
            kind = "a file" if existing.is_file() else "a broken link or a special file"
            raise ConfigError(f"{what} {folder} is {kind}, not a folder")
        raise ConfigError(f"{what} {folder} cannot be created: {existing} is not a folder")
    _check_name_lengths(folder, existing, what)
    # access(2) reports a read-only file system (EROFS) even to root.
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_mount(existing) else "permission denied"
        verb = "write to" if existing == folder else "create"
        raise ConfigError(f"cannot {verb} {what} {folder}: {reason}")
    return folder


def _exists(path: Path) -> bool:
    try:
        return path.exists() or path.is_symlink()
    except OSError:  # a name too long to look up does not exist (and is named just after)
        return False


def _check_name_lengths(folder: Path, existing: Path, what: str) -> None:
    """Refuse names that the file system in ``existing`` cannot hold (``ENAMETOOLONG``)."""
    name_max = os.pathconf(existing, "PC_NAME_MAX")
    parent = existing
    for part in folder.relative_to(existing).parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise ConfigError(
                f"{what} {parent / (part[:16] + '…')} cannot be created: its name is {size} "
                f"bytes long, longer than the {name_max} bytes the file system allows"
            )
        parent /= part
    path_max = os.pathconf(existing, "PC_PATH_MAX")
    size = len(os.fsencode(folder.absolute()))
    if size >= path_max:
        raise ConfigError(
            f"{what} {folder} cannot be created: its path is {size} bytes long, the file "
            f"system allows less than {path_max}"
        )


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
