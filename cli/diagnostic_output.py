"""Shared by the diagnostic commands (lesion, gradflow, compare-features): option lists, output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resablate_cli import console


def split_names(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated option values as one list (``None`` when not given)."""
    names = [v.strip() for value in values or () for v in value.split(",") if v.strip()]
    return names or None


def show(result: Any, *, as_json: bool, figure: Path | None, notes: tuple[str, ...] = ()) -> None:
    """Print ``result`` (rich, or JSON on stdout); on stderr, ``notes`` and the figure written."""
    for note in notes:
        console.err.print(f"warning: {note}", markup=False, highlight=False)
    if as_json:
        console.print_json(result.to_dict())
    else:
        console.out.print(result)
    if figure is not None:
        console.err.print(f"wrote {figure}")
