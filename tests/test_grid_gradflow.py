"""``resablate grid --log-gradflow``: per-stage gradient norms in each done cell's run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grid_helpers import one_thread, tiny_grid_args, write_tiny_dataset
from typer.testing import CliRunner

from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore
from resablate_cli.app import app

STAGES = ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "fc"]


@pytest.mark.slow
def test_log_gradflow_writes_one_record_per_step_per_done_cell(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = [*tiny_grid_args(data, out), "--log-gradflow", "--gradflow-every", "1"]
    with one_thread():
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with ResultStore.open(out) as store:
        rows = store.cells()
    overrides = (("max_steps", 3), ("image_size", 16), ("batch_size", 4))
    spec = GridSpec(
        weights=("none",), depths=(18,), data=str(data), recipe="demo", overrides=overrides
    )
    assert [c.cell_id for c in spec.cells()] == [r.cell_id for r in rows]  # a run option only
    assert [r.status for r in rows] == ["done", "done"]
    for row in rows:
        lines = (Path(row.run_dir) / "gradflow.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["step"] for r in records] == [1, 2, 3]
        for record in records:
            assert list(record["norms"]) == STAGES
            assert all(value > 0 for value in record["norms"].values())
