"""A grid's dry run: every cell listed with its stored status, counted, and its training time
estimated.

Nothing trains and nothing is written: no store, no lock, no folder (an existing store is read
for the cells' statuses). Each distinct model of the grid (architecture × residual plan × freeze
plan) is built once with random weights (the weights spec changes neither counts nor speed),
counted at the recipe's input size, and timed for a few training steps on random input at the
recipe's batch size; a cell's estimate is that time per micro-batch × its planned micro-batches.
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
from resablate.grid.runner import check_data, check_fingerprint, check_run_options
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
        status: Its status in the store (``done`` cells would not run again).
        params: Parameters of the built model (head sized for the dataset's classes).
        active_params: Parameters its forward pass uses (after residual surgery).
        flops: Multiply-adds of one forward pass at batch 1 and the recipe's image size (fvcore).
        steps: Optimiser steps the recipe plans on this dataset.
        seconds_per_step: Measured seconds of one optimiser step (``None`` without a probe).
        estimated_seconds: ``steps * seconds_per_step`` (``None`` without a probe).
    """

    cell_id: str
    label: str
    status: CellStatus
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

    @property
    def estimated_seconds(self) -> float | None:
        """Estimated training time of the cells that would run (not ``done``/``diverged``)."""
        todo = [c for c in self.cells if c.status not in (CellStatus.DONE, CellStatus.DIVERGED)]
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
                c.status,
                f"{c.params / 1e6:.1f}",
                f"{c.flops / 1e9:.3f}",
                str(c.steps),
                "—" if c.estimated_seconds is None else format_seconds(c.estimated_seconds),
            )
        total = self.estimated_seconds
        footer = (
            f"estimated training time on {self.device}: "
            f"{'—' if total is None else format_seconds(total)} "
            f"({self.train_images} training images; evaluation not included) · {self.out_dir}"
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


def _probe(model: Any, recipe: Recipe, num_classes: int, device: Any, steps: int) -> float:
    """Seconds per optimiser step: the median of ``steps`` timed steps after one warm-up step
    (the median, because other work on a shared machine inflates single steps). The steps run
    as the engine would run them on ``device``: autocast dtype, channels_last and the backend
    flags of :func:`resablate.engine.execution.resolve_execution` (compilation aside)."""
    import torch
    import torch.nn.functional as F

    from resablate.engine.execution import backend_settings, resolve_execution
    from resablate.engine.optim import build_optimizer
    from resablate.freezing import trainable_parameters

    execution = resolve_execution(recipe, device)
    model = model.to(device).train()
    size = recipe.image_size
    images = torch.randn(recipe.batch_size, 3, size, size, device=device)
    if execution.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    params = trainable_parameters(model)
    optimizer = build_optimizer(params, recipe) if params else None
    labels = torch.arange(recipe.batch_size, device=device) % num_classes

    def micro_batch() -> None:
        with execution.autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        if optimizer is not None:
            loss.backward()

    def step() -> None:
        for _ in range(recipe.grad_accum):
            micro_batch()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with backend_settings(execution):
        step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
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
    num_classes = len(dataset.classes)
    measured: dict[tuple[Any, ...], tuple[Any, float | None]] = {}
    planned = []
    for cell in spec.cells():
        recipe = cell.effective_recipe
        key = (
            *(cell.arch, cell.source, cell.residual, cell.freeze, cell.bn),
            *(recipe.image_size, recipe.batch_size, recipe.grad_accum, recipe.optimizer),
        )
        if key not in measured:
            model = _model(cell, num_classes)
            counts = count(model, (3, recipe.image_size, recipe.image_size))
            per_step = (
                _probe(model, recipe, num_classes, target, probe_steps) if probe_steps else None
            )
            measured[key] = (counts, per_step)
        counts, per_step = measured[key]
        steps = StepPlan.of(train_images, recipe).total_steps
        planned.append(
            PlannedCell(
                cell_id=cell.cell_id,
                label=cell.label,
                status=statuses.get(cell.cell_id, CellStatus.PENDING),
                params=counts.params,
                active_params=counts.active_params,
                flops=counts.flops,
                steps=steps,
                seconds_per_step=per_step,
                estimated_seconds=None if per_step is None else steps * per_step,
            )
        )
    return GridPlan(
        out_dir=str(out_dir),
        cells=tuple(planned),
        device=device_name(target),
        train_images=train_images,
        notes=spec.notes,
    )
