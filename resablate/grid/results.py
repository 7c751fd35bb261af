"""A grid's results read once: one tidy table, one row per cell × split.

Every view of a grid's results (the grid's own summary table, the report's tables, figures and
statistics, :func:`resablate.report.load`'s DataFrame) is built from the :class:`GridResults`
that :func:`read_results` reads from the store in one pass, never from the store again.

Rows: a cell's ``test`` row holds its final test evaluation (the metrics the store records for
the cell; a cell without a result has a ``test`` row with no metrics, so that every cell is in
the table); each other split of its evaluation history (``train``, ``val``) has one row with
that split's last evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.choices import METRICS, CellStatus
from resablate.grid.store import CellRow, EvaluationRow, PredictionRow

if TYPE_CHECKING:
    from resablate.grid.cell import Cell
    from resablate.grid.store import ResultStore

#: The split whose evaluation is a cell's result (the one every table shows).
FINAL_SPLIT = "test"
# Cell fields that are not configuration, in the order a tidy record lists them after it.
_OUTCOME_FIELDS = (
    "status",
    "reason",
    "params",
    "active_params",
    "flops",
    "steps",
    "train_seconds",
    "images_per_second",
    "device",
    "run_dir",
)


@dataclass(frozen=True)
class ResultRow:
    """One cell on one split.

    Attributes:
        cell_row: The cell as stored (the cell, its status, counts, timings, environment).
        split: ``"test"`` (the cell's final evaluation), or another split of its history.
        step: Optimiser step of the evaluation (``test``: the steps the cell took).
        accuracy: Metrics of the evaluation (fractions in [0, 1]); ``loss`` the mean
            cross-entropy in nats; ``None`` when the cell has no result.
    """

    cell_row: CellRow
    split: str
    step: int | None
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    loss: float | None

    @property
    def cell(self) -> Cell:
        """The cell (its configuration)."""
        return self.cell_row.cell

    @property
    def cell_id(self) -> str:
        """The cell's id."""
        return self.cell_row.cell_id

    def metric(self, name: str) -> float | None:
        """The value of one of :data:`~resablate.choices.METRICS`."""
        value: float | None = getattr(self, name)
        return value

    @property
    def done(self) -> bool:
        """Whether the cell finished with a result."""
        return self.cell_row.status == CellStatus.DONE

    @property
    def dataset_fingerprint(self) -> str | None:
        """The fingerprint of the dataset the cell trained on (``None`` until it ran)."""
        value = self.cell_row.environment.get("dataset_fingerprint")
        return None if value is None else str(value)

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of the initial weights file the cell loaded (``None``: random init or not
        run yet)."""
        value = self.cell_row.environment.get("weights_sha256")
        return None if value is None else str(value)

    def to_record(self) -> dict[str, Any]:
        """A flat record: the cell's id and position, every field of its configuration (dicts as
        JSON text), ``depth``, ``split``, ``step``, the metrics, the outcome (status, counts,
        timings, device, run directory) and the two fingerprints."""
        row = self.cell_row
        config = {
            k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
            for k, v in row.cell.to_dict().items()
        }
        return {
            "cell_id": row.cell_id,
            "position": row.position,
            **config,
            "depth": row.depth,
            "split": self.split,
            "step": self.step,
            **{name: self.metric(name) for name in METRICS},
            **{name: getattr(row, name) for name in _OUTCOME_FIELDS},
            "dataset_fingerprint": self.dataset_fingerprint,
            "weights_sha256": self.weights_sha256,
        }


def final_rows(cells: Iterable[CellRow]) -> tuple[ResultRow, ...]:
    """Each cell's ``test`` row, from the metrics the store records for it."""
    return tuple(
        ResultRow(
            cell,
            FINAL_SPLIT,
            cell.steps,
            *(getattr(cell, name) for name in METRICS),
        )
        for cell in cells
    )


def _history_rows(cell: CellRow, history: Sequence[EvaluationRow]) -> list[ResultRow]:
    last: dict[str, EvaluationRow] = {}
    for evaluation in history:
        if evaluation.split is not None and evaluation.split != FINAL_SPLIT:
            last[evaluation.split] = evaluation
    return [
        ResultRow(cell, split, e.step, *(getattr(e, name) for name in METRICS))
        for split, e in last.items()
    ]


@dataclass(frozen=True)
class GridResults:
    """Everything a grid's store holds about its current cells, read in one pass.

    Attributes:
        path: The store read.
        rows: The tidy table: per cell in grid order, its ``test`` row then its other splits.
        spec: The grid spec as stored (``None`` for a store without one).
        status_counts: Cells of the grid by status.
        histories: Each cell's evaluation history, in order, by cell id.
        predictions: Each finished cell's per-sample test predictions, by cell id.
    """

    path: Path
    rows: tuple[ResultRow, ...]
    spec: dict[str, Any] | None
    status_counts: Mapping[CellStatus, int]
    histories: Mapping[str, tuple[EvaluationRow, ...]]
    predictions: Mapping[str, tuple[PredictionRow, ...]]

    @property
    def final(self) -> tuple[ResultRow, ...]:
        """The ``test`` rows: one per cell, in grid order."""
        return tuple(r for r in self.rows if r.split == FINAL_SPLIT)

    @property
    def cells(self) -> tuple[CellRow, ...]:
        """The cells, in grid order."""
        return tuple(r.cell_row for r in self.final)

    def records(self) -> list[dict[str, Any]]:
        """The tidy table as flat records (:meth:`ResultRow.to_record`)."""
        return [row.to_record() for row in self.rows]


def read_results(store: ResultStore) -> GridResults:
    """Read the current grid's cells, histories and predictions from ``store``."""
    cells = store.cells()
    histories = {c.cell_id: tuple(store.evaluations(c.cell_id)) for c in cells}
    rows = [
        row
        for cell, final in zip(cells, final_rows(cells), strict=True)
        for row in (final, *_history_rows(cell, histories[cell.cell_id]))
    ]
    return GridResults(
        path=store.path,
        rows=tuple(rows),
        spec=store.spec(),
        status_counts=store.status_counts(),
        histories=histories,
        predictions={
            c.cell_id: tuple(store.predictions(c.cell_id))
            for c in cells
            if c.status == CellStatus.DONE
        },
    )
