"""What ``resablate grid`` shows while it runs: cells done, elapsed, a measured ETA, --quiet."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from grid_helpers import one_thread, tiny_grid_args, write_tiny_dataset
from typer.testing import CliRunner

from resablate.choices import CellStatus
from resablate.engine.events import StepProgress, TrainStarted
from resablate.grid.events import (
    CellProgress,
    CellStarted,
    DemoWeightsPretraining,
    DemoWeightsReady,
    GridStarted,
)
from resablate_cli import grid as grid_cli
from resablate_cli.app import app


def _row(cell_id: str) -> SimpleNamespace:
    cell = SimpleNamespace(label=f"resnet18 · {cell_id}")
    return SimpleNamespace(
        cell_id=cell_id, cell=cell, status=CellStatus.PENDING, device=None, f1=None
    )


def _started(total: int, start: int = 0) -> TrainStarted:
    return TrainStarted(
        total_steps=total,
        start_step=start,
        steps_per_epoch=total,
        images_per_step=4,
        device="cpu",
        amp="none",
        skipped_checkpoints=(),
        ran_on="cpu · fp32",
    )


def _step(step: int, total: int, eta: float) -> StepProgress:
    return StepProgress(
        step=step,
        total_steps=total,
        epoch=step / total,
        loss=0.6931,
        lr=1e-3,
        images_per_second=100.0,
        eta_seconds=eta,
    )


def test_the_header_counts_cells_and_measures_the_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(grid_cli.time, "monotonic", lambda: clock[0])
    lines: list[str] = []
    view = grid_cli.GridView(live=False, metric="f1")
    monkeypatch.setattr(view, "note", lines.append)
    rows = (_row("a"), _row("b"), _row("c"))
    view(GridStarted("runs/x", rows, ("a", "b", "c"), ()))
    assert view.header() == "cells 0/3 done · elapsed 0 s · ETA measuring…"
    view(CellStarted("a", "resnet18 · a", "cpu"))
    view(CellProgress("a", _started(10)))
    clock[0] += 20.0  # 4 steps in 20 s: 5 s per step
    view(CellProgress("a", _step(4, 10, eta=30.0)))
    # Left: 6 steps of a, and 10 for each of b and c (the steps of the cells seen): 26 x 5 s.
    assert view.eta_seconds() == pytest.approx(130.0)
    assert view.header() == "cells 0/3 done · elapsed 20 s · ETA 2 min 10 s"
    assert view.rows["a"]["progress"] == "4/10" and view.rows["a"]["loss"] == "0.6931"
    assert lines[-1] == (
        "progress a step 4/10 loss 0.6931 · cells 0/3 done · elapsed 20 s · ETA 2 min 10 s"
    )


def test_demo_weights_pre_training_is_said_once_with_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines: list[str] = []
    view = grid_cli.GridView(live=False, metric="f1")
    monkeypatch.setattr(view, "note", lines.append)
    view(GridStarted("runs/x", (_row("a"), _row("b")), ("a", "b"), ()))
    for cell_id in ("a", "b"):  # a pack's cells each receive the events
        view(CellProgress(cell_id, DemoWeightsPretraining("resnet18", "torchvision", "/c/r.st")))
        view(CellProgress(cell_id, DemoWeightsReady("resnet18", "torchvision", "/c/r.st", 83.4)))
    assert lines[1:] == [
        "weights  pre-training the demo weights of resnet18 on the proxy task (once per "
        "architecture, on the CPU; cached for every later cell and run)",
        "ready    demo weights of resnet18 pre-trained in 1 min 23 s: /c/r.st",
    ]


@pytest.mark.slow
def test_quiet_prints_nothing_and_plain_output_says_each_cell(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    runner = CliRunner()
    with one_thread():
        loud = runner.invoke(app, tiny_grid_args(data, tmp_path / "loud", max_steps=2))
        quiet = runner.invoke(app, [*tiny_grid_args(data, tmp_path / "quiet", 2), "--quiet"])
    assert loud.exit_code == 0, loud.output
    lines = loud.stderr.splitlines()
    assert lines[0] == f"2 cells in {tmp_path / 'loud'}: 2 to run, 0 already finished"
    events = [line.split()[0] for line in lines[1:] if not line.startswith("progress")]
    assert events == ["start", "done", "start", "done"]
    # The first step prints a progress line at once, then one every PLAIN_EVERY seconds.
    progress = [line for line in lines if line.startswith("progress")]
    assert re.fullmatch(
        r"progress \w{12} step 1/2 loss \d\.\d{4} · cells 0/2 done · elapsed \d+ s · ETA \d+ s",
        progress[0],
    )
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")


@pytest.mark.slow
def test_train_quiet_prints_nothing(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    args = ["train", "--arch", "resnet18", "--data", str(data), "--recipe", "demo"]
    args += ["--image-size", "16", "--batch-size", "4", "--max-steps", "1", "--device", "cpu"]
    with one_thread():
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out"), "--quiet"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_usage_errors_are_one_line() -> None:
    result = CliRunner().invoke(app, ["grid", "--track", "neptune", "--dry-run"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: Invalid value for '--track': Value error, 'neptune' is not one of "
        "'tensorboard', 'mlflow', 'wandb'. (see: resablate grid --help)\n"
    )


def test_train_plain_lines_show_elapsed_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    from resablate_cli import train as train_cli

    clock = [500.0]
    monkeypatch.setattr(train_cli.time, "monotonic", lambda: clock[0])
    lines: list[str] = []
    view = train_cli.TrainView(plain=True)
    monkeypatch.setattr(view, "log", lambda cell_id, line: lines.append(line))
    clock[0] += 75.0
    view.step("a", _step(4, 10, eta=90.0))
    assert lines == [
        "step 4/10  epoch 0.40  loss 0.6931  lr 0.001  100 img/s  elapsed 00:01:15  ETA 00:01:30"
    ]
