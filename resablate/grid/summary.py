"""The state of a grid: its cells as stored, counts per status and the results table.

:func:`run_grid` returns a :class:`GridSummary` when it ends; :func:`grid_status` reads one from a
store at any time (read-only; safe while a grid runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from resablate.choices import DEFAULT_METRIC, PROBLEM_STATUSES, CellStatus
from resablate.grid.results import final_rows
from resablate.grid.store import CellRow, ResultStore
from resablate.grid.table import ResultsTable, results_table


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
        warnings: What went wrong beside the cells, one line each (e.g. an experiment tracker
            that stopped, :attr:`resablate.grid.tracking.GridTracking.problems`).
    """

    out_dir: str
    cells: tuple[CellRow, ...]
    ran: tuple[str, ...]
    counts: dict[CellStatus, int]
    table: ResultsTable
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def not_done(self) -> tuple[CellRow, ...]:
        """The cells whose run ended without a result (:data:`PROBLEM_STATUSES`: failed,
        diverged or skipped): a grid with any of them is not a success."""
        return tuple(row for row in self.cells if row.status in PROBLEM_STATUSES)

    @property
    def complete(self) -> bool:
        """True when no cell is pending or running."""
        return self.counts[CellStatus.PENDING] == 0 and self.counts[CellStatus.RUNNING] == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, ran, the cells' result records and the table."""
        return {
            "out_dir": self.out_dir,
            "counts": dict(self.counts),
            "ran": list(self.ran),
            "cells": [row.result_record() for row in self.cells],
            "table": self.table.to_dict(),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def with_warnings(self, *lines: str) -> GridSummary:
        """This summary with ``lines`` added to its warnings."""
        return replace(self, warnings=(*self.warnings, *lines))

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        counts = ", ".join(
            f"{n} {status}{_ids(self.not_done, status)}" for status, n in self.counts.items() if n
        )
        parts: list[Any] = [self.table]
        for row in self.not_done:
            parts.append(Text(f"{row.status}: {row.cell_id} {row.cell.label}: {row.reason}"))
        parts.extend(Text(f"warning: {line}") for line in self.warnings)
        parts.append(
            Text(f"{len(self.cells)} cells: {counts} · ran {len(self.ran)} now · {self.out_dir}")
        )
        return Group(*parts)


def _ids(rows: tuple[CellRow, ...], status: str) -> str:
    """`` (id, id)``: the ids of ``rows`` with ``status``, or nothing."""
    ids = [row.cell_id for row in rows if row.status == status]
    return f" ({', '.join(ids)})" if ids else ""


def grid_status(out_dir: str | os.PathLike[str], *, metric: str = DEFAULT_METRIC) -> GridSummary:
    """The state of the grid stored in ``out_dir`` (read-only; safe while a grid runs)."""
    with ResultStore.open(out_dir) as store:
        rows = store.cells()
        return GridSummary(
            out_dir=str(out_dir),
            cells=tuple(rows),
            ran=(),
            counts=store.status_counts(),
            table=results_table(final_rows(rows), metric),
        )
