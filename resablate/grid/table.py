"""The results table in the papers' shape: rows = depth, columns = residual × pretrained.

Built from store rows (:class:`~resablate.grid.store.CellRow`) as plain records; rendering is
separate (``__rich__`` here, other formats in ``resablate.report``). Cells that differ only in
seed are averaged (mean of the done ones; ``n`` says how many).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resablate.choices import DEFAULT_METRIC, METRICS, CellStatus
from resablate.grid.store import CellRow
from resablate.residual_plan import ResidualPlan
from resablate.weights_choice import WeightsChoice


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
    def of(cls, row: CellRow) -> TableColumn:
        """The column of a cell."""
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


def _summarise(rows: list[CellRow], metric: str) -> TableEntry:
    if not rows:
        return TableEntry(None, 0, None, ())
    done = [
        getattr(r, metric)
        for r in rows
        if r.status == CellStatus.DONE and getattr(r, metric) is not None
    ]
    ids = tuple(r.cell_id for r in rows)
    if done:
        return TableEntry(sum(done) / len(done), len(done), CellStatus.DONE, ids)
    status = next(s for s in _STATUS_ORDER if any(r.status == s for r in rows))
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


def results_table(rows: Sequence[CellRow], metric: str = DEFAULT_METRIC) -> ResultsTable:
    """Arrange store rows into the papers' table.

    Args:
        rows: Cells of a grid (e.g. ``ResultStore.cells()``), in grid order.
        metric: One of :data:`~resablate.choices.METRICS`.

    Raises:
        ConfigError: Unknown metric.
    """
    from resablate.errors import ConfigError

    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    columns = tuple(dict.fromkeys(TableColumn.of(r) for r in rows))
    several_plans = len({r.cell.freeze for r in rows}) > 1
    groups: dict[tuple[str, str, str], list[CellRow]] = {}
    for row in rows:
        groups.setdefault((row.cell.arch, row.cell.source, row.cell.freeze), []).append(row)
    table_rows = []
    for members in groups.values():
        first = members[0]
        label = arch_label(first) + (f" · freeze {first.cell.freeze}" if several_plans else "")
        reference = [m for m in members if m.cell.residual.is_on and m.params is not None]
        counted = reference or [m for m in members if m.params is not None]
        entries = tuple(
            _summarise(
                [m for m in members if TableColumn.of(m) == column],
                metric,
            )
            for column in columns
        )
        table_rows.append(
            TableRow(
                label=label,
                arch=first.cell.arch,
                depth=first.depth,
                freeze=first.cell.freeze,
                params=counted[0].params if counted else None,
                flops=reference[0].flops if reference else None,
                entries=entries,
            )
        )
    return ResultsTable(metric=metric, columns=columns, rows=tuple(table_rows))
