"""Figure plumbing shared by the diagnostics: a headless pyplot and atomic PNG writes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from resablate.atomic import write_bytes


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically, close it, and return the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    target = Path(path)
    write_bytes(target, buffer.getvalue())
    return target
