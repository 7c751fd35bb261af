"""The training path's results, recorded before the house refactor (issue 20): a grid of four
ResNet-18 cells trained alone (K = 1) and as one pack (K = 4) must keep giving these numbers.

Recorded on main at 4eba33c with one torch thread on the 2-core development CPU (AMD EPYC). The
classification metrics and step counts must be equal; losses agree to 1e-6 relative (on that CPU
they are bit-identical; another instruction set rounds differently, and packed vs alone already
differ by ~1e-5, so the tolerance still tells the two paths apart).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grid_helpers import one_thread, write_tiny_dataset

from resablate.grid.runner import run_grid
from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore

OVERRIDES = (
    ("max_steps", 4),
    ("image_size", 16),
    ("batch_size", 8),
    ("eval_every", 2),
    ("eval_batch_size", 32),
)
# Per pack mode, the cells in grid order: their store row's values and evaluation history.
RECORDED = json.loads((Path(__file__).parent / "golden_training.json").read_text())


def _close(value: float) -> object:
    return pytest.approx(value, rel=1e-6, abs=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("golden") / "data", per_class=48)


@pytest.mark.slow
@pytest.mark.parametrize("pack", ["off", "4"])
def test_alone_and_packed_runs_give_the_recorded_results(
    data: Path, tmp_path: Path, pack: str
) -> None:
    spec = GridSpec(
        family="resnet",
        depths=(18,),
        residual=("on", "off:conv5_x"),
        weights=("none",),
        seeds=(0, 1),
        data=str(data),
        recipe="demo",
        overrides=OVERRIDES,
    )
    with one_thread():
        summary = run_grid(spec, tmp_path, pack=pack)
    with ResultStore.open(tmp_path) as store:
        for row, recorded in zip(summary.cells, RECORDED[pack], strict=True):
            assert (row.cell.residual.text, row.cell.seed) == (
                recorded["residual"],
                recorded["seed"],
            )
            for name in ("status", "steps", "accuracy", "precision", "recall", "f1"):
                assert getattr(row, name) == recorded[name], name
            assert row.loss == _close(recorded["loss"])
            history = recorded["history"]
            evaluations = store.evaluations(row.cell_id)
            assert [(e.split, e.step, e.accuracy) for e in evaluations] == [
                (h["split"], h["step"], h["accuracy"]) for h in history
            ]
            assert [e.loss for e in evaluations] == [_close(h["loss"]) for h in history]
