"""The Ray executor on a real two-node cluster on this machine: a lost worker node is a retry that
resumes from the cell's newest checkpoint, with metrics identical to an undisturbed run, while a
cell that raises is failed at once; a node without the grid's folder is refused at start. The
cluster runs in private network and PID namespaces (``tests/ray_scenario.py``): it binds only to
127.0.0.1, and it cannot outlive the test (the kernel ends every process of the namespace when its
first process exits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from grid_helpers import RAY_NAMESPACES, one_thread, ray_isolation_reason, write_tiny_dataset

from resablate.grid.runner import run_grid
from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore


@pytest.mark.slow
def test_a_lost_worker_node_resumes_the_cell_and_a_private_folder_is_refused(
    tmp_path: Path,
) -> None:
    pytest.importorskip("ray", reason="ray is not installed (pip install 'resablate[ray]')")
    reason = ray_isolation_reason()
    if reason is not None:
        # Ray 2.x binds its ports on every interface; without a private network namespace the
        # test would expose them, so it does not run.
        pytest.skip(f"cannot isolate a Ray cluster on loopback: {reason}")
    data = write_tiny_dataset(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    script = Path(__file__).with_name("ray_scenario.py")
    done = subprocess.run(
        [*RAY_NAMESPACES, sys.executable, str(script), str(work), str(data)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scenario = json.loads(done.stdout.splitlines()[-1])
    output = scenario["driver_output"]
    assert scenario["driver_exit"] == 3, output[-3000:]  # the cell with broken weights failed
    assert scenario["finished_before_kill"] is False  # killed mid-cell
    assert scenario["killed"] >= 2  # the raylet and the worker running the cell, at least
    killed_at = int(scenario["checkpoints_at_kill"][-1][len("step-") : -len(".pt")])

    spec = GridSpec(
        depths=(18,),
        residual=("on",),
        weights=("none",),
        data=str(data),
        recipe="demo",
        overrides=(
            ("max_steps", 60),
            ("image_size", 16),
            ("batch_size", 4),
            ("checkpoint_every", 5),
            ("eval_every", 20),
        ),
    )
    with one_thread():
        undisturbed = run_grid(spec, tmp_path / "undisturbed", device="cpu")
    (cell,) = undisturbed.cells
    with ResultStore.open(work / "shared" / "grid") as store:
        on_ray, raised = sorted(store.cells(), key=lambda row: row.status != "done")
    # A cell whose weights file cannot be read is failed by the pre-flight pass, before any cell
    # ran (never sent to Ray, never retried).
    assert (raised.status, raised.attempts) == ("failed", 0)
    assert raised.reason.startswith("WeightsError: cannot read weights file ")
    assert f"failed   {raised.cell_id}" in output
    assert on_ray.cell_id == cell.cell_id
    assert (on_ray.status, on_ray.attempts) == ("done", 1)
    metrics = ("accuracy", "precision", "recall", "f1", "loss", "steps")
    assert [getattr(on_ray, m) for m in metrics] == [getattr(cell, m) for m in metrics]
    ray_dir, local_dir = Path(on_ray.run_dir), Path(cell.run_dir)
    for name in ("predictions.csv", "model.safetensors", "history.jsonl"):
        assert (ray_dir / name).read_bytes() == (local_dir / name).read_bytes(), name
    resumed = json.loads((ray_dir / "result.json").read_text())["resumed_from_step"]
    assert resumed == killed_at > 0

    # The driver said where cells run and how losses are handled, and showed the Ray task's
    # progress events, including the resume.
    assert "note: ray: 1 node(s) can run cells and each sees" in output
    assert "a cell whose worker or node is lost is run again up to 3 times" in output
    assert f"resume   {cell.cell_id} at step {killed_at}/{on_ray.steps} from its checkpoint" in (
        output
    )
    assert f"progress {cell.cell_id} step" in output

    assert scenario["private_exit"] == 2
    refusal = scenario["private_stderr"].strip().splitlines()[-1]
    assert refusal.startswith(
        f"error: the grid folder {work / 'shared' / 'grid2'} is not visible from Ray node(s) "
        "127.0.0.1 ("
    )
    assert refusal.endswith(
        "the ray executor needs the output folder on a file system that every node mounts at the "
        "same path (cells write their checkpoints there and resume from them on another node) "
        "(--out)"
    )
