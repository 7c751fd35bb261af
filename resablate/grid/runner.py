"""Running a grid: store every cell, run the unfinished ones, record each outcome.

Setup → launch → collect (pycls's sweep shape): the driver locks the run directory, writes every
cell of the spec to the store as ``pending`` before the first one trains, hands the cells that
need running to an executor and records each outcome in one transaction as it arrives, mirroring
the store to ``results.csv``/``results.jsonl`` after every finished cell. Only the driver writes
the store.

Resume policy (a rerun of the same spec on the same run directory):

* ``done`` and ``diverged`` cells are finished results: never rerun (a diverged cell is a
  measured outcome of its config and seed; change the seed or recipe to run it differently).
* ``running`` (the previous driver died) and ``pending`` cells run, resuming from the newest
  complete checkpoint in their run directory.
* ``skipped`` cells (weights unavailable offline) are tried again: the check is cheap and the
  weights may have been fetched since.
* ``failed`` cells run again only with ``retry_failed=True``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.atomic import sweep_stale
from resablate.choices import DEFAULT_METRIC, FINISHED_STATUSES, METRICS, CellStatus
from resablate.errors import ConfigError, DataError
from resablate.grid.cell import Cell
from resablate.grid.events import CellFinished, CellProgress, CellStarted, GridEvent, GridStarted
from resablate.grid.executors import CellOutcome, JobRunner, default_device, make_executor
from resablate.grid.job import Job, StepHookFactory, dataset_root
from resablate.grid.lock import RunLock
from resablate.grid.packs import packs_dir, parse_pack, plan_packs
from resablate.grid.results import final_rows
from resablate.grid.signals import sigterm_as_interrupt, uninterruptible
from resablate.grid.spec import GridSpec
from resablate.grid.store import CellRow, ResultStore, check_store_file
from resablate.grid.summary import GridSummary
from resablate.grid.table import results_table
from resablate.paths import output_dir
from resablate.recipes import get_recipe
from resablate.run_dir import RunDir

if TYPE_CHECKING:
    from resablate.data import DatasetScan

CELLS_FOLDER = "cells"
INTERRUPTED = "interrupted; a rerun resumes it from its last checkpoint"
GRADFLOW_PACKS = (
    "gradient-norm logging (step hooks) runs each cell alone, its hooks see one model; use pack "
    "off or auto with it"
)


def select_cells(rows: Sequence[CellRow], *, retry_failed: bool = False) -> list[str]:
    """Ids of the cells a run starts, in grid order (the resume policy in this module's doc)."""
    wanted = {CellStatus.PENDING, CellStatus.RUNNING, CellStatus.SKIPPED}
    if retry_failed:
        wanted.add(CellStatus.FAILED)
    return [row.cell_id for row in rows if row.status in wanted]


def cell_run_dir(out_dir: str | os.PathLike[str], cell_id: str) -> Path:
    """The run directory of a cell: ``OUT/cells/<cell_id>``."""
    return Path(out_dir) / CELLS_FOLDER / cell_id


def _record(store: ResultStore, outcome: CellOutcome, base_env: dict[str, Any]) -> None:
    """Write one outcome to the store (one transaction)."""
    status = CellStatus(outcome.status)
    if outcome.result is None:
        store.record_result(
            outcome.cell_id,
            status,
            reason=outcome.reason,
            values={"device": outcome.device},
        )
        return
    data = outcome.result.to_dict()
    metrics = dict(data.get("metrics") or {})
    metrics["loss"] = data.get("loss")
    run_dir = Path(data.get("run_dir") or store.cell(outcome.cell_id).run_dir or "")
    store.record_result(
        outcome.cell_id,
        status,
        reason=outcome.reason,
        metrics={name: metrics.get(name) for name in METRICS},
        values={
            "params": data.get("params"),
            "active_params": data.get("active_params"),
            "flops": data.get("flops"),
            "steps": data.get("steps"),
            "train_seconds": data.get("train_seconds"),
            "images_per_second": data.get("images_per_second"),
            "device": data.get("device") or outcome.device,
            "run_dir": str(run_dir),
        },
        environment={**base_env, **(data.get("environment") or {})},
        evaluations=RunDir(run_dir).read_history(),
        predictions=RunDir(run_dir).read_predictions(),
        skipped_checkpoints=data.get("skipped_checkpoints") or (),
    )


def preflight_outcomes(cells: Sequence[Cell], num_classes: int, device: str) -> list[CellOutcome]:
    """The cells that would stop before training (:func:`resablate.grid.job.preflight`: weights
    that cannot be had are ``skipped``, weights that do not fit ``failed``), as outcomes to
    record up front. Each distinct weights choice of an architecture is checked once."""
    from resablate.grid.executors import failure
    from resablate.grid.job import preflight

    found: dict[tuple[str, str, str], Exception | None] = {}
    outcomes = []
    for cell in cells:
        key = (cell.arch, cell.source, cell.weights.text)
        if key not in found:
            found[key] = preflight(cell, num_classes)
        problem = found[key]
        if problem is not None:
            status, reason = failure(problem)
            outcomes.append(CellOutcome(cell.cell_id, status, reason, None, device))
    return outcomes


def release_checkpoints(outcomes: Sequence[CellOutcome], packs: Path) -> None:
    """Delete the checkpoints of recorded cells that are finished for good (``done`` or
    ``diverged``): their run directories keep the final model and results, and the folder of a
    pack (in ``packs``) goes once its cells are recorded. Failed cells keep theirs, to resume."""
    from resablate.engine.checkpoint import CHECKPOINT_DIR

    for outcome in outcomes:
        if outcome.result is None or outcome.status not in (CellStatus.DONE, CellStatus.DIVERGED):
            continue
        data = outcome.result.to_dict()
        if data.get("run_dir"):
            shutil.rmtree(Path(data["run_dir"]) / CHECKPOINT_DIR, ignore_errors=True)
        pack = (data.get("environment") or {}).get("pack")
        if pack:
            shutil.rmtree(packs / pack["id"], ignore_errors=True)


def _jobs(
    cells: Sequence[Cell],
    out_dir: str | os.PathLike[str],
    pack: str | int,
    *,
    device: str | None,
    step_hooks: Sequence[StepHookFactory],
) -> list[Job]:
    """The cells as jobs: packs of the cells that share a packed model, the others alone."""
    jobs: list[Job] = []
    for group in plan_packs(cells, pack, device=device or default_device()):
        dirs = tuple(str(cell_run_dir(out_dir, cell.cell_id)) for cell in group)
        hooks = tuple(step_hooks) if len(group) == 1 else ()
        jobs.append(Job(tuple(group), dirs, str(packs_dir(out_dir)), hooks))
    return jobs


def check_run_options(pack: str | int, workers: int | None) -> str | int:
    """Check the run options a dry run and a run share; returns the parsed ``pack``.

    Raises:
        ConfigError: An invalid ``pack`` or a ``workers`` below 1.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} must be at least 1", field="workers")
    return parse_pack(pack)


def check_data(spec: GridSpec) -> DatasetScan:
    """Scan the grid's dataset and check the recipe against it, before anything is written.

    Raises:
        DataError: The dataset cannot be used (missing, empty, one class).
        ConfigError: The recipe's positive class is not one of the dataset's classes.
    """
    from resablate.data import scan

    dataset = scan(dataset_root(spec.data))
    get_recipe(str(spec.recipe), **dict(spec.overrides)).check_classes(len(dataset.classes))
    return dataset


def check_fingerprint(rows: Sequence[CellRow], data: str, dataset: DatasetScan) -> None:
    """Refuse to add results on a dataset whose contents changed since the finished cells of
    ``rows`` were trained on it: same ``data`` (path, or ``"demo"``), another fingerprint (file
    list, sizes, modification times).

    Raises:
        DataError: A finished cell on ``data`` recorded another fingerprint.
    """
    for row in rows:
        recorded = row.environment.get("dataset_fingerprint")
        finished = row.status in FINISHED_STATUSES and row.cell.data == data
        if finished and recorded and recorded != dataset.fingerprint:
            raise DataError(
                f"the dataset {dataset.root} changed since cell {row.cell_id} was trained on it "
                f"(fingerprint {recorded[:12]} then, {dataset.fingerprint[:12]} now): its results "
                "would mix with results on other data; restore the data or use another output "
                "folder",
                field="data",
            )


@contextlib.contextmanager
def open_grid(
    spec: GridSpec,
    out_dir: str | os.PathLike[str],
    execution: Mapping[str, Any] | None = None,
) -> Iterator[ResultStore]:
    """Check the data, lock ``out_dir``, sweep stale temporary files, write the spec (with
    ``execution``, how the grid was asked to run, under that key: a study file's resolved form)
    and every cell (pending).

    Yields the writable store; the lock is held (and its file kept) until the block exits.

    Raises:
        ConfigError: ``out_dir`` is a file, below a file, or cannot be written; the recipe does
            not fit the dataset.
        DataError: The dataset cannot be used, or changed since cells of this store were
            trained on it.
        StoreLockedError: Another process holds ``out_dir``.
        StoreError: The store is empty, newer, foreign, or on a network file system.
    """
    out = output_dir(out_dir)
    dataset = check_data(spec)
    with RunLock(out):
        sweep_stale(out)
        check_store_file(out)
        with ResultStore(out) as store:
            check_fingerprint(store.cells(include_dropped=True), spec.data, dataset)
            cells = spec.cells()
            run_dirs = {c.cell_id: str(cell_run_dir(out, c.cell_id)) for c in cells}
            recorded = {"execution": dict(execution)} if execution is not None else {}
            store.set_spec({**spec.to_dict(), **recorded})
            store.sync_cells(cells, run_dirs=run_dirs)
            store.write_mirrors()
            yield store


def run_grid(
    spec: GridSpec,
    out_dir: str | os.PathLike[str],
    *,
    executor: str = "local",
    retry_failed: bool = False,
    metric: str = DEFAULT_METRIC,
    callback: Callable[[GridEvent], None] | None = None,
    job_runner: JobRunner | None = None,
    device: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    step_hooks: Sequence[StepHookFactory] = (),
    pack: str | int = "auto",
    keep_checkpoints: bool = False,
    execution: Mapping[str, Any] | None = None,
) -> GridSummary:
    """Run a grid in ``out_dir``, resuming whatever an earlier run left unfinished.

    Args:
        spec: The grid.
        out_dir: The run directory (store, ``results.csv``, ``cells/<cell_id>/``); on a local
            file system, and reachable by every worker.
        executor: ``"local"`` or ``"ray"``.
        retry_failed: Run ``failed`` cells again.
        metric: The metric of the summary's table.
        callback: Receives :data:`GridEvent` values (the CLI draws from them).
        job_runner: Trains one job (a cell, or a pack of cells); ``resablate.grid.job.run_job``
            by default (a test seam).
        device: Device for the local executor (``None`` = CUDA when visible, else CPU).
        workers: Local worker processes (default: one per visible GPU) or local Ray CPUs.
        ray_address: A Ray cluster to join (executor ``ray``).
        step_hooks: Per-run engine step hooks, each built in the worker from the cell's run
            directory (e.g. ``resablate.diagnostics.gradflow.GradNormLogging``, what
            ``--log-gradflow`` passes). A run option: cell ids do not change.
        pack: ``"auto"`` (pack the cells that can share a packed model where packing pays, K
            bounded as :mod:`resablate.grid.packs` says: on a GPU, not on a CPU), ``"off"`` or a
            pack size K. With step hooks, ``auto`` runs every cell alone and a K > 1 is
            refused. A run option: cell ids, the store and ``results.csv``
            do not change; each result's environment names its pack.
        keep_checkpoints: Keep every checkpoint; by default a cell finished for good (``done``
            or ``diverged``) keeps only its final model and results, and a pack's checkpoints go
            once all its cells are recorded (a failed cell keeps its checkpoints to resume).
        execution: How the grid was asked to run (``resablate.grid.study.Execution.to_dict()``),
            recorded in the store with the spec; a record only, the arguments above decide.

    Returns:
        The grid's state when the run ended.

    Raises:
        KeyboardInterrupt: On Ctrl-C or SIGTERM, after the store is written (cells in flight are
            back to ``pending``; a rerun resumes them).
        StoreLockedError: Another process runs a grid in ``out_dir``.
        ConfigError: An invalid ``pack`` or ``workers``, or a K > 1 with step hooks.
        DataError: The dataset cannot be used, or changed since cells of this store were
            trained on it.
    """
    mode = check_run_options(pack, workers)
    if step_hooks and mode != "off":
        if mode != "auto":
            raise ConfigError(GRADFLOW_PACKS, field="pack")
        mode = "off"
    if job_runner is None:
        from resablate.grid.job import run_job

        job_runner = run_job
    runner = make_executor(
        executor, job_runner, device=device, workers=workers, ray_address=ray_address
    )
    from resablate.engine.environment import driver_environment

    emit = callback or (lambda event: None)
    base_env = driver_environment()
    with open_grid(spec, out_dir, execution) as store:
        rows = store.cells()
        to_run = select_cells(rows, retry_failed=retry_failed)
        notes = (*spec.notes, *runner.prepare(out_dir))
        emit(GridStarted(str(out_dir), tuple(rows), tuple(to_run), notes))
        wanted = set(to_run)
        cells = [row.cell for row in rows if row.cell_id in wanted]
        blocked = preflight_outcomes(cells, len(check_data(spec).classes), device or "")
        stopped = {outcome.cell_id for outcome in blocked}
        cells = [cell for cell in cells if cell.cell_id not in stopped]
        jobs = _jobs(cells, out_dir, mode, device=device, step_hooks=step_hooks)
        in_flight: set[str] = set()
        started: list[str] = []

        def on_start(job: Job, on_device: str) -> None:
            for cell in job.cells:
                store.mark_running(cell.cell_id, device=on_device)
                in_flight.add(cell.cell_id)
                started.append(cell.cell_id)
                emit(CellStarted(cell.cell_id, cell.label, on_device, len(job.cells)))

        def on_event(cell_id: str, event: Any) -> None:
            emit(CellProgress(cell_id, event))

        def on_done(outcomes: Sequence[CellOutcome]) -> None:
            with uninterruptible():
                with store.together():  # a pack's cells: all recorded, or none
                    for outcome in outcomes:
                        _record(store, outcome, base_env)
                in_flight.difference_update(o.cell_id for o in outcomes)
                store.write_mirrors()
                if not keep_checkpoints:
                    release_checkpoints(outcomes, packs_dir(out_dir))
            for outcome in outcomes:
                emit(CellFinished(outcome.cell_id, outcome.status, store.cell(outcome.cell_id)))

        if blocked:  # found before any cell trains
            on_done(blocked)
        try:
            with sigterm_as_interrupt():
                runner.run(jobs, on_start, on_event, on_done)
        except KeyboardInterrupt:
            with uninterruptible():
                for cell_id in sorted(in_flight):
                    store.set_status(cell_id, CellStatus.PENDING, INTERRUPTED)
                store.write_mirrors()
            raise
        final = store.cells()
        return GridSummary(
            out_dir=str(out_dir),
            cells=tuple(final),
            ran=tuple(started),
            counts=store.status_counts(),
            table=results_table(final_rows(final), metric),
            notes=notes,
        )


def train(
    arch: str,
    out_dir: str | os.PathLike[str],
    *,
    residual: str = "on",
    residual_alpha: float | None = None,
    weights: str = "none",
    freeze: str = "none",
    seed: int = 0,
    data: str = "demo",
    recipe: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "torchvision",
    bn: str = "frozen",
    device: str | None = None,
    callback: Callable[[GridEvent], None] | None = None,
    keep_checkpoints: bool = False,
) -> CellRow:
    """Train one configuration: a grid of one cell in ``out_dir`` (what ``resablate train`` does).

    The same store, run directory, resume and checks as :func:`run_grid`; a rerun keeps the
    finished cell. Arguments name one value of each :class:`~resablate.grid.spec.GridSpec` axis
    (``overrides``: recipe fields by name).

    Returns:
        The cell's stored row (``status``, metrics, counts, ``run_dir``).
    """
    spec = GridSpec(
        depths=(),
        archs=(arch,),
        residual=(residual,),
        residual_alpha=None if residual_alpha is None else (residual_alpha,),
        weights=(weights,),
        freeze=(freeze,),
        seeds=(seed,),
        data=data,
        recipe=recipe,
        overrides=tuple((overrides or {}).items()),
        source=source,
        bn=bn,
    )
    summary = run_grid(
        spec, out_dir, device=device, callback=callback, keep_checkpoints=keep_checkpoints
    )
    (row,) = summary.cells
    return row
