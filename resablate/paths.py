"""Where resablate keeps files that outlive one run: the decode cache and weights.

The root is ``$RESABLATE_CACHE`` when set, else the user cache folder
(``~/.cache/resablate`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path


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
