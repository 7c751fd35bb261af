"""The pre-flight pass: every cell's weights are resolved before any cell trains, in a run and in
a dry run alike, so a cell that would be skipped or fail says so up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from grid_helpers import write_tiny_dataset

from resablate.choices import CellStatus
from resablate.grid.job import Job
from resablate.grid.plan import plan_grid
from resablate.grid.runner import run_grid
from resablate.grid.spec import GridSpec
from resablate.weights import build_model, save_state_dict_file

FAST = (("max_steps", 1), ("image_size", 16), ("batch_size", 4))


def _spec(data: Path, weights: tuple[str, ...]) -> GridSpec:
    return GridSpec(
        depths=(18,),
        residual=("on",),
        weights=weights,
        data=str(data),
        recipe="demo",
        overrides=FAST,
    )


def _other_architecture(path: Path) -> str:
    torch.manual_seed(0)
    save_state_dict_file(build_model("resnet34", num_classes=2).state_dict(), path)
    return str(path)


@pytest.fixture(autouse=True)
def no_imagenet_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty upstream cache (other tests write ImageNet stand-ins into the session's)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_a_run_records_what_would_stop_before_training(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    wrong = _other_architecture(tmp_path / "r34.safetensors")
    spec = _spec(data, ("none", "imagenet", wrong))
    trained: list[str] = []

    def runner(job: Job, **kwargs: Any) -> list[Any]:
        trained.extend(cell.weights.text for cell in job.cells)
        raise RuntimeError("stop here")  # the test is what happened before

    summary = run_grid(spec, tmp_path / "out", device="cpu", job_runner=runner)
    by_weights = {row.cell.weights.kind: row for row in summary.cells}
    assert trained == ["none"]  # the others never reached a worker
    skipped, failed = by_weights["imagenet"], by_weights["file"]
    assert skipped.status == CellStatus.SKIPPED
    assert skipped.reason.startswith("ImageNet weights ResNet18_Weights.IMAGENET1K_V1 for resnet18")
    assert failed.status == CellStatus.FAILED
    assert failed.reason.startswith(f"WeightsError: {wrong}: weights do not fit resnet18")


def test_a_dry_run_says_which_cells_would_stop(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    wrong = _other_architecture(tmp_path / "r34.safetensors")
    plan = plan_grid(_spec(data, ("none", "imagenet", wrong)), tmp_path / "out", device="cpu")
    assert [c.status for c in plan.cells] == [
        CellStatus.PENDING,
        CellStatus.SKIPPED,
        CellStatus.FAILED,
    ]
    assert plan.cells[0].reason is None
    assert plan.cells[1].reason.startswith("ImageNet weights ResNet18_Weights.IMAGENET1K_V1")
    assert plan.cells[2].reason.startswith(f"WeightsError: {wrong}: weights do not fit resnet18")
    assert plan.cells[1].estimated_seconds == plan.cells[2].estimated_seconds == 0.0
    assert plan.estimated_seconds == plan.cells[0].estimated_seconds > 0
    assert 0 < plan.probe_seconds < 30
    assert not (tmp_path / "out").exists()
