"""The one pivot of a grid's results, and the results table in the papers' shape.

:func:`pivot` lays result rows (:class:`~resablate.grid.results.ResultRow`) out by a row key and
a column key; every table of a grid is such a layout: the results table here (rows = depth,
columns = residual × pretrained; :func:`results_pivot`) and the report's tables
(``resablate.report.tables``), which add intervals, paired tests and published numbers to the
same slots. Tables are plain records; rendering is separate (``__rich__`` here, other formats in
``resablate.report``). In the results table, cells that differ only in seed are averaged (mean
of the done ones; ``n`` says how many).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from resablate.choices import DEFAULT_METRIC, METRICS, CellStatus
from resablate.grid.results import ResultRow
from resablate.grid.store import CellRow
from resablate.residual_plan import ResidualPlan
from resablate.weights_choice import WeightsChoice

R = TypeVar("R", bound=Hashable)
C = TypeVar("C", bound=Hashable)


def arch_label(row: CellRow) -> str:
    """``"ResNet-50"`` for ResNets (the CIFAR ResNets too: ``"ResNet-56"``, He et al.'s name),
    else the architecture (plus its source unless torchvision)."""
    name = (
        f"ResNet-{row.depth}"
        if row.depth is not None and row.cell.arch.startswith(("resnet", "cifar_resnet"))
        else row.cell.arch
    )
    return name if row.cell.source == "torchvision" else f"{name} ({row.cell.source})"


@dataclass(frozen=True)
class TableColumn:
    """One column: a residual plan (with its shortcut scale) and a weights choice."""

    residual: ResidualPlan
    weights: WeightsChoice

    @classmethod
    def of(cls, row: ResultRow) -> TableColumn:
        """The column a result row belongs in."""
        return cls(row.cell.residual, row.cell.weights)

    @property
    def label(self) -> str:
        """``"residual off · weights none"``."""
        return f"residual {self.residual.label} · weights {self.weights.label}"


@dataclass(frozen=True)
class TableEntry:
    """A table cell: the metric's mean over the done seeds, or why there is none.

    Attributes:
        value: Mean of the metric over done cells (``None`` when none is done).
        n: How many cells (seeds) are done.
        status: ``"done"`` when ``n > 0``, else the most advanced status of the cells
            (``diverged``, ``failed``, ``skipped``, ``running`` or ``pending``); ``None`` when the
            grid has no such cell.
        cell_ids: The cells averaged.
    """

    value: float | None
    n: int
    status: CellStatus | None
    cell_ids: tuple[str, ...]


@dataclass(frozen=True)
class TableRow:
    """One row: an architecture (a depth) and freeze plan.

    Attributes:
        label: ``"ResNet-50"`` (plus `` · freeze conv1-2`` when the grid has several plans).
        arch: Architecture name.
        depth: ResNet depth (``None`` for baselines).
        freeze: Freeze plan.
        params: Parameters of the unaltered model (``None`` when not counted yet).
        flops: FLOPs of the unaltered model (fvcore multiply-adds, batch 1, the cell's image size).
        entries: One per column of the table.
    """

    label: str
    arch: str
    depth: int | None
    freeze: str
    params: int | None
    flops: int | None
    entries: tuple[TableEntry, ...]


_STATUS_ORDER = (
    CellStatus.DIVERGED,
    CellStatus.FAILED,
    CellStatus.SKIPPED,
    CellStatus.RUNNING,
    CellStatus.PENDING,
)


@dataclass(frozen=True)
class Pivot(Generic[R, C]):
    """Result rows laid out by a row key and a column key.

    Attributes:
        rows: The row keys, in order.
        columns: The column keys, in order.
        slots: The result rows of each filled (row key, column key), in input order; a slot
            without rows is absent.
        by_row: Every result row of each row key, in input order.
    """

    rows: tuple[R, ...]
    columns: tuple[C, ...]
    slots: Mapping[tuple[R, C], tuple[ResultRow, ...]]
    by_row: Mapping[R, tuple[ResultRow, ...]]

    def slot(self, row: R, column: C) -> tuple[ResultRow, ...]:
        """The result rows at (row, column), ``()`` when none."""
        return self.slots.get((row, column), ())


def pivot(
    rows: Sequence[ResultRow],
    row_key: Callable[[ResultRow], R],
    column_key: Callable[[ResultRow], C],
    *,
    row_order: Callable[[R], Any] | None = None,
    column_order: Callable[[C], Any] | None = None,
) -> Pivot[R, C]:
    """Lay ``rows`` out by ``row_key`` × ``column_key``.

    Keys come in first-seen order, or sorted by ``row_order`` / ``column_order`` when given.
    """
    slots: dict[tuple[R, C], list[ResultRow]] = {}
    by_row: dict[R, list[ResultRow]] = {}
    for row in rows:
        key = row_key(row)
        slots.setdefault((key, column_key(row)), []).append(row)
        by_row.setdefault(key, []).append(row)
    row_keys = list(by_row)
    column_keys = list(dict.fromkeys(c for _, c in slots))
    if row_order is not None:
        row_keys.sort(key=row_order)
    if column_order is not None:
        column_keys.sort(key=column_order)
    return Pivot(
        rows=tuple(row_keys),
        columns=tuple(column_keys),
        slots={key: tuple(members) for key, members in slots.items()},
        by_row={key: tuple(members) for key, members in by_row.items()},
    )


#: A row of the results layout: architecture, source and freeze plan.
ModelKey = tuple[str, str, str]


def results_pivot(rows: Sequence[ResultRow]) -> Pivot[ModelKey, TableColumn]:
    """The papers' layout: rows (architecture, source, freeze plan), columns residual ×
    weights, both in grid order."""
    return pivot(rows, lambda r: (r.cell.arch, r.cell.source, r.cell.freeze), TableColumn.of)


def row_labels(layout: Pivot[ModelKey, TableColumn]) -> tuple[str, ...]:
    """The label of each row of :func:`results_pivot`: ``"ResNet-50"``, plus
    `` · freeze conv1-2`` when the layout has several freeze plans."""
    several_plans = len({freeze for _, _, freeze in layout.rows}) > 1
    return tuple(
        arch_label(layout.by_row[key][0].cell_row)
        + (f" · freeze {key[2]}" if several_plans else "")
        for key in layout.rows
    )


def _summarise(rows: Sequence[ResultRow], metric: str) -> TableEntry:
    if not rows:
        return TableEntry(None, 0, None, ())
    done = [v for r in rows if r.done and (v := r.metric(metric)) is not None]
    ids = tuple(r.cell_row.cell_id for r in rows)
    if done:
        return TableEntry(sum(done) / len(done), len(done), CellStatus.DONE, ids)
    status = next(s for s in _STATUS_ORDER if any(r.cell_row.status == s for r in rows))
    return TableEntry(None, 0, status, ids)


@dataclass(frozen=True)
class ResultsTable:
    """The papers' table: rows = architecture (depth), columns = residual × pretrained.

    Attributes:
        metric: The metric shown (``accuracy``, ``precision``, ``recall``, ``f1`` or ``loss``).
        columns: The columns, in grid order.
        rows: The rows, in grid order (depths, then baselines).
    """

    metric: str
    columns: tuple[TableColumn, ...]
    rows: tuple[TableRow, ...]

    def records(self) -> list[dict[str, Any]]:
        """One flat record per row: ``label, arch, depth, freeze, params, flops`` and one key per
        column label holding the value (``None`` when there is none)."""
        records = []
        for row in self.rows:
            record: dict[str, Any] = {
                "label": row.label,
                "arch": row.arch,
                "depth": row.depth,
                "freeze": row.freeze,
                "params": row.params,
                "flops": row.flops,
            }
            for column, entry in zip(self.columns, row.entries, strict=True):
                record[column.label] = entry.value
            records.append(record)
        return records

    def to_dict(self) -> dict[str, Any]:
        """Metric, column labels and the records of :meth:`records`."""
        return {
            "metric": self.metric,
            "columns": [column.label for column in self.columns],
            "rows": self.records(),
        }

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.metric} by depth × residual × pretrained", title_justify="left")
        table.add_column("model")
        for column in self.columns:
            table.add_column(column.label.replace(" · ", "\n"), justify="right")
        table.add_column("params (M)", justify="right")
        table.add_column("GFLOPs", justify="right")
        for row in self.rows:
            cells = []
            for entry in row.entries:
                if entry.value is not None:
                    seeds = f" (n={entry.n})" if entry.n > 1 else ""
                    cells.append(f"{entry.value:.3f}{seeds}")
                else:
                    cells.append(f"[dim]{entry.status or '—'}[/]")
            params = "—" if row.params is None else f"{row.params / 1e6:.1f}"
            flops = "—" if row.flops is None else f"{row.flops / 1e9:.3g}"
            table.add_row(row.label, *cells, params, flops)
        return table


def results_table(rows: Sequence[ResultRow], metric: str = DEFAULT_METRIC) -> ResultsTable:
    """Arrange the cells' final results into the papers' table (:func:`results_pivot`).

    Args:
        rows: The cells' ``test`` rows in grid order (``GridResults.final``, or
            :func:`~resablate.grid.results.final_rows` of ``ResultStore.cells()``).
        metric: One of :data:`~resablate.choices.METRICS`.

    Raises:
        ConfigError: Unknown metric.
    """
    from resablate.errors import ConfigError

    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    layout = results_pivot(rows)
    table_rows = []
    for key, label in zip(layout.rows, row_labels(layout), strict=True):
        members = [m.cell_row for m in layout.by_row[key]]
        reference = [m for m in members if m.cell.residual.is_on and m.params is not None]
        counted = reference or [m for m in members if m.params is not None]
        first = members[0]
        table_rows.append(
            TableRow(
                label=label,
                arch=first.cell.arch,
                depth=first.depth,
                freeze=first.cell.freeze,
                params=counted[0].params if counted else None,
                flops=reference[0].flops if reference else None,
                entries=tuple(_summarise(layout.slot(key, c), metric) for c in layout.columns),
            )
        )
    return ResultsTable(metric=metric, columns=layout.columns, rows=tuple(table_rows))
