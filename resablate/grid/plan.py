"""A grid's dry run: every cell listed with its stored status, counted, and its training time
estimated.

Nothing trains and nothing is written: no store, no lock, no folder (an existing store is read
for the cells' statuses). The run's pre-flight checks run as the run runs them: the data is scanned
and every cell's weights resolved (:func:`resablate.grid.job.preflight`), so a cell that would be
skipped or fail says so here. Each distinct model of the grid (architecture × residual plan ×
freeze plan) is built once with random weights (the weights spec changes neither counts nor
speed), counted at the recipe's input size, and timed for a few of the engine's own training steps
(:func:`resablate.engine.loop.time_steps`) within :data:`PROBE_SECONDS` for the whole grid; a
cell's estimate is its planned steps × the median step, plus its evaluations (a forward pass per
image, a third of a training step's time per image) and the time it took here to build and count
its model. The probe measures the machine as loaded when it runs.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.choices import CellStatus
from resablate.grid.cell import Cell
from resablate.grid.job import apply_ablation
from resablate.grid.runner import (
    check_data,
    check_fingerprint,
    check_run_options,
    preflight_outcomes,
)
from resablate.grid.spec import GridSpec
from resablate.grid.store import STORE_FILENAME, ResultStore, check_store_file
from resablate.recipes import Recipe

if TYPE_CHECKING:
    from resablate.data import DatasetScan


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a dry run.

    Attributes:
        cell_id: The cell's id.
        label: Its short label.
        status: Its status in the store (``done`` cells would not run again), or the status the
            pre-flight checks give it (``skipped``, ``failed``).
        reason: Why it would be skipped or fail (``None`` otherwise).
        params: Parameters of the built model (head sized for the dataset's classes).
        active_params: Parameters its forward pass uses (after residual surgery).
        flops: Multiply-adds of one forward pass at batch 1 and the recipe's image size (fvcore).
        steps: Optimiser steps the recipe plans on this dataset.
        seconds_per_step: Measured seconds of one optimiser step (``None`` without a probe).
        estimated_seconds: Seconds the cell would take: its steps × ``seconds_per_step``, its
            evaluations and building its model (``None`` without a probe; 0 when it would not
            train).
    """

    cell_id: str
    label: str
    status: CellStatus
    reason: str | None
    params: int
    active_params: int
    flops: int
    steps: int
    seconds_per_step: float | None
    estimated_seconds: float | None


@dataclass(frozen=True)
class GridPlan:
    """The materialised grid of a dry run.

    Attributes:
        out_dir: The run directory the grid would run in.
        cells: The cells in grid order.
        device: Device the probe ran on.
        train_images: Training images in the dataset.
        notes: What the spec changed from what was asked.
    """

    out_dir: str
    cells: tuple[PlannedCell, ...]
    device: str
    train_images: int
    notes: tuple[str, ...]
    probe_seconds: float = 0.0

    @property
    def estimated_seconds(self) -> float | None:
        """Estimated training time of the cells that would run (not ``done``/``diverged``)."""
        todo = [c for c in self.cells if c.status in (CellStatus.PENDING, CellStatus.RUNNING)]
        if any(c.estimated_seconds is None for c in todo):
            return None
        return sum(c.estimated_seconds or 0.0 for c in todo)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        return {
            "out_dir": self.out_dir,
            "device": self.device,
            "train_images": self.train_images,
            "estimated_seconds": self.estimated_seconds,
            "probe_seconds": self.probe_seconds,
            "notes": list(self.notes),
            "cells": [asdict(c) for c in self.cells],
        }

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title=f"{len(self.cells)} cells (dry run: nothing trained)", title_justify="left"
        )
        table.add_column("id", no_wrap=True)
        table.add_column("cell")
        table.add_column("status")
        for name in ("params (M)", "GFLOPs", "steps", "estimate"):
            table.add_column(name, justify="right")
        for c in self.cells:
            table.add_row(
                c.cell_id,
                c.label,
                c.status if c.reason is None else f"{c.status}: {c.reason}",
                f"{c.params / 1e6:.1f}",
                f"{c.flops / 1e9:.3f}",
                str(c.steps),
                "—" if c.estimated_seconds is None else format_seconds(c.estimated_seconds),
            )
        total = self.estimated_seconds
        footer = (
            f"estimated training time on {self.device}: "
            f"{'—' if total is None else format_seconds(total)} "
            f"({self.train_images} training images; evaluations included; probed "
            f"{format_seconds(self.probe_seconds)}) · {self.out_dir}"
        )
        return Group(*(Text(n) for n in self.notes), table, Text(footer))


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 20 s"`` or ``"2 h 05 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _model(cell: Cell, num_classes: int) -> Any:
    """The cell's model with random weights, residual plan and freeze plan applied."""
    from resablate.weights import build_model

    model = build_model(cell.arch, weights=None, num_classes=num_classes, source=cell.source)
    apply_ablation(model, cell)
    return model


PROBE_SECONDS = 30.0
"""Wall time the dry run spends timing training steps, for all the grid's distinct models."""


def _seconds_per_step(
    model: Any, recipe: Recipe, num_classes: int, device: Any, steps: int, budget: float
) -> float:
    """The median of the engine's own timed steps (the median: other work on a shared machine
    inflates single steps)."""
    from resablate.engine.loop import time_steps

    times = time_steps(
        model, recipe, num_classes=num_classes, device=device, steps=steps, budget_seconds=budget
    )
    return statistics.median(times)


def _stored_statuses(spec: GridSpec, out_dir: Path, dataset: DatasetScan) -> dict[str, CellStatus]:
    """The statuses an earlier run left in ``out_dir``'s store (read-only; none without one),
    after the checks the run would make: an empty store, a dataset changed since."""
    check_store_file(out_dir)
    if not (out_dir / STORE_FILENAME).is_file():
        return {}
    with ResultStore.open(out_dir) as store:
        rows = store.cells(include_dropped=True)
    check_fingerprint(rows, spec.data, dataset)
    return {row.cell_id: row.status for row in rows}


def plan_grid(
    spec: GridSpec,
    out_dir: str | os.PathLike[str],
    *,
    device: str | None = None,
    probe_steps: int = 3,
    pack: str | int = "auto",
    workers: int | None = None,
) -> GridPlan:
    """Dry run: list every cell with its status, count each model and estimate its training
    time. Writes nothing (no store, no lock, no folder).

    Args:
        spec: The grid.
        out_dir: The run directory the grid would run in (its store, if any, is only read).
        device: Device of the timing probe (``None`` = CUDA when visible, else CPU).
        probe_steps: Timed optimiser steps per distinct model; 0 skips the probe (no estimate).
        pack: The run's ``pack`` option, checked as :func:`~resablate.grid.runner.run_grid`
            checks it.
        workers: The run's ``workers`` option, checked likewise.

    Returns:
        The plan: each cell ``pending`` unless an earlier run in ``out_dir`` finished it.

    Raises:
        ConfigError: An invalid ``pack`` or ``workers``, an unusable ``out_dir``, or a recipe
            that does not fit the dataset.
        DataError: The dataset cannot be used, or changed since cells of the store were
            trained on it.
        StoreError: The store in ``out_dir`` is empty, foreign or newer.
    """
    from resablate.counting import count
    from resablate.engine.environment import device_name, resolve_device
    from resablate.engine.loop import StepPlan
    from resablate.paths import output_dir

    check_run_options(pack, workers)
    out = output_dir(out_dir)
    target = resolve_device(device or "auto")
    dataset = check_data(spec)
    statuses = _stored_statuses(spec, out, dataset)
    train_images = len(dataset.splits["train"])
    eval_images = sum(len(dataset.splits[s]) for s in ("val", "test") if s in dataset.splits)
    num_classes = len(dataset.classes)
    cells = spec.cells()
    problems = {o.cell_id: o for o in preflight_outcomes(cells, num_classes, str(target))}
    keys = {_model_key(cell) for cell in cells if cell.cell_id not in problems}
    budget = PROBE_SECONDS / max(1, len(keys))
    probe_start = time.perf_counter()
    measured: dict[tuple[Any, ...], tuple[Any, float | None, float]] = {}
    planned = []
    for cell in cells:
        recipe = cell.effective_recipe
        key = _model_key(cell)
        if key not in measured:
            start = time.perf_counter()
            model = _model(cell, num_classes)
            counts = count(model, (3, recipe.image_size, recipe.image_size))
            build = time.perf_counter() - start
            per_step = None
            if probe_steps and cell.cell_id not in problems:
                per_step = _seconds_per_step(
                    model, recipe, num_classes, target, probe_steps, budget
                )
            measured[key] = (counts, per_step, build)
        counts, per_step, build = measured[key]
        plan = StepPlan.of(train_images, recipe)
        problem = problems.get(cell.cell_id)
        estimate = None
        if problem is not None:
            estimate = 0.0
        elif per_step is not None:
            evaluations = 1 + (plan.total_steps // recipe.eval_every if recipe.eval_every else 0)
            per_image = per_step / (recipe.batch_size * recipe.grad_accum) / 3
            estimate = plan.total_steps * per_step + evaluations * eval_images * per_image + build
        planned.append(
            PlannedCell(
                cell_id=cell.cell_id,
                label=cell.label,
                status=(
                    CellStatus(problem.status)
                    if problem is not None
                    else statuses.get(cell.cell_id, CellStatus.PENDING)
                ),
                reason=None if problem is None else problem.reason,
                params=counts.params,
                active_params=counts.active_params,
                flops=counts.flops,
                steps=plan.total_steps,
                seconds_per_step=per_step,
                estimated_seconds=estimate,
            )
        )
    return GridPlan(
        out_dir=str(out_dir),
        cells=tuple(planned),
        device=device_name(target),
        train_images=train_images,
        notes=spec.notes,
        probe_seconds=time.perf_counter() - probe_start,
    )


def _model_key(cell: Cell) -> tuple[Any, ...]:
    """What a step's time depends on: the model and the recipe's step shape."""
    recipe = cell.effective_recipe
    return (
        *(cell.arch, cell.source, cell.residual, cell.freeze, cell.bn),
        *(recipe.image_size, recipe.batch_size, recipe.grad_accum, recipe.optimizer, recipe.amp),
    )
