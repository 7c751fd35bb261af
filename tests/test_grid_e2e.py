"""The grid end to end with the real run_cell on tiny generated data (CPU, offline).

Includes the fault test (SIGKILL at seeded random points, then resume) and the lock refusal of a
second grid process, the divergence/failure isolation with honest causes (a NaN weights file, a
weights file of the wrong architecture) and the Ray executor.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from grid_helpers import (
    RAY_NAMESPACES,
    imagenet_standins,
    one_thread,
    ray_isolation_reason,
    write_tiny_dataset,
)
from typer.testing import CliRunner

from resablate.grid.runner import run_grid
from resablate.grid.spec import GridSpec
from resablate.grid.store import RESULT_COLUMNS, ResultStore
from resablate.grid.summary import GridSummary
from resablate_cli.app import app

# Checkpoint every step so that a killed cell resumes mid-run (the fault test).
TINY = (("max_steps", 2), ("image_size", 16), ("batch_size", 4), ("checkpoint_every", 1))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def _results(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


@dataclass(frozen=True)
class Reference:
    spec: GridSpec
    out: Path
    summary: GridSummary


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The tiny study, uninterrupted: ResNet-18/34 × residual on/off × ImageNet stand-in/none,
    each cell trained alone (packed grids: tests/test_grid_packs.py)."""
    imagenet_standins(("resnet18", "resnet34"))
    spec = GridSpec(
        depths=(18, 34),
        weights=("imagenet", "none"),
        data=str(data),
        recipe="demo",
        overrides=TINY,
    )
    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    return Reference(spec, out, run_grid(spec, out, device="cpu", pack="off"))


@pytest.mark.slow
def test_tiny_grid_finishes_and_a_rerun_trains_nothing(reference: Reference) -> None:
    out = reference.out
    rows = _results(out)
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [(r["depth"], r["residual"], r["pretrained"], r["status"]) for r in rows] == [
        ("18", "on", "imagenet", "done"),
        ("18", "on", "none", "done"),
        ("18", "off", "imagenet", "done"),
        ("18", "off", "none", "done"),
        ("34", "on", "imagenet", "done"),
        ("34", "on", "none", "done"),
        ("34", "off", "imagenet", "done"),
        ("34", "off", "none", "done"),
    ]
    assert {r["params"] for r in rows[:4]} == {"11177538"}  # ResNet-18 with a 2-class head
    assert all(r["f1"] != "" and r["device"] == "cpu" for r in rows)
    assert len(reference.summary.ran) == 8
    with ResultStore.open(out) as store:
        first = store.cells()[0]
        assert len(store.predictions(first.cell_id)) == 8  # the test split
        assert [e.step for e in store.evaluations(first.cell_id) if e.split == "test"] == [2]
        assert set(first.environment) >= {"git_revision", "torch", "dataset_fingerprint"}
    before = (out / "results.csv").read_bytes()
    again = run_grid(reference.spec, out, device="cpu")
    assert again.ran == () and again.counts["done"] == 8
    assert (out / "results.csv").read_bytes() == before


@pytest.mark.slow
def test_nan_weights_diverge_wrong_weights_fail_and_the_rest_finish(
    data: Path, tmp_path: Path
) -> None:
    import torchvision

    nan_state = torchvision.models.resnet18().state_dict()
    for value in nan_state.values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(nan_state, tmp_path / "nan.pth")
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pth")
    spec = GridSpec(
        depths=(18,),
        residual=("on",),
        weights=("none", str(tmp_path / "nan.pth"), str(tmp_path / "alexnet.pth")),
        data=str(data),
        overrides=TINY,
    )
    run_grid(spec, tmp_path / "out", device="cpu")
    rows = _results(tmp_path / "out")
    assert [(r["pretrained"].rsplit("/", 1)[-1], r["status"]) for r in rows] == [
        ("none", "done"),
        ("nan.pth", "diverged"),
        ("alexnet.pth", "failed"),
    ]
    assert rows[1]["reason"].startswith("non-finite")
    alexnet = tmp_path / "alexnet.pth"
    assert rows[2]["reason"].startswith(
        f"WeightsError: {alexnet}: weights do not fit resnet18 (torchvision)"
    )


def _grid_command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "resablate_cli",
        "grid",
        "--depths",
        "18",
        "--weights",
        "imagenet",
        "none",
        "--data",
        str(data),
        "--recipe",
        "demo",
        "--max-steps",
        "2",
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--set",
        "checkpoint_every=1",
        "--pack",
        "off",
        "--out",
        str(out),
    ]


def _snapshot(out: Path) -> dict[str, tuple[str, str | None, int, float | None]]:
    conn = sqlite3.connect(out / "store.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT cell_id, status, finished_at, attempts, f1 FROM cells").fetchall()
    conn.close()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def _holder_pid(out: Path) -> int | None:
    try:
        return int(json.loads((out / ".lock").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _done_count(out: Path) -> int:
    if not (out / "store.sqlite").exists():
        return 0
    conn = sqlite3.connect(out / "store.sqlite")
    try:
        return int(conn.execute("SELECT count(*) FROM cells WHERE status = 'done'").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not written yet
        return 0
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_loses_nothing(
    data: Path, tmp_path: Path, reference: Reference
) -> None:
    expected = {
        r.cell_id: (r.accuracy, r.f1, r.loss) for r in reference.summary.cells if r.depth == 18
    }
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(5)
    # Kill point i: once the store holds `targets[i]` done cells (of 4), after a seeded random
    # delay: kills land in the store's set-up, in model building, mid-training, in checkpoint and
    # store writes, and between cells.
    targets = sorted(rng.choice((0, 1, 2)) for _ in range(5))
    kills = 0
    done_before: dict[str, tuple[str, str | None, int, float | None]] = {}
    refused = False
    for target in targets:
        process = subprocess.Popen(
            _grid_command(data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while (
            _holder_pid(out) != process.pid or _done_count(out) < target
        ) and process.poll() is None:
            assert time.monotonic() < deadline, "the grid process made no progress"
            time.sleep(0.05)
        if not refused and process.poll() is None:
            # A second grid on the same --out is refused, naming the holder.
            second = CliRunner().invoke(app, ["grid", "--out", str(out), "--data", str(data)])
            assert second.exit_code == 2
            assert f"is in use by pid {process.pid} on " in " ".join(second.output.split())
            refused = True
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        now = _snapshot(out)
        for cell_id, state in done_before.items():
            assert now[cell_id] == state, "a done cell was lost or retrained"
        done_before = {k: v for k, v in now.items() if v[0] == "done"}
    assert refused and kills == 5
    # The last rerun (in this process: same code, same thread count) finishes the grid.
    spec = GridSpec(
        depths=(18,), weights=("imagenet", "none"), data=str(data), recipe="demo", overrides=TINY
    )
    final = run_grid(spec, out, device="cpu")
    assert set(final.ran) == set(expected) - set(done_before)
    end = _snapshot(out)
    for cell_id, state in done_before.items():
        assert end[cell_id] == state
    with ResultStore.open(out) as store:
        got = {r.cell_id: (r.accuracy, r.f1, r.loss) for r in store.cells()}
        assert {r.status for r in store.cells()} == {"done"}
    assert got == expected


@pytest.mark.slow
def test_ray_executor_gives_the_same_cells_as_local(
    data: Path, tmp_path: Path, reference: Reference
) -> None:
    pytest.importorskip("ray")
    reason = ray_isolation_reason()
    if reason is not None:
        pytest.skip(f"cannot keep a local Ray on loopback: {reason}")
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from ray_scenario import loopback_up
from resablate.grid.runner import run_grid
loopback_up()
from resablate.grid.spec import GridSpec
spec = GridSpec(
    depths=(18,), weights=("none",), data={str(data)!r}, recipe="demo", overrides={TINY!r}
)
summary = run_grid(spec, {str(tmp_path / "ray")!r}, executor="ray", workers=2, pack="off")
print(json.dumps([(r.cell_id, r.status, r.accuracy, r.f1, r.loss) for r in summary.cells]))
"""
    done = subprocess.run(
        [*RAY_NAMESPACES, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    on_ray = json.loads(done.stdout.splitlines()[-1])
    local = {r.cell_id: r for r in reference.summary.cells}  # the same cells, run locally
    assert [status for _, status, *_ in on_ray] == ["done", "done"]
    assert [tuple(metrics) for _, _, *metrics in on_ray] == [
        (local[cell_id].accuracy, local[cell_id].f1, local[cell_id].loss) for cell_id, *_ in on_ray
    ]
