"""The grid driver with injected job runners: resume, failure isolation, interrupts, lock."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grid_helpers import write_tiny_dataset

from resablate.errors import DataError, StoreError, StoreLockedError, WeightsUnavailableError
from resablate.grid.cell import Cell
from resablate.grid.events import CellFinished, CellStarted, GridStarted
from resablate.grid.executors import execute_job, one_line
from resablate.grid.job import Job
from resablate.grid.lock import RunLock
from resablate.grid.plan import plan_grid
from resablate.grid.runner import INTERRUPTED, run_grid
from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore
from resablate.grid.summary import grid_status

SPEC = GridSpec(depths=(18, 34), residual=("on", "off"), weights=("none",))


@dataclass(frozen=True)
class FakeResult:
    """Stands in for run_cell's CellResult (same to_dict() shape)."""

    status: str
    f1: float
    reason: str | None = None
    environment: dict[str, Any] = dataclasses.field(default_factory=lambda: {"torch": "fake"})

    def to_dict(self) -> dict[str, Any]:
        done = self.status == "done"
        return {
            "status": self.status,
            "reason": self.reason,
            "metrics": {"f1": self.f1, "accuracy": self.f1} if done else None,
            "loss": 0.5 if done else None,
            "params": 100,
            "active_params": 90,
            "flops": 1000,
            "steps": 3,
            "train_seconds": 0.1,
            "images_per_second": 10.0,
            "environment": self.environment,
        }


class Recorder:
    """A job runner that records its calls and answers from a table keyed by (arch, residual)."""

    def __init__(self, behaviour: dict[tuple[str, str], Any] | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.behaviour = behaviour or {}

    def __call__(self, job: Job, *, device: str, callback: Any, resume: bool) -> list[Any]:
        return [self.run(cell, device=device, resume=resume) for cell in job.cells]

    def run(self, cell: Cell, *, device: str, resume: bool) -> Any:
        self.calls.append((cell.cell_id, resume))
        assert device == "cpu"
        action = self.behaviour.get((cell.arch, cell.residual.text))
        if isinstance(action, BaseException):
            raise action
        if action == "diverged":
            return FakeResult("diverged", 0.0, reason="non-finite loss at step 2")
        return FakeResult("done", 0.5)


def _statuses(out: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    with ResultStore.open(out) as store:
        return {(r.cell.arch, r.cell.residual.text): (r.status, r.reason) for r in store.cells()}


def test_every_cell_is_stored_pending_before_the_first_one_runs(tmp_path: Path) -> None:
    seen: list[dict[str, int]] = []

    def runner(job: Job, **kwargs: Any) -> list[FakeResult]:
        with ResultStore.open(tmp_path) as store:
            seen.append(store.status_counts())
        return [FakeResult("done", 0.5)]

    events: list[Any] = []
    summary = run_grid(SPEC, tmp_path, job_runner=runner, device="cpu", callback=events.append)
    assert seen[0]["pending"] == 3 and seen[0]["running"] == 1
    assert summary.counts["done"] == 4 and summary.complete
    assert isinstance(events[0], GridStarted) and len(events[0].to_run) == 4
    kinds = [type(e).__name__ for e in events[1:]]
    assert kinds == ["CellStarted", "CellFinished"] * 4


def test_failure_isolation_and_reasons(tmp_path: Path) -> None:
    runner = Recorder(
        {
            ("resnet18", "off"): ValueError("bad\nthing  happened"),
            ("resnet34", "on"): WeightsUnavailableError("weights file x.pth is missing; run y"),
            ("resnet34", "off"): "diverged",
        }
    )
    summary = run_grid(SPEC, tmp_path, job_runner=runner, device="cpu")
    assert _statuses(tmp_path) == {
        ("resnet18", "on"): ("done", None),
        ("resnet18", "off"): ("failed", "ValueError: bad thing happened"),
        ("resnet34", "on"): ("skipped", "weights file x.pth is missing; run y"),
        ("resnet34", "off"): ("diverged", "non-finite loss at step 2"),
    }
    assert summary.counts == {
        "pending": 0,
        "running": 0,
        "done": 1,
        "failed": 1,
        "diverged": 1,
        "skipped": 1,
    }
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["status"] for r in rows] == ["done", "failed", "skipped", "diverged"]

    # Rerun: done and diverged stay, skipped is tried again, failed only with retry_failed.
    runner.calls.clear()
    run_grid(SPEC, tmp_path, job_runner=runner, device="cpu")
    ids = [c.cell_id for c in SPEC.cells()]
    assert runner.calls == [(ids[2], True)]
    runner.calls.clear()
    run_grid(SPEC, tmp_path, job_runner=runner, device="cpu", retry_failed=True)
    assert runner.calls == [(ids[1], True), (ids[2], True)]
    with ResultStore.open(tmp_path) as store:
        assert [r.attempts for r in store.cells()] == [1, 2, 3, 1]


def test_out_of_memory_is_named() -> None:
    def oom(job: Job, **kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    (outcome,) = execute_job(Job.single(Cell(arch="resnet18"), "/nowhere"), oom, device="cpu")
    assert (outcome.status, outcome.reason) == (
        "failed",
        "out of memory: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    )
    assert one_line(MemoryError()) == "MemoryError"


def test_interrupt_puts_the_cell_back_to_pending_and_a_rerun_finishes(tmp_path: Path) -> None:
    runner = Recorder({("resnet34", "on"): KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        run_grid(SPEC, tmp_path, job_runner=runner, device="cpu")
    assert _statuses(tmp_path) == {
        ("resnet18", "on"): ("done", None),
        ("resnet18", "off"): ("done", None),
        ("resnet34", "on"): ("pending", INTERRUPTED),
        ("resnet34", "off"): ("pending", None),
    }
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["status"] for r in rows] == ["done", "done", "pending", "pending"]
    runner = Recorder()
    summary = run_grid(SPEC, tmp_path, job_runner=runner, device="cpu")
    assert (
        len(runner.calls) == 2
        and summary.complete
        and summary.ran == tuple(c for c, _ in runner.calls)
    )


def test_changing_the_spec_adds_cells_and_leaves_finished_ones(tmp_path: Path) -> None:
    run_grid(SPEC, tmp_path, job_runner=Recorder(), device="cpu")
    bigger = GridSpec(depths=(18, 34), residual=("on", "off"), weights=("none",), seeds=(0, 1))
    runner = Recorder()
    summary = run_grid(bigger, tmp_path, job_runner=runner, device="cpu")
    assert len(runner.calls) == 4 and len(summary.cells) == 8
    smaller = GridSpec(depths=(18,), residual=("on",), weights=("none",))
    runner = Recorder()
    summary = run_grid(smaller, tmp_path, job_runner=runner, device="cpu")
    assert runner.calls == [] and [r.status for r in summary.cells] == ["done"]
    with ResultStore.open(tmp_path) as store:
        assert len(store.cells(include_dropped=True)) == 8
        assert store.spec() == smaller.to_dict()
    assert len(list(csv.DictReader((tmp_path / "results.csv").open()))) == 1
    assert grid_status(tmp_path).counts["done"] == 1


def test_second_lock_names_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(StoreLockedError) as info:
            RunLock(tmp_path).acquire()
        message = str(info.value)
        assert message.startswith(f"{tmp_path} is in use by pid {os.getpid()} on ")
        assert message.endswith(
            f"(lock {tmp_path / '.lock'}); wait for that grid to finish or choose another output "
            "folder"
        )
        assert info.value.field == "out_dir"
        with pytest.raises(StoreLockedError):
            run_grid(SPEC, tmp_path, job_runner=Recorder(), device="cpu")
    RunLock(tmp_path).acquire()  # released: free again


def test_a_released_lock_leaves_no_file_and_a_refused_one_keeps_the_holders(
    tmp_path: Path,
) -> None:
    with RunLock(tmp_path):
        with pytest.raises(StoreLockedError):
            RunLock(tmp_path).acquire()
        assert (tmp_path / ".lock").is_file()
    assert not (tmp_path / ".lock").exists()
    with pytest.raises(StoreError), RunLock(tmp_path):
        raise StoreError("a failure while the lock is held")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_whose_file_was_removed_by_its_releaser_is_taken_afresh(tmp_path: Path) -> None:
    # A waiter that opened the file before the holder removed it must not hold a void lock.
    holder = RunLock(tmp_path)
    holder.acquire()
    late = RunLock(tmp_path)
    stale = os.open(late.path, os.O_RDWR)
    holder.release()
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: the removed file is free
    opened = iter([stale])
    original = late._open

    def open_stale_first() -> int:
        fd = next(opened, None)
        return original() if fd is None else fd

    late._open = open_stale_first  # type: ignore[method-assign]
    late.acquire()
    with pytest.raises(StoreLockedError):
        RunLock(tmp_path).acquire()  # the lock is on the file at the path, not the removed one
    late.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from resablate.grid.lock import RunLock\n"
        f"RunLock({str(tmp_path)!r}).acquire()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False)
    assert done.returncode == -9
    assert '"pid"' in (tmp_path / ".lock").read_text()
    with RunLock(tmp_path):
        pass


def test_started_events_name_the_device(tmp_path: Path) -> None:
    events: list[Any] = []
    run_grid(
        GridSpec(depths=(18,), residual=("on",), weights=("none",)),
        tmp_path,
        job_runner=Recorder(),
        device="cpu",
        callback=events.append,
    )
    started = [e for e in events if isinstance(e, CellStarted)]
    finished = [e for e in events if isinstance(e, CellFinished)]
    assert [(e.device, e.label) for e in started] == [("cpu", "resnet18 · weights none · seed 0")]
    assert finished[0].row.f1 == 0.5 and finished[0].row.params == 100


def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    def terminated(job: Job, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run_grid(SPEC, tmp_path, job_runner=terminated, device="cpu")
    assert signal.getsignal(signal.SIGTERM) == previous
    first = SPEC.cells()[0].cell_id
    with ResultStore.open(tmp_path) as store:
        assert (store.cell(first).status, store.cell(first).reason) == ("pending", INTERRUPTED)


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError) as info:
        RunLock(tmp_path / "file").acquire()
    assert str(info.value) == f"cannot lock {tmp_path / 'file' / '.lock'}: file exists"


class Fingerprinting(Recorder):
    """Records, as run_job does, the fingerprint of the dataset each cell trained on."""

    def run(self, cell: Cell, **kwargs: Any) -> Any:
        from resablate.data import scan

        result = super().run(cell, **kwargs)
        environment = {"dataset_fingerprint": scan(cell.data).fingerprint}
        return dataclasses.replace(result, environment=environment)


def test_a_dataset_changed_under_the_same_path_is_refused_on_resume(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", per_class=2)
    spec = GridSpec(depths=(18,), residual=("on", "off"), weights=("none",), data=str(data))
    out = tmp_path / "out"
    run_grid(spec, out, job_runner=Fingerprinting({("resnet18", "off"): "diverged"}), device="cpu")
    run_grid(spec, out, job_runner=Fingerprinting(), device="cpu")  # the same data: resumes
    before = (out / "results.csv").read_text()
    (data / "train" / "REAL" / "000.png").write_bytes(
        (data / "train" / "REAL" / "001.png").read_bytes()
    )
    with pytest.raises(DataError) as info:
        run_grid(spec, out, job_runner=Fingerprinting(), device="cpu")
    first = spec.cells()[0].cell_id
    message = str(info.value)
    assert message.startswith(f"the dataset {data} changed since cell {first} was trained on it (")
    assert message.endswith(
        "now): its results would mix with results on other data; restore the data or use "
        "another output folder"
    )
    assert info.value.field == "data"
    assert (out / "results.csv").read_text() == before
    with pytest.raises(DataError):
        plan_grid(spec, out, probe_steps=0)


def test_a_dry_run_reads_the_statuses_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = GridSpec(depths=(18,), residual=("on", "off"), weights=("none",))
    assert [c.status for c in plan_grid(spec, out, probe_steps=0).cells] == ["pending"] * 2
    assert not out.exists()
    run_grid(spec, out, job_runner=Recorder({("resnet18", "off"): ValueError("x")}), device="cpu")
    files = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    plan = plan_grid(spec, out, probe_steps=0)
    assert [c.status for c in plan.cells] == ["done", "failed"]
    # Unchanged, but for the index files SQLite keeps beside a store that any reader opens.
    after = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    assert [f for f in after if not f[0].endswith(("-shm", "-wal"))] == files
