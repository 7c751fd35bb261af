"""Training cells into their run directories: a :class:`Job` is one cell, or K cells trained as
one packed model; :func:`run_job` trains either the same way (a cell alone is a pack of one).

This is the one place a cell's model is built (:func:`_prepare`): weights resolved once, the
initialisation seeded from the cell, its residual plan and freeze plan applied. Each cell's run
directory gets the files of a separate run (layout in ``docs/architecture.md``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.errors import ConfigError
from resablate.grid.cell import CELL_ID_LENGTH, Cell
from resablate.weights_choice import WeightsKind

if TYPE_CHECKING:
    import torch
    from torch import nn

    from resablate.counting import Counts
    from resablate.data import DatasetScan
    from resablate.engine import StepHook, TrainEvent, TrainResult
    from resablate.engine.environment import Environment
    from resablate.engine.groups import ModelGroups
    from resablate.engine.loop import Fingerprint
    from resablate.freezing import FreezeReport
    from resablate.metrics import Metrics
    from resablate.recipes import Recipe
    from resablate.surgery import SurgeryReport


StepHookFactory = Callable[[str], "StepHook"]
"""Builds one run's engine step hook from its run directory, in the worker that runs the cell
(picklable: it crosses process boundaries in the job). A hook with a ``close()`` method is closed
when the cell ends, however it ends (e.g. gradient-norm logging writing its file)."""


def pack_key(cell: Cell) -> tuple[Any, ...]:
    """What cells must share to train in one pack: architecture, model source, recipe (every
    field: name and overrides), freeze plan, BatchNorm policy and data. Residual plan, initial
    weights and seed may differ."""
    return (cell.arch, cell.source, cell.recipe, cell.overrides, cell.freeze, cell.bn, cell.data)


def pack_id(cells: Sequence[Cell]) -> str:
    """The id of a pack: sha256 of its cells' sorted ids (hex, 12 characters)."""
    blob = ",".join(sorted(cell.cell_id for cell in cells))
    return hashlib.sha256(blob.encode()).hexdigest()[:CELL_ID_LENGTH]


@dataclass(frozen=True)
class Job:
    """Cells to train in one session, with their run directories (plain data; crosses process
    boundaries).

    One cell trains alone, its checkpoints in ``run_dir/checkpoints``; K > 1 cells (same
    :func:`pack_key`) train as one packed model, its checkpoints in
    ``packs_dir/<pack id>/checkpoints``.

    Attributes:
        cells: The cells, in group order.
        run_dirs: Their run directories (path strings reachable by the workers).
        packs_dir: The grid's packs folder (``OUT/packs``); needed when K > 1.
        step_hooks: Per-run engine step hooks, built in the worker from the run directory (e.g.
            gradient-norm logging); one cell only. A run option: not part of the cell id.

    Raises:
        ConfigError: Not one run directory per cell, or K > 1 cells that cannot share a pack
            (other :func:`pack_key`, no ``packs_dir``, step hooks).
    """

    cells: tuple[Cell, ...]
    run_dirs: tuple[str, ...]
    packs_dir: str | None = None
    step_hooks: tuple[StepHookFactory, ...] = ()

    def __post_init__(self) -> None:
        if not self.cells or len(self.cells) != len(self.run_dirs):
            raise ConfigError("a job needs one run directory per cell, and at least one cell")
        if len(self.cells) > 1 and (
            self.packs_dir is None
            or self.step_hooks
            or len({pack_key(cell) for cell in self.cells}) != 1
        ):
            raise ConfigError(
                "a pack needs a packs folder, no step hooks, and cells of one architecture, "
                "recipe, freeze plan, BatchNorm policy and dataset"
            )

    @classmethod
    def single(
        cls, cell: Cell, run_dir: str | os.PathLike[str], step_hooks: Sequence[StepHookFactory] = ()
    ) -> Job:
        """A job of one cell."""
        return cls((cell,), (str(run_dir),), step_hooks=tuple(step_hooks))


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


def _weights_file(cell: Cell, notify: Callable[[Any], None] | None = None) -> Path | None:
    """The file the cell's initial weights come from (``None`` for random init).

    Demo weights are built first when missing (``notify`` receives
    :class:`~resablate.grid.events.DemoWeightsPretraining`, then ``DemoWeightsReady`` with the
    time it took); ImageNet weights are looked up in (or fetched into) the upstream cache, which
    ``build_model`` needs anyway.
    """
    from resablate.weights import demo_weights_path, fetch_weights

    kind = cell.weights.kind
    if kind == WeightsKind.NONE:
        return None
    if kind == WeightsKind.DEMO:
        from resablate.demo_weights import ensure_demo_weights
        from resablate.grid.events import DemoWeightsPretraining, DemoWeightsReady

        path = demo_weights_path(cell.arch, cell.source)
        if path.is_file() or notify is None:
            return ensure_demo_weights(cell.arch, cell.source)
        notify(DemoWeightsPretraining(cell.arch, cell.source, str(path)))
        start = time.perf_counter()
        ensure_demo_weights(cell.arch, cell.source)
        seconds = time.perf_counter() - start
        notify(DemoWeightsReady(cell.arch, cell.source, str(path), seconds))
        return path
    if kind == WeightsKind.IMAGENET:
        return fetch_weights(cell.arch, cell.source)
    return cell.weights.path


def preflight(cell: Cell, num_classes: int) -> Exception | None:
    """What would stop the cell before it trains, found before any cell does: its weights cannot
    be had (ImageNet weights neither cached nor downloadable, a missing file) or do not fit its
    architecture (a file of another one). ``None`` when nothing does.

    Demo weights are not built here (that is training); a file is loaded into the architecture
    once, on the CPU.
    """
    from resablate.errors import ResablateError
    from resablate.weights import build_model

    try:
        kind = cell.weights.kind
        if kind == WeightsKind.IMAGENET:
            _weights_file(cell)
        elif kind == WeightsKind.FILE:
            build_model(
                cell.arch, weights=cell.weights.text, num_classes=num_classes, source=cell.source
            )
    except ResablateError as exc:
        return exc
    return None


def apply_ablation(model: nn.Module, cell: Cell) -> tuple[SurgeryReport | None, FreezeReport]:
    """Apply the cell's residual plan, then its freeze plan, to ``model`` in place.

    Returns:
        The surgery report (``None`` when the residual plan is ``"on"``) and the freeze report.
    """
    from resablate.freezing import freeze

    return cell.residual.apply(model), freeze(model, cell.freeze, bn=cell.bn)


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

    recipe = cell.effective_recipe
    dataset = scan(dataset_root(cell.data))
    splits = {
        name: decode_split(dataset, name, storage_size=recipe.storage_size)
        for name in ("train", "val", "test")
        if name in dataset.splits
    }
    train = splits.pop("train")
    return recipe, dataset, train, splits


def _prepare(
    cell: Cell,
    recipe: Recipe,
    dataset: DatasetScan,
    run_dir: Path,
    target: torch.device,
    notify: Callable[[Any], None] | None = None,
) -> _Prepared:
    """Build the cell's model (init seeded from the cell), apply its ablation, count it, write
    ``cell.json`` and capture the environment."""
    import torch

    from resablate.counting import count
    from resablate.engine import stream_seed
    from resablate.engine.environment import capture_environment
    from resablate.run_dir import RunDir
    from resablate.weights import build_model, weights_sha256

    weights_file = _weights_file(cell, notify)
    torch.manual_seed(stream_seed(cell.seed, "init"))
    model = build_model(
        cell.arch,
        weights=None if weights_file is None else cell.weights.text,
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


def _fingerprint(model: nn.Module) -> Fingerprint | None:
    """The frozen fingerprint the engine checks, when something is frozen."""
    from resablate.freezing import frozen_fingerprint

    return None if all(p.requires_grad for p in model.parameters()) else frozen_fingerprint


def _session_model(
    job: Job, ready: Sequence[tuple[int, _Prepared]]
) -> tuple[nn.Module, ModelGroups, Path, dict[str, Any] | None]:
    """The model the session trains, its groups, checkpoint folder and the pack it records."""
    from resablate.engine.checkpoint import CHECKPOINT_DIR
    from resablate.engine.groups import OneModel

    if len(job.cells) == 1:
        (_, one), run_dir = ready[0], job.run_dirs[0]
        return one.model, OneModel(one.model), Path(run_dir) / CHECKPOINT_DIR, None
    from resablate.packing import PackedGroups, fuse

    assert job.packs_dir is not None  # checked by Job
    model = fuse([one.model for _, one in ready])
    name = pack_id([job.cells[i] for i, _ in ready])
    pack = {"id": name, "size": len(ready)}
    return model, PackedGroups(model), Path(job.packs_dir) / name / CHECKPOINT_DIR, pack


def run_job(
    job: Job,
    *,
    device: str | torch.device = "cpu",
    callback: Callable[[TrainEvent | CellPrepared], None] | None = None,
    resume: bool = True,
) -> list[CellResult | Exception]:
    """Train and evaluate a job's cells end to end in one session, writing their run directories.

    Steps: scan the dataset (``"demo"`` = the embedded demo data, generated on first use), decode
    the train, val (if any) and test splits once (cached, shared by the cells), build each cell's
    model with its weights (the random initialisation, head included, seeded from the cell's
    seed), apply its residual plan, freeze, count, write ``cell.json``; fuse the models when there
    are several (:mod:`resablate.packing`), train them with the recipe
    (:func:`resablate.engine.loop.train_groups`), write the engine's files and, last, each
    ``result.json`` (its ``environment.pack`` names the pack, K and the cell's group).

    A cell whose preparation raises (weights that do not fit or cannot be had, a plan this
    architecture does not have) gets its exception in its place; the others train without it.

    Args:
        job: The cells and their run directories (created; checked before any work).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        callback: Receives each cell's :class:`CellPrepared`, then the engine's progress events
            (with K > 1, ``Evaluated`` carries the group).
        resume: Continue from the newest checkpoint; ``False`` starts over.

    Returns:
        One result (status ``"done"`` or ``"diverged"``) or preparation error per cell, in order.

    Raises:
        ResablateError: What the cells share is bad: the dataset (``DataError``), the recipe or
            the pack (``ConfigError``); the grid records every cell of the job as failed.
    """
    from resablate.engine.environment import resolve_device
    from resablate.engine.loop import train_groups
    from resablate.paths import output_dir

    dirs = [Path(output_dir(d)) for d in job.run_dirs]
    target = resolve_device(device)
    recipe, dataset, train_split, evals = _load_data(job.cells[0])
    outcomes: dict[int, CellResult | Exception] = {}
    ready: list[tuple[int, _Prepared]] = []
    for i, (cell, run_dir) in enumerate(zip(job.cells, dirs, strict=True)):
        try:
            one = _prepare(cell, recipe, dataset, run_dir, target, callback)
        except Exception as exc:
            if len(job.cells) == 1:
                raise
            outcomes[i] = exc
            continue
        ready.append((i, one))
        if callback is not None:
            callback(one.prepared)
    if ready:
        model, groups, checkpoints, pack = _session_model(job, ready)
        hooks = [factory(job.run_dirs[0]) for factory in job.step_hooks]
        try:
            trained = train_groups(
                model,
                groups,
                train_split,
                evals,
                recipe,
                checkpoint_dir=checkpoints,
                run_dirs=[dirs[i] for i, _ in ready],
                seeds=[job.cells[i].seed for i, _ in ready],
                device=target,
                resume=resume,
                callback=callback,
                on_step=hooks,
                fingerprint=_fingerprint(model),
            )
        finally:
            for hook in hooks:
                close = getattr(hook, "close", None)
                if callable(close):
                    close()
        for g, ((i, one), result) in enumerate(zip(ready, trained, strict=True)):
            where = None if pack is None else {**pack, "group": g}
            outcomes[i] = _finish(one, result, dirs[i], where)
    return [outcomes[i] for i in range(len(job.cells))]


def run_cell(
    cell: Cell,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    callback: Callable[[TrainEvent | CellPrepared], None] | None = None,
    resume: bool = True,
    step_hooks: Sequence[StepHookFactory] = (),
) -> CellResult:
    """:func:`run_job` of one cell, raising what its preparation raises.

    Raises:
        ResablateError: Bad dataset (``DataError``), unavailable or wrong weights
            (``WeightsUnavailableError``/``WeightsError``), an invalid plan for this architecture
            (``ConfigError``).
    """
    (result,) = run_job(
        Job.single(cell, run_dir, step_hooks), device=device, callback=callback, resume=resume
    )
    assert not isinstance(result, Exception)  # a job of one raises instead
    return result
