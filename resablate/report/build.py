"""Build a report from a grid's run directory: its tables, spec, environment and problems.

The store is read once (:func:`resablate.grid.results.read_results`); the tables, the figures
(:mod:`resablate.report.figure_data`) and the statistics are views of what was read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.choices import CellStatus
from resablate.errors import ConfigError, DataError
from resablate.grid.results import GridResults, read_results
from resablate.report.published import STUDIES, PublishedStudy, published
from resablate.report.tables import (
    METRICS,
    ModelTable,
    PivotTable,
    ProblemTable,
    Tabular,
    ablation_table,
    freeze_table,
    model_table,
    problem_table,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

    from resablate.grid.store import CellRow, ResultStore


@dataclass(frozen=True)
class Report:
    """Everything a report shows except the figures (see :mod:`resablate.report.output`).

    Attributes:
        results: What was read from the store: the tidy table, histories and predictions.
        metric: The metric of the ablation table.
        compare: The published study compared with, if any.
        ablation: CIFAKE-shaped table (``None`` when no unfrozen cell exists).
        freeze: Food-5K-shaped table (``None`` when the grid froze nothing).
        models: Size, cost, metrics and speed per configuration.
        problems: Cells without a result, with reasons.
        environment: Environment fields shared by every finished cell (versions, device, ...).
    """

    results: GridResults
    metric: str
    compare: str | None
    ablation: PivotTable | None
    freeze: PivotTable | None
    models: ModelTable
    problems: ProblemTable
    environment: dict[str, Any]

    @property
    def store_path(self) -> Path:
        """The results store read."""
        return self.results.path

    @property
    def out_dir(self) -> Path:
        """The grid's run directory."""
        return self.results.path.parent

    @property
    def cells(self) -> tuple[CellRow, ...]:
        """Every cell row of the current grid, in grid order."""
        return self.results.cells

    @property
    def status_counts(self) -> dict[CellStatus, int]:
        """Cells of the grid by status."""
        return dict(self.results.status_counts)

    @property
    def spec(self) -> dict[str, Any] | None:
        """The grid spec as stored (``None`` for a store without one)."""
        return self.results.spec

    @property
    def published(self) -> PublishedStudy | None:
        """The compared study's published tables."""
        return None if self.compare is None else published(self.compare)

    def tables(self) -> list[Tabular]:
        """The tables in display order (absent ones left out)."""
        found: list[Tabular | None] = [self.ablation, self.freeze, self.models, self.problems]
        return [t for t in found if t is not None]

    @property
    def summary(self) -> str:
        """``"12 cells: 10 done, 1 failed, 1 pending"``."""
        order = sorted(self.status_counts, key=lambda status: status != CellStatus.DONE)
        parts = [f"{self.status_counts[s]} {s}" for s in order if self.status_counts[s]]
        return f"{sum(self.status_counts.values())} cells: {', '.join(parts) or 'none'}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready report (tables as records)."""
        return {
            "out_dir": str(self.out_dir),
            "store": str(self.store_path),
            "metric": self.metric,
            "compare": self.compare,
            "summary": self.summary,
            "status_counts": dict(self.status_counts),
            "ablation": None if self.ablation is None else self.ablation.to_dict(),
            "freeze": None if self.freeze is None else self.freeze.to_dict(),
            "models": self.models.to_dict(),
            "problems": self.problems.to_dict(),
            "spec": self.spec,
            "environment": self.environment,
            "published": None if self.published is None else self.published.to_dict(),
        }

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        parts: list[Any] = [Text(f"{self.out_dir} · {self.summary}", style="bold")]
        for table in self.tables():
            if table is self.problems and not self.problems.problems:
                parts += [Text(""), Text("Every cell of the grid finished.")]
            else:
                parts += [Text(""), table]
        return Group(*parts)


def common_environment(rows: Sequence[CellRow]) -> dict[str, Any]:
    """Environment fields with the same value in every finished cell (the rest vary per cell)."""
    envs = [r.environment for r in rows if r.status == CellStatus.DONE and r.environment]
    if not envs:
        return {}
    keys = set(envs[0]).intersection(*envs[1:])
    return {k: envs[0][k] for k in sorted(keys) if all(e[k] == envs[0][k] for e in envs)}


def open_store(out_dir: str | os.PathLike[str]) -> ResultStore:
    """Open the store of a grid run directory read-only (``StoreError`` naming the problem)."""
    from resablate.errors import StoreError
    from resablate.grid.store import STORE_FILENAME, ResultStore

    folder = Path(out_dir).expanduser()
    if not folder.exists():
        raise StoreError(f"{folder} does not exist (expected a grid run directory)")
    target = folder / STORE_FILENAME if folder.is_dir() else folder
    if not target.is_file():
        raise StoreError(
            f"no results store in {folder} (expected {STORE_FILENAME}; run a grid into that "
            "folder first)"
        )
    return ResultStore.open(target)


#: How many characters of a dataset fingerprint a message shows.
FINGERPRINT_SHOWN = 12


def check_one_dataset(results: GridResults) -> None:
    """Refuse finished cells of the same dataset path that trained on different contents.

    A dataset's files can change under the same path between runs of a grid; its cells then
    differ in their recorded ``dataset_fingerprint`` and must not be pooled or compared.

    Raises:
        DataError: Naming the dataset path and, per fingerprint, its cells.
    """
    by_data: dict[str, dict[str, list[str]]] = {}
    for row in results.final:
        if row.done and row.dataset_fingerprint is not None:
            found = by_data.setdefault(row.cell.data, {})
            found.setdefault(row.dataset_fingerprint, []).append(row.cell_row.cell_id)
    for data, found in by_data.items():
        if len(found) > 1:
            parts = [
                f"{fingerprint[:FINGERPRINT_SHOWN]} (cells {', '.join(cells)})"
                for fingerprint, cells in found.items()
            ]
            raise DataError(
                f"the cells of dataset {data} trained on different contents (dataset "
                f"fingerprints {'; '.join(parts)}): the report does not pool them; rerun the "
                "cells on one version of the data, or allow_mixed_data to report them anyway",
                field="allow_mixed_data",
            )


def build_report(
    out_dir: str | os.PathLike[str],
    *,
    metric: str = "f1",
    compare: str | None = None,
    allow_mixed_data: bool = False,
) -> Report:
    """Read a grid's store and build its tables.

    Args:
        out_dir: The grid's run directory (or its ``store.sqlite``).
        metric: The ablation table's metric: one of :data:`resablate.report.tables.METRICS`.
        compare: ``"cifake"`` or ``"food5k"`` to place that study's published numbers beside the
            measured ones.
        allow_mixed_data: Report cells of one dataset path whose recorded dataset fingerprints
            differ (refused by default: :func:`check_one_dataset`).

    Raises:
        ConfigError: Unknown metric or study.
        DataError: Cells of one dataset path trained on different contents (unless allowed).
        StoreError: No store, not a store, or a store from a newer format.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if compare is not None and compare not in STUDIES:
        raise ConfigError(f"unknown study {compare!r}; published studies: {', '.join(STUDIES)}")
    with open_store(out_dir) as store:
        results = read_results(store)
    if not allow_mixed_data:
        check_one_dataset(results)
    study = None if compare is None else published(compare)
    final = results.final
    return Report(
        results=results,
        metric=metric,
        compare=compare,
        ablation=ablation_table(final, results.predictions, metric=metric, published=study),
        freeze=freeze_table(final, results.predictions, published=study),
        models=model_table(final, published=study),
        problems=problem_table(final),
        environment=common_environment(results.cells),
    )
