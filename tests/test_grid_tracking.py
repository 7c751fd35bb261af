"""Experiment trackers, for real and offline: a two-cell grid logged to TensorBoard, MLflow and W&B
and read back with each one's own reader; a failing tracker; the CLI's ``--track`` and its bad
input."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from grid_helpers import one_thread, tiny_grid_args, write_tiny_dataset
from typer.testing import CliRunner
from wandb_records import read_run

from resablate.choices import TRACKERS, CellStatus
from resablate.engine.events import StepProgress
from resablate.grid import tracking
from resablate.grid.events import CellProgress, GridEvent, fan_out
from resablate.grid.runner import run_grid
from resablate.grid.spec import GridSpec
from resablate.grid.store import CellRow, EvaluationRow, ResultStore
from resablate.grid.summary import GridSummary
from resablate.grid.tracking import GridTracking, wandb_mode
from resablate_cli.app import app

METRICS = ("accuracy", "precision", "recall", "f1", "loss")
STEPS = 3


@dataclass
class Tracked:
    out: Path
    summary: GridSummary
    rows: dict[str, CellRow]
    history: dict[str, list[EvaluationRow]]
    step_losses: dict[str, list[tuple[int, float]]]
    problems: tuple[str, ...]


def _spec(data: Path, steps: int) -> GridSpec:
    """The tiny grid of ``tiny_grid_args``: ResNet-18 residual on/off, 16 px, batch 4."""
    overrides = (("max_steps", steps), ("image_size", 16), ("batch_size", 4))
    return GridSpec(
        depths=(18,), weights=("none",), data=str(data), recipe="demo", overrides=overrides
    )


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    root = tmp_path_factory.mktemp("tracked")
    data = write_tiny_dataset(root / "data")
    out = root / "ablation"
    step_losses: dict[str, list[tuple[int, float]]] = {}

    def record(event: GridEvent) -> None:
        if isinstance(event, CellProgress) and isinstance(event.event, StepProgress):
            step_losses.setdefault(event.cell_id, []).append((event.event.step, event.event.loss))

    with pytest.MonkeyPatch.context() as env, one_thread():
        for name in ("MLFLOW_TRACKING_URI", "WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT"):
            env.delenv(name, raising=False)
        env.setenv("NETRC", str(root / "no-netrc"))
        # Unset for the run (the tracker sets it for its default store), restored afterwards.
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "unset-below")
        env.delenv("MLFLOW_ALLOW_FILE_STORE")
        trackers = GridTracking(list(TRACKERS))
        try:
            summary = run_grid(
                _spec(data, STEPS), out, device="cpu", callback=fan_out(record, trackers)
            )
        finally:
            trackers.close()
        with ResultStore.open(out) as store:
            rows = {row.cell_id: row for row in store.cells()}
            history = {cell_id: store.evaluations(cell_id) for cell_id in rows}
        yield Tracked(out, summary, rows, history, step_losses, trackers.problems)


def _store_series(rows: list[EvaluationRow], split: str, metric: str) -> list[tuple[int, float]]:
    return [(r.step, getattr(r, metric)) for r in rows if r.split == split]


def _splits(rows: list[EvaluationRow]) -> list[str]:
    return sorted({str(r.split) for r in rows})


def test_the_grid_ran_with_every_tracker(tracked: Tracked) -> None:
    assert tracked.problems == ()
    assert tracked.summary.warnings == ()
    assert [row.status for row in tracked.rows.values()] == [CellStatus.DONE] * 2
    for cell_id, rows in tracked.history.items():
        assert _splits(rows) == ["test", "train"]
        assert [step for step, _ in tracked.step_losses[cell_id]] == list(range(1, STEPS + 1))


def test_tensorboard_event_files_hold_the_store_history(tracked: Tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def f32(series: list[tuple[int, float]]) -> list[tuple[int, float]]:
        # TensorBoard's event files store scalars as float32.
        return [(step, float(np.float32(value))) for step, value in series]

    assert sorted(p.name for p in (tracked.out / "tensorboard").iterdir()) == sorted(tracked.rows)
    for cell_id, row in tracked.rows.items():
        events = EventAccumulator(str(tracked.out / "tensorboard" / cell_id))
        events.Reload()

        def scalars(tag: str, acc: EventAccumulator = events) -> list[tuple[int, float]]:
            return [(e.step, e.value) for e in acc.Scalars(tag)]

        for split in _splits(tracked.history[cell_id]):
            for metric in METRICS:
                series = _store_series(tracked.history[cell_id], split, metric)
                if series[0][1] is not None:
                    assert scalars(f"{split}/{metric}") == f32(series)
        assert scalars("step/loss") == f32(tracked.step_losses[cell_id])
        assert scalars("final/f1") == f32([(STEPS, row.f1)])
        assert scalars("final/params") == f32([(STEPS, row.params)])
        config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f'"cell_id": "{cell_id}"' in config
        assert '"batch_size": 4' in config


def test_mlflow_file_store_holds_one_run_per_cell(tracked: Tracked) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked.out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("ablation")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(tracked.rows) == 2
    by_cell = {run.data.tags["resablate.cell_id"]: run for run in runs}
    assert set(by_cell) == set(tracked.rows)
    for cell_id, run in by_cell.items():
        row = tracked.rows[cell_id]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == row.cell.label
        assert run.data.tags["resablate.grid"] == "ablation"
        assert run.data.tags["resablate.status"] == "done"
        params = run.data.params
        assert params["cell_id"] == cell_id
        assert params["cell.arch"] == "resnet18"
        assert params["cell.residual"] == row.cell.to_dict()["residual"]
        assert params["recipe.batch_size"] == "4"
        assert params["recipe.max_steps"] == str(STEPS)
        run_id = run.info.run_id

        def history(key: str, run_id: str = run_id) -> list[tuple[int, float]]:
            return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

        for split in _splits(tracked.history[cell_id]):
            for metric in METRICS:
                series = _store_series(tracked.history[cell_id], split, metric)
                if series[0][1] is not None:
                    assert history(f"{split}/{metric}") == series
        assert history("step/loss") == tracked.step_losses[cell_id]
        assert run.data.metrics["final/f1"] == row.f1
        assert run.data.metrics["final/accuracy"] == row.accuracy
        assert run.data.metrics["final/flops"] == row.flops


def test_wandb_offline_runs_hold_the_store_history(tracked: Tracked) -> None:
    files = sorted((tracked.out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    runs = {run.config["cell_id"]: run for run in map(read_run, files)}
    assert set(runs) == set(tracked.rows)
    for cell_id, run in runs.items():
        row = tracked.rows[cell_id]
        assert run.run.run_group == "ablation"
        assert run.run.display_name == row.cell.label
        assert run.run.project == "resablate"
        assert run.config["cell"] == row.cell.to_dict()
        assert run.config["recipe"]["batch_size"] == 4
        for split in _splits(tracked.history[cell_id]):
            for metric in METRICS:
                series = _store_series(tracked.history[cell_id], split, metric)
                if series[0][1] is not None:
                    assert run.history[f"{split}/{metric}"] == series
        assert run.history["step/loss"] == tracked.step_losses[cell_id]
        assert run.summary["final/f1"] == row.f1
        assert run.summary["status"] == "done"
        assert run.exit_code == 0


def test_trackers_are_the_closed_set_and_each_has_a_backend() -> None:
    assert tuple(tracking._BACKENDS) == TRACKERS


def test_wandb_never_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password k\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode() == "online"


class _Broken:
    """A tracker whose runs fail at their first log."""

    def __init__(self, grid_dir: Path) -> None:
        self.grid_dir = grid_dir

    def start(self, cell: tracking.TrackedCell) -> _Broken:
        return self

    def log(self, values: object, step: int) -> None:
        raise OSError("disk full")

    def finish(self, final: object, step: int, status: str) -> None:
        raise AssertionError("a stopped tracker is not called again")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_failing_tracker_is_one_line_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tracking._BACKENDS, "tensorboard", _Broken)
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    with one_thread():
        result = CliRunner().invoke(
            app,
            [*tiny_grid_args(data, out, max_steps=1), "--track", "tensorboard"],
            env={"COLUMNS": "200"},
        )
    assert result.exit_code == 0, result.output
    with ResultStore.open(out) as store:
        assert [row.status for row in store.cells()] == [CellStatus.DONE] * 2
        first = store.cells()[0].cell_id
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert lines == [
        f"warning: tensorboard tracking stopped at cell {first}: OSError: disk full (the "
        "grid's results are unaffected)"
    ]


def test_train_tracks_its_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--arch", "resnet18", "--data", str(data), "--recipe", "demo"]
    args += ["--max-steps", "2", "--image-size", "16", "--batch-size", "4", "--device", "cpu"]
    with one_thread():
        result = CliRunner().invoke(app, [*args, "--out", str(out), "--track", "tensorboard"])
    assert result.exit_code == 0, result.output
    (cell_dir,) = (out / "tensorboard").iterdir()
    events = EventAccumulator(str(cell_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("step/loss")] == [1, 2]


def test_unknown_tracker_lists_the_choices(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, [*tiny_grid_args(data, out), "--track", "neptune"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "'neptune' is not one of 'tensorboard', 'mlflow', 'wandb'" in _flat(result.output)
    assert not out.exists()


@pytest.mark.parametrize("command", ["grid", "train"])
def test_a_missing_extra_names_its_install_command(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # find_spec: not installed
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = tiny_grid_args(data, out)
    if command == "train":
        args = ["train", "--arch", "resnet18", *args[8:]]
    result = CliRunner().invoke(app, [*args, "--track", "tensorboard", "--track", "mlflow"])
    assert result.exit_code == 2
    assert result.output == (
        "error: tracker mlflow needs its optional extra: pip install 'resablate[mlflow]' "
        "(--track)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("command", ["grid", "train"])
def test_help_names_the_trackers_and_their_extras(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = _flat(result.output)
    assert "--track" in text
    assert "tensorboard, mlflow or wandb" in text
    assert "pip install 'resablate[mlflow]'" in text
