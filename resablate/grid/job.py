"""Training cells into their run directories: one cell alone, or K cells as one packed model.

:func:`run_cell` trains one cell (``resablate train`` and the grid both call it), :func:`run_pack`
K cells that share a packed model; both write each cell's run directory (layout in
``docs/architecture.md``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.errors import ConfigError
from resablate.grid.cell import CELL_ID_LENGTH, Cell

if TYPE_CHECKING:
    import torch
    from torch import nn

    from resablate.counting import Counts
    from resablate.data import DatasetScan
    from resablate.engine import StepHook, TrainEvent, TrainResult
    from resablate.engine.environment import Environment
    from resablate.freezing import FreezeReport
    from resablate.metrics import Metrics
    from resablate.recipes import Recipe
    from resablate.surgery import SurgeryReport


@dataclass(frozen=True)
class CellPrepared:
    """Sent to the callback of :func:`run_cell` once data and model are ready, before training.

    Attributes:
        cell: The cell.
        scan: The dataset layout found (renders itself with rich).
        recipe: The effective recipe.
        counts: Parameters (total, trainable, active) and FLOPs at the recipe's input size.
        surgery: What residual surgery changed (``None`` when the residual plan is ``"on"``).
        freeze: What freezing changed.
        device: Device name.
    """

    cell: Cell
    scan: DatasetScan
    recipe: Recipe
    counts: Counts
    surgery: SurgeryReport | None
    freeze: FreezeReport
    device: str


@dataclass(frozen=True)
class CellResult:
    """The outcome of one cell (``result.json`` in its run directory).

    Attributes:
        cell: The cell.
        status: ``"done"`` or ``"diverged"``.
        metrics: Final metrics on the test split (``None`` when diverged).
        loss: Final mean test cross-entropy (``None`` when diverged).
        params: All parameters of the built model.
        trainable_params: Parameters the optimiser updated.
        active_params: Parameters the forward pass uses (after surgery).
        flops: Multiply-adds of one forward pass at batch 1 and the recipe's input size
            (fvcore's convention).
        steps: Optimiser steps done.
        total_steps: Optimiser steps planned.
        train_seconds: Seconds spent in training steps (evaluation excluded).
        images_per_second: Training throughput.
        device: Device name.
        diverged_at_step: Step of the first non-finite loss, else ``None``.
        reason: Why the run diverged, else ``None``.
        frozen_check: ``"passed"``, ``"failed"`` or ``"not applicable"`` (nothing frozen).
        resumed_from_step: Step of the checkpoint the run resumed from (0 = fresh start).
        skipped_checkpoints: ``"<file>: <why>"`` of each checkpoint passed over on resume
            because it does not load.
        environment: Versions, device, determinism, dataset fingerprint, weights hash.
        run_dir: The run directory.
    """

    cell: Cell
    status: str
    metrics: Metrics | None
    loss: float | None
    params: int
    trainable_params: int
    active_params: int
    flops: int
    steps: int
    total_steps: int
    train_seconds: float
    images_per_second: float
    device: str
    diverged_at_step: int | None
    reason: str | None
    frozen_check: str
    resumed_from_step: int
    skipped_checkpoints: tuple[str, ...]
    environment: Environment
    run_dir: str

    @property
    def cell_id(self) -> str:
        """The cell's id."""
        return self.cell.cell_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types (``cell`` as :meth:`Cell.to_dict`, plus ``cell_id``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["cell"] = self.cell.to_dict()
        data["metrics"] = self.metrics.to_dict() if self.metrics is not None else None
        data["environment"] = self.environment.to_dict()
        return {"cell_id": self.cell_id, **data}


def dataset_root(data: str | os.PathLike[str]) -> Path:
    """The folder of a cell's dataset: ``"demo"`` is the demo tree (generated on first use)."""
    if str(data) == "demo":
        from resablate.data import demo_data

        return demo_data()
    return Path(data)


def _weights_file(cell: Cell) -> Path | None:
    """The file the cell's initial weights come from (``None`` for random init).

    Demo weights are built first when missing; ImageNet weights are looked up in (or fetched
    into) the upstream cache, which ``build_model`` needs anyway.
    """
    from resablate.weights import fetch_weights

    if cell.weights == "none":
        return None
    if cell.weights == "demo":
        from resablate.demo_weights import ensure_demo_weights

        return ensure_demo_weights(cell.arch, cell.source)
    if cell.weights == "imagenet":
        return fetch_weights(cell.arch, cell.source)
    return Path(cell.weights)


def apply_ablation(model: nn.Module, cell: Cell) -> tuple[SurgeryReport | None, FreezeReport]:
    """Apply the cell's residual plan, then its freeze plan, to ``model`` in place.

    Returns:
        The surgery report (``None`` when the residual plan is ``"on"``) and the freeze report.
    """
    from resablate.freezing import freeze

    return cell.residual_plan.apply(model), freeze(model, cell.freeze, bn=cell.bn)


@dataclass(frozen=True)
class _Prepared:
    """A cell ready to train: its model (built, surgered, frozen) and what it records."""

    model: nn.Module
    prepared: CellPrepared
    environment: Environment


def _load_data(cell: Cell) -> tuple[Recipe, DatasetScan, Any, dict[str, Any]]:
    """The cell's effective recipe, dataset scan, decoded training split and evaluation splits
    (val if any, test)."""
    from resablate.data import decode_split, scan
    from resablate.recipes import get_recipe

    recipe = get_recipe(cell.recipe, **dict(cell.overrides))
    dataset = scan(dataset_root(cell.data))
    splits = {
        name: decode_split(dataset, name, storage_size=recipe.storage_size)
        for name in ("train", "val", "test")
        if name in dataset.splits
    }
    train = splits.pop("train")
    return recipe, dataset, train, splits


def _prepare(
    cell: Cell, recipe: Recipe, dataset: DatasetScan, run_dir: Path, target: torch.device
) -> _Prepared:
    """Build the cell's model (init seeded from the cell), apply its ablation, count it, write
    ``cell.json`` and capture the environment."""
    import torch

    from resablate.counting import count
    from resablate.engine import stream_seed
    from resablate.engine.environment import capture_environment
    from resablate.run_dir import RunDir
    from resablate.weights import build_model, weights_sha256

    weights_file = _weights_file(cell)
    torch.manual_seed(stream_seed(cell.seed, "init"))
    model = build_model(
        cell.arch,
        weights=None if weights_file is None else cell.weights,
        num_classes=len(dataset.classes),
        source=cell.source,
    )
    surgery, frozen = apply_ablation(model, cell)
    counts = count(model, (3, recipe.image_size, recipe.image_size))
    RunDir(run_dir).write_cell(cell.to_dict())
    environment = capture_environment(
        target,
        dataset_fingerprint=dataset.fingerprint,
        weights_sha256=None if weights_file is None else weights_sha256(weights_file),
    )
    prepared = CellPrepared(
        cell=cell,
        scan=dataset,
        recipe=recipe,
        counts=counts,
        surgery=surgery,
        freeze=frozen,
        device=environment.device,
    )
    return _Prepared(model, prepared, environment)


def _finish(
    ready: _Prepared, trained: TrainResult, run_dir: Path, pack: dict[str, Any] | None = None
) -> CellResult:
    """The cell's result from its training, written last as ``result.json``."""
    from resablate.run_dir import RunDir

    cell, counts, final = ready.prepared.cell, ready.prepared.counts, trained.final
    result = CellResult(
        cell=cell,
        status=trained.status,
        metrics=final.metrics if final is not None else None,
        loss=final.loss if final is not None else None,
        params=counts.params,
        trainable_params=counts.trainable_params,
        active_params=counts.active_params,
        flops=counts.flops,
        steps=trained.steps,
        total_steps=trained.total_steps,
        train_seconds=trained.train_seconds,
        images_per_second=trained.images_per_second,
        device=trained.device,
        diverged_at_step=trained.diverged_at_step,
        reason=trained.reason,
        frozen_check=trained.frozen_check,
        resumed_from_step=trained.resumed_from_step,
        skipped_checkpoints=trained.skipped_checkpoints,
        environment=dataclasses.replace(
            ready.environment,
            deterministic=trained.execution.deterministic,
            execution=trained.execution.to_dict(),
            pack=pack,
        ),
        run_dir=str(run_dir),
    )
    RunDir(run_dir).write_result(result.to_dict())
    return result


def run_cell(
    cell: Cell,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    callback: Callable[[TrainEvent | CellPrepared], None] | None = None,
    resume: bool = True,
    on_step: Sequence[StepHook] = (),
) -> CellResult:
    """Train and evaluate one cell end to end, writing its run directory.

    Steps: scan the dataset (``"demo"`` = the embedded demo data, generated on first use), decode
    the train, val (if any) and test splits once (cached), build the model with the cell's weights
    (the random initialisation, head included, is seeded from the cell's seed), apply the residual
    plan, freeze, count, train with the cell's recipe, write ``cell.json``, the engine's files and,
    last, ``result.json``.

    Args:
        cell: The cell.
        run_dir: Its run directory (created; checked before any work).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        callback: Receives :class:`CellPrepared` once, then the engine's progress events.
        resume: Continue from the newest checkpoint in ``run_dir``; ``False`` starts over.
        on_step: Per-step hooks handed to the engine (e.g. gradient-norm logging).

    Returns:
        The cell's result (status ``"done"`` or ``"diverged"``).

    Raises:
        ResablateError: Bad dataset (``DataError``), unavailable or wrong weights
            (``WeightsUnavailableError``/``WeightsError``), an invalid plan for this architecture
            (``ConfigError``): the grid records the cell as skipped or failed with the message.
    """
    from resablate.engine import train
    from resablate.engine.environment import resolve_device
    from resablate.paths import output_dir

    output_dir(run_dir)
    target = resolve_device(device)
    recipe, dataset, train_split, evals = _load_data(cell)
    run_dir = Path(run_dir)
    ready = _prepare(cell, recipe, dataset, run_dir, target)
    if callback is not None:
        callback(ready.prepared)
    trained = train(
        ready.model,
        train_split,
        evals,
        recipe,
        run_dir=run_dir,
        seed=cell.seed,
        device=target,
        resume=resume,
        callback=callback,
        on_step=on_step,
    )
    return _finish(ready, trained, run_dir)


def pack_key(cell: Cell) -> tuple[Any, ...]:
    """What cells must share to train in one pack: architecture, model source, recipe (every
    field: name and overrides), freeze plan, BatchNorm policy and data. Residual plan, initial
    weights and seed may differ."""
    return (cell.arch, cell.source, cell.recipe, cell.overrides, cell.freeze, cell.bn, cell.data)


def pack_id(cells: Sequence[Cell]) -> str:
    """The id of a pack: sha256 of its cells' sorted ids (hex, 12 characters)."""
    blob = ",".join(sorted(cell.cell_id for cell in cells))
    return hashlib.sha256(blob.encode()).hexdigest()[:CELL_ID_LENGTH]


def run_pack(
    cells: Sequence[Cell],
    run_dirs: Sequence[str | Path],
    packs_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    callback: Callable[[TrainEvent | CellPrepared], None] | None = None,
    resume: bool = True,
) -> list[CellResult | Exception]:
    """Train K cells as one packed model (:mod:`resablate.packing`), each into its run directory.

    Every cell is prepared as :func:`run_cell` prepares it (its own weights, seeded
    initialisation, residual plan and freeze); a cell whose preparation raises (weights that do
    not fit or cannot be had) gets its exception in its place and the others pack without it.
    The models are fused and trained with :func:`resablate.engine.packed.train_pack`, with the
    pack's checkpoints in ``packs_dir/<pack id of the cells trained>``; each run directory ends
    with the files of a separate run, and each result's ``environment.pack`` names the pack, K
    and the cell's group.

    Args:
        cells: The cells (same :func:`pack_key`), in group order.
        run_dirs: Their run directories.
        packs_dir: The folder of the grid's packs.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        callback: Receives each cell's :class:`CellPrepared`, then the pack's engine events
            (``Evaluated`` carries the group).
        resume: Continue from the pack's newest checkpoint; ``False`` starts over.

    Returns:
        One result (or preparation error) per cell, in order.

    Raises:
        ConfigError: The cells differ in what a pack shares, or their models cannot be packed.
        ResablateError: As :func:`run_cell`, for what the cells share (data, recipe).
    """
    from resablate.engine.environment import resolve_device
    from resablate.engine.packed import train_pack
    from resablate.packing import fuse
    from resablate.paths import output_dir

    keys = {pack_key(cell) for cell in cells}
    if len(keys) != 1 or len(cells) != len(run_dirs):
        raise ConfigError(
            "a pack needs one run directory per cell and cells of one architecture, recipe, "
            "freeze plan, BatchNorm policy and dataset"
        )
    dirs = [Path(output_dir(d)) for d in run_dirs]
    target = resolve_device(device)
    recipe, dataset, train_split, evals = _load_data(cells[0])
    outcomes: dict[int, CellResult | Exception] = {}
    ready: list[tuple[int, _Prepared, Path]] = []
    for i, (cell, run_dir) in enumerate(zip(cells, dirs, strict=True)):
        try:
            one = _prepare(cell, recipe, dataset, run_dir, target)
        except Exception as exc:
            outcomes[i] = exc
            continue
        ready.append((i, one, run_dir))
        if callback is not None:
            callback(one.prepared)
    if ready:
        members = [cells[i] for i, _, _ in ready]
        name = pack_id(members)
        trained = train_pack(
            fuse([one.model for _, one, _ in ready]),
            train_split,
            evals,
            recipe,
            pack_dir=Path(packs_dir) / name,
            run_dirs=[run_dir for _, _, run_dir in ready],
            seeds=[cell.seed for cell in members],
            device=target,
            resume=resume,
            callback=callback,
        )
        for g, ((i, one, run_dir), result) in enumerate(zip(ready, trained, strict=True)):
            pack = {"id": name, "size": len(ready), "group": g}
            outcomes[i] = _finish(one, result, run_dir, pack)
    return [outcomes[i] for i in range(len(cells))]
