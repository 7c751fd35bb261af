"""The state of a grid: its cells as stored, counts per status and the results table.

:func:`run_grid` returns a :class:`GridSummary` when it ends; :func:`grid_status` reads one from a
store at any time (read-only; safe while a grid runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from resablate.grid.cell import Cell
from resablate.grid.store import CellRow, ResultStore
from resablate.grid.table import ResultsTable, results_table

#: Statuses of a finished cell that has no result: a grid with any of them is not a success.
NOT_DONE_STATUSES = ("failed", "diverged", "skipped")


@dataclass(frozen=True)
class GridSummary:
    """The state of a grid after a run.

    Attributes:
        out_dir: The run directory.
        cells: Every cell of the grid, as stored, in grid order.
        ran: Ids of the cells this run started, in order.
        counts: Cells per status.
        table: The results table (:func:`~resablate.grid.table.results_table`).
        notes: What the spec changed from what was asked (e.g. demo weights for ImageNet's).
    """

    out_dir: str
    cells: tuple[CellRow, ...]
    ran: tuple[str, ...]
    counts: dict[str, int]
    table: ResultsTable
    notes: tuple[str, ...] = ()

    @property
    def not_done(self) -> tuple[CellRow, ...]:
        """The cells whose run ended without a result: failed, diverged or skipped."""
        return tuple(row for row in self.cells if row.status in NOT_DONE_STATUSES)

    @property
    def complete(self) -> bool:
        """True when no cell is pending or running."""
        return self.counts["pending"] == 0 and self.counts["running"] == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, ran, the cells' result records and the table."""
        return {
            "out_dir": self.out_dir,
            "counts": dict(self.counts),
            "ran": list(self.ran),
            "cells": [row.result_record() for row in self.cells],
            "table": self.table.to_dict(),
            "notes": list(self.notes),
        }

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        counts = ", ".join(
            f"{n} {status}{_ids(self.not_done, status)}" for status, n in self.counts.items() if n
        )
        parts: list[Any] = [self.table]
        for row in self.not_done:
            parts.append(Text(f"{row.status}: {row.cell_id} {_label(row)}: {row.reason}"))
        parts.append(
            Text(f"{len(self.cells)} cells: {counts} · ran {len(self.ran)} now · {self.out_dir}")
        )
        return Group(*parts)


def _ids(rows: tuple[CellRow, ...], status: str) -> str:
    """`` (id, id)``: the ids of ``rows`` with ``status``, or nothing."""
    ids = [row.cell_id for row in rows if row.status == status]
    return f" ({', '.join(ids)})" if ids else ""


def _label(row: CellRow) -> str:
    return Cell.from_dict(row.config).label


def grid_status(out_dir: str | os.PathLike[str], *, metric: str = "f1") -> GridSummary:
    """The state of the grid stored in ``out_dir`` (read-only; safe while a grid runs)."""
    with ResultStore.open(out_dir) as store:
        rows = store.cells()
        return GridSummary(
            out_dir=str(out_dir),
            cells=tuple(rows),
            ran=(),
            counts=store.status_counts(),
            table=results_table(rows, metric),
        )
