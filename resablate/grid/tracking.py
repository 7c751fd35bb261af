"""Experiment trackers: each cell of a grid as one run in TensorBoard, MLflow or W&B.

:class:`GridTracking` is a grid callback (``run_grid(callback=...)``; with another callback,
``fan_out(view, tracking)``). It consumes the driver's :data:`~resablate.grid.events.GridEvent`
values, so it sees the cells of every executor (local workers, Ray) in the one process that
writes the store. For each cell that runs it opens one run when the cell starts and logs:

* its config, once: the cell's id, label, canonical config (``Cell.to_dict()``, what the id
  hashes) and effective recipe (``Recipe.to_dict()``);
* ``step/loss`` (mean fp32 cross-entropy since the previous report) and ``step/lr`` after each
  optimiser step the engine reports (``StepProgress``); a packed cell's step loss is its pack's
  mean, so a cell trained in a pack logs ``step/lr`` only (its own loss is ``train/loss``);
* ``<split>/<metric>`` for each history record, at its step: ``train/loss``,
  ``train/accuracy`` (running means since the previous record), ``val/...`` and ``test/...``
  (``accuracy``, ``precision``, ``recall``, ``f1``, ``loss``): the store's ``evaluations``;
* ``final/<name>`` when the cell finishes, at its last step: the stored row's test metrics,
  parameter counts, FLOPs, steps, train seconds and images per second, with its status.

Runs are grouped by grid, the name of the grid's folder (TensorBoard: one log directory per cell,
``OUT/tensorboard/<cell_id>``; MLflow: an experiment named after the grid, runs tagged
``resablate.cell_id`` and ``resablate.grid``; W&B: ``group=`` the grid). A cell that resumes
continues its run. A tracker that fails stops (that tracker alone) and says why in
:attr:`GridTracking.problems`, one line each: the grid and its results never depend on a
tracker. The trackers write files and never print.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import netrc
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from resablate.choices import METRICS, TRACKERS, CellStatus
from resablate.errors import ConfigError
from resablate.grid.events import CellFinished, CellProgress, CellStarted, GridEvent, GridStarted
from resablate.grid.store import CellRow

__all__ = [
    "TRACKERS",
    "GridTracking",
    "TrackedCell",
    "Tracker",
    "TrackerRun",
    "check_tracker",
    "wandb_mode",
]

#: The stored row's fields a run's final values hold besides the test metrics.
FINAL_FIELDS = ("params", "active_params", "flops", "steps", "train_seconds", "images_per_second")
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TrackedCell:
    """What a tracker knows of a cell when its run opens.

    Attributes:
        grid: The grid's name (its folder's name), the group of its runs.
        grid_dir: The grid's folder, absolute.
        cell_id: The cell's id.
        label: The cell's label, the run's name.
        config: ``cell_id``, ``label``, ``cell`` (``Cell.to_dict()``) and ``recipe``
            (``Recipe.to_dict()``), JSON-ready.
    """

    grid: str
    grid_dir: str
    cell_id: str
    label: str
    config: dict[str, Any]

    @classmethod
    def of(cls, row: CellRow, grid_dir: Path) -> TrackedCell:
        """The tracked cell of a stored row, in the grid stored in ``grid_dir``."""
        config = {
            "cell_id": row.cell_id,
            "label": row.cell.label,
            "cell": row.cell.to_dict(),
            "recipe": row.cell.effective_recipe.to_dict(),
        }
        return cls(grid_dir.name, str(grid_dir), row.cell_id, row.cell.label, config)


class TrackerRun(Protocol):
    """One cell's run in a tracker."""

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Log scalars (name -> value) at optimiser step ``step``."""

    def finish(self, final: Mapping[str, float], step: int, status: str) -> None:
        """Log the final values at ``step`` and end the run with ``status`` (a cell status, or
        ``"interrupted"``)."""


class Tracker(Protocol):
    """An experiment tracker: built with the grid's folder, opens one run per cell."""

    def start(self, cell: TrackedCell) -> TrackerRun:
        """Open (or, for a cell that resumes, reopen) the cell's run; log its config."""


def check_tracker(name: str) -> None:
    """Check that tracker ``name`` exists and its optional extra is installed.

    Raises:
        ConfigError: An unknown tracker (the legal names listed), or its extra is missing (the
            install command named).
    """
    if name not in TRACKERS:
        raise ConfigError(
            f"unknown tracker {name!r}; trackers: {', '.join(TRACKERS)}", field="trackers"
        )
    if importlib.util.find_spec(name) is None:
        raise ConfigError(
            f"tracker {name} needs its optional extra: pip install 'resablate[{name}]'",
            field="trackers",
        )


def _record_values(record: Any) -> dict[str, float]:
    """``<split>/<metric>`` of a history record (``EvalRecord``), the metrics it has."""
    return {
        f"{record.split}/{name}": float(getattr(record, name))
        for name in METRICS
        if getattr(record, name) is not None
    }


def _final_values(row: CellRow) -> dict[str, float]:
    """``final/<name>`` of a finished cell's stored row, the values it has."""
    return {
        f"final/{name}": float(getattr(row, name))
        for name in (*METRICS, *FINAL_FIELDS)
        if getattr(row, name) is not None
    }


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as ``a.b`` -> text (lists as JSON), for trackers whose params are flat."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


class GridTracking:
    """A grid callback that logs each cell that runs to the named trackers (module docstring).

    The trackers' extras are checked when it is built, before anything runs; each tracker is
    built when the grid starts, with the grid's folder. Call :meth:`close` when the grid ends
    (runs still open, e.g. after Ctrl-C, end as ``interrupted``).

    Args:
        trackers: Names of :data:`~resablate.choices.TRACKERS` (each used once).

    Raises:
        ConfigError: An unknown tracker, or one whose extra is not installed.
    """

    def __init__(self, trackers: Iterable[str]) -> None:
        self.names = tuple(dict.fromkeys(trackers))
        for name in self.names:
            check_tracker(name)
        self._problems: list[str] = []
        self._trackers: dict[str, Tracker] = {}
        self._runs: dict[str, dict[str, TrackerRun]] = {}
        self._rows: dict[str, CellRow] = {}
        self._grid_dir = Path()
        self._steps: dict[str, int] = {}
        self._packed: set[str] = set()

    @property
    def problems(self) -> tuple[str, ...]:
        """One line per tracker that failed and stopped, naming it and the error."""
        return tuple(self._problems)

    def __call__(self, event: GridEvent) -> None:
        if isinstance(event, GridStarted):
            self._grid_dir = Path(event.out_dir).resolve()
            self._rows = {row.cell_id: row for row in event.cells}
            for name in self.names:
                self._guard(name, "the grid's start", partial(self._build, name))
        elif isinstance(event, CellStarted):
            self._start(event)
        elif isinstance(event, CellProgress):
            self._progress(event)
        elif isinstance(event, CellFinished):
            self._end(event.cell_id, _final_values(event.row), str(event.row.status))

    def _build(self, name: str) -> None:
        self._trackers[name] = _BACKENDS[name](self._grid_dir)

    def _start(self, event: CellStarted) -> None:
        if event.pack_size > 1:
            self._packed.add(event.cell_id)
        row = self._rows[event.cell_id]
        runs = self._runs.setdefault(event.cell_id, {})

        def start(name: str, tracker: Tracker) -> None:
            runs[name] = tracker.start(TrackedCell.of(row, self._grid_dir))

        for name, tracker in list(self._trackers.items()):
            self._guard(name, f"cell {event.cell_id}", partial(start, name, tracker))

    def _progress(self, event: CellProgress) -> None:
        from resablate.engine.events import Evaluated, StepProgress

        inner = event.event
        if isinstance(inner, StepProgress):
            step, values = inner.step, {"step/lr": float(inner.lr)}
            if event.cell_id not in self._packed:
                values["step/loss"] = float(inner.loss)
        elif isinstance(inner, Evaluated):
            step, values = inner.record.step, _record_values(inner.record)
        else:
            return
        self._steps[event.cell_id] = step
        for name, run in list(self._runs.get(event.cell_id, {}).items()):
            self._guard(name, f"cell {event.cell_id}", partial(run.log, values, step))

    def _end(self, cell_id: str, final: Mapping[str, float], status: str) -> None:
        step = int(final.get("final/steps", self._steps.get(cell_id, 0)))
        for name, run in list(self._runs.pop(cell_id, {}).items()):
            self._guard(name, f"cell {cell_id}", partial(run.finish, final, step, status))

    def _guard(self, name: str, where: str, call: Callable[[], object]) -> None:
        """Run a tracker's call; a failure stops that tracker and becomes one problem line."""
        try:
            call()
        except Exception as exc:
            message = " ".join(str(exc).split())
            self._problems.append(
                f"{name} tracking stopped at {where}: {type(exc).__name__}: {message} "
                "(the grid's results are unaffected)"
            )
            self._trackers.pop(name, None)
            for runs in self._runs.values():
                runs.pop(name, None)

    def close(self) -> None:
        """End the runs still open as ``interrupted`` (a rerun resumes them)."""
        for cell_id in list(self._runs):
            self._end(cell_id, {}, INTERRUPTED)


class TensorBoardTracker:
    """One log directory per cell, ``OUT/tensorboard/<cell_id>`` (``tensorboard --logdir
    OUT/tensorboard`` shows the grid); the config as a JSON text summary. TensorBoard stores
    scalars as float32."""

    def __init__(self, grid_dir: Path) -> None:
        self.root = grid_dir / "tensorboard"

    def start(self, cell: TrackedCell) -> TrackerRun:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.root / cell.cell_id))
        writer.add_text("config", f"```json\n{json.dumps(cell.config, indent=2)}\n```")
        return _TensorBoardRun(writer)


class _TensorBoardRun:
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def finish(self, final: Mapping[str, float], step: int, status: str) -> None:
        self.log(final, step)
        self.writer.add_text("status", status, step)
        self.writer.close()


MLFLOW_CELL_TAG = "resablate.cell_id"
MLFLOW_GRID_TAG = "resablate.grid"
MLFLOW_GRID_DIR_TAG = "resablate.grid_dir"
_MLFLOW_STATUS = {CellStatus.DONE: "FINISHED", INTERRUPTED: "KILLED"}


class MlflowTracker:
    """An experiment named after the grid; one run per cell, tagged with the cell's id, the
    grid and its folder; the config as flat params (``cell.arch``, ``recipe.lr`` ...).

    The store is ``MLFLOW_TRACKING_URI`` when set, else the local file store ``OUT/mlruns``.
    MLflow 3 keeps the file store behind ``MLFLOW_ALLOW_FILE_STORE=true``: for that default
    resablate sets it in its own process when unset (``mlflow ui --backend-store-uri OUT/mlruns``
    needs it too); set ``MLFLOW_TRACKING_URI`` to use a database or a server.
    """

    def __init__(self, grid_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (grid_dir / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)

    def start(self, cell: TrackedCell) -> TrackerRun:
        from mlflow.entities import Param

        experiment = self.client.get_experiment_by_name(cell.grid)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(cell.grid)
        )
        earlier = [
            run
            for run in self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{MLFLOW_CELL_TAG}` = '{cell.cell_id}'"
            )
            if run.data.tags.get(MLFLOW_GRID_DIR_TAG) == cell.grid_dir
        ]
        if earlier:
            run_id = earlier[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return _MlflowRun(self.client, run_id)
        tags = {
            MLFLOW_CELL_TAG: cell.cell_id,
            MLFLOW_GRID_TAG: cell.grid,
            MLFLOW_GRID_DIR_TAG: cell.grid_dir,
        }
        run_id = self.client.create_run(experiment_id, tags=tags, run_name=cell.label).info.run_id
        params = [Param(key, value) for key, value in _flat(cell.config).items()]
        self.client.log_batch(run_id, params=params)
        return _MlflowRun(self.client, run_id)


class _MlflowRun:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log(self, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, final: Mapping[str, float], step: int, status: str) -> None:
        if final:
            self.log(final, step)
        self.client.set_tag(self.run_id, "resablate.status", status)
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS.get(status, "FAILED"))


def wandb_mode() -> Literal["online", "offline", "disabled"]:
    """The W&B mode a grid logs in: ``WANDB_MODE`` when it is ``offline`` or ``disabled``, else
    ``online`` with an API key (``WANDB_API_KEY`` or a netrc entry for the W&B host) and
    ``offline`` without one, so that W&B never prompts for a login."""
    mode = os.environ.get("WANDB_MODE")
    if mode == "offline":
        return "offline"
    if mode == "disabled":
        return "disabled"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        entry = None
    return "online" if entry else "offline"


class WandbTracker:
    """One W&B run per cell in project ``WANDB_PROJECT`` (default ``resablate``), ``group=`` the
    grid, named by the cell's label, with the config as its config; run files under
    ``OUT/wandb`` (offline runs upload later with ``wandb sync OUT/wandb/offline-run-*``). The
    run id is the cell's id and a hash of the grid's folder, so a cell that resumes continues
    its run. The mode: :func:`wandb_mode`."""

    def __init__(self, grid_dir: Path) -> None:
        import wandb

        self.grid_dir = grid_dir
        self.settings = wandb.Settings(
            mode=wandb_mode(), silent=True, console="off", reinit="create_new", disable_git=True
        )

    def start(self, cell: TrackedCell) -> TrackerRun:
        import wandb

        grid_hash = hashlib.sha256(cell.grid_dir.encode()).hexdigest()[:8]
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "resablate",
            group=cell.grid,
            name=cell.label,
            id=f"{cell.cell_id}-{grid_hash}",
            config=cell.config,
            dir=str(self.grid_dir),
            resume="allow",
            settings=self.settings,
        )
        return _WandbRun(run)


class _WandbRun:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, final: Mapping[str, float], step: int, status: str) -> None:
        self.run.summary.update({**final, "status": status})
        self.run.finish(exit_code=0 if status == CellStatus.DONE else 1)


_BACKENDS: dict[str, Callable[[Path], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}
