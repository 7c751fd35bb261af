"""The package facade: the workflow (train, GridSpec, run_grid, build_report), as in README."""

from __future__ import annotations

from pathlib import Path

import pytest
from grid_helpers import one_thread, write_tiny_dataset

import resablate
from resablate.grid import runner, spec
from resablate.report import build

FAST = {"max_steps": 2, "image_size": 16, "batch_size": 4, "eval_every": 1}


def test_the_facade_names_the_workflow() -> None:
    assert resablate.GridSpec is spec.GridSpec
    assert resablate.run_grid is runner.run_grid
    assert resablate.train is runner.train
    assert resablate.build_report is build.build_report
    assert {"GridSpec", "run_grid", "train", "build_report"} <= set(dir(resablate))


@pytest.mark.slow
def test_train_is_a_grid_of_one_cell(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    with one_thread():
        row = resablate.train(
            "resnet18", tmp_path / "run", residual="off", data=str(data), overrides=FAST
        )
        again = resablate.train(
            "resnet18", tmp_path / "run", residual="off", data=str(data), overrides=FAST
        )
    assert (row.status, row.steps, row.cell.residual.text) == ("done", 2, "off")
    assert again == row  # the rerun keeps the finished cell
    report = resablate.build_report(tmp_path / "run")
    assert [r.cell_id for r in report.cells] == [row.cell_id]
