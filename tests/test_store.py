"""The results store: schema, transactions, format version, mirrors, read API."""

from __future__ import annotations

import csv
import json
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from readonly import run_read_only

from resablate.errors import StoreError
from resablate.grid.cell import Cell
from resablate.grid.store import (
    FORMAT_VERSION,
    RESULT_COLUMNS,
    ResultStore,
    check_store_file,
    network_filesystem,
)

CELLS = [
    Cell.from_dict(dict(arch="resnet18", residual="on", weights="demo")),
    Cell.from_dict(dict(arch="resnet18", residual="off", weights="none")),
    Cell.from_dict(dict(arch="vgg16", weights="none")),
]


def _run_dirs(out: Path, cells: list[Cell]) -> dict[str, str]:
    return {c.cell_id: str(out / "cells" / c.cell_id) for c in cells}


@pytest.fixture()
def store(tmp_path: Path) -> ResultStore:
    with ResultStore(tmp_path) as s:
        s.sync_cells(CELLS, run_dirs=_run_dirs(tmp_path, CELLS))
        yield s


def _finish(store: ResultStore, cell: Cell, f1: float) -> None:
    store.mark_running(cell.cell_id, device="cpu")
    store.record_result(
        cell.cell_id,
        "done",
        metrics={"accuracy": 0.75, "precision": 0.5, "recall": 1.0, "f1": f1, "loss": 0.5},
        values={"params": 11, "active_params": 10, "flops": 99, "steps": 4, "device": "cpu"},
        environment={"torch": "x", "git_revision": "abc"},
        evaluations=[
            {"step": 2, "epoch": 0.5, "split": "val", "f1": 0.5, "loss": 0.7, "lr": 1e-3},
            {"step": 4, "epoch": 1.0, "split": "val", "f1": f1, "loss": 0.5, "lr": 0.0},
        ],
        predictions=[
            {"index": 0, "path": "a.png", "label": 0, "pred": 1, "prob": 0.9},
            {"index": 1, "path": "b.png", "label": 1, "pred": 1, "prob": 0.8},
        ],
    )


def test_new_cells_are_pending_in_grid_order_with_columns(store: ResultStore) -> None:
    rows = store.cells()
    assert [r.cell_id for r in rows] == [c.cell_id for c in CELLS]
    assert [r.status for r in rows] == ["pending"] * 3
    assert [(r.cell.arch, r.depth, r.cell.residual.text, r.cell.weights.text) for r in rows] == [
        ("resnet18", 18, "on", "demo"),
        ("resnet18", 18, "off", "none"),
        ("vgg16", None, "on", "none"),
    ]
    assert rows[1].cell == CELLS[1]
    assert store.status_counts() == {
        "pending": 3,
        "running": 0,
        "done": 0,
        "failed": 0,
        "diverged": 0,
        "skipped": 0,
    }


def test_result_history_and_predictions_round_trip(store: ResultStore) -> None:
    _finish(store, CELLS[0], 0.8)
    row = store.cell(CELLS[0].cell_id)
    assert (row.status, row.f1, row.params, row.flops, row.attempts) == ("done", 0.8, 11, 99, 1)
    assert row.environment == {"torch": "x", "git_revision": "abc"}
    history = store.evaluations(CELLS[0].cell_id)
    assert [(e.seq, e.step, e.f1, e.extra) for e in history] == [
        (0, 2, 0.5, {"lr": 1e-3}),
        (1, 4, 0.8, {"lr": 0.0}),
    ]
    preds = store.predictions(CELLS[0].cell_id)
    assert [(p.index, p.path, p.label, p.pred, p.prob) for p in preds] == [
        (0, "a.png", 0, 1, 0.9),
        (1, "b.png", 1, 1, 0.8),
    ]
    # A second result replaces the history, never appends to it.
    _finish(store, CELLS[0], 0.9)
    assert [e.f1 for e in store.evaluations(CELLS[0].cell_id)] == [0.5, 0.9]
    assert store.cell(CELLS[0].cell_id).attempts == 2


def test_failed_result_clears_metrics_in_the_same_transaction(store: ResultStore) -> None:
    _finish(store, CELLS[0], 0.8)
    store.record_result(CELLS[0].cell_id, "failed", reason="RuntimeError: boom")
    row = store.cell(CELLS[0].cell_id)
    assert (row.status, row.reason, row.f1) == ("failed", "RuntimeError: boom", None)
    assert store.predictions(CELLS[0].cell_id) == []


def test_a_failing_write_rolls_back_everything(store: ResultStore) -> None:
    with pytest.raises(KeyError):
        store.record_result(
            CELLS[0].cell_id,
            "done",
            metrics={"f1": 0.5},
            predictions=[{"index": 0, "label": 0}],  # no "pred": the insert fails
        )
    row = store.cell(CELLS[0].cell_id)
    assert (row.status, row.f1) == ("pending", None)


def test_changing_the_grid_keeps_finished_cells_and_drops_others_from_the_table(
    store: ResultStore, tmp_path: Path
) -> None:
    _finish(store, CELLS[0], 0.8)
    new = [CELLS[0], Cell.from_dict(dict(arch="resnet50", weights="none"))]
    assert store.sync_cells(new, run_dirs=_run_dirs(tmp_path, new)) == 1
    assert [(r.cell_id, r.status) for r in store.cells()] == [
        (CELLS[0].cell_id, "done"),
        (new[1].cell_id, "pending"),
    ]
    everything = store.cells(include_dropped=True)
    assert {r.cell_id for r in everything if not r.in_grid} == {CELLS[1].cell_id, CELLS[2].cell_id}
    assert store.cell(CELLS[0].cell_id).f1 == 0.8


def test_mirrors_have_the_result_columns(store: ResultStore, tmp_path: Path) -> None:
    _finish(store, CELLS[1], 0.25)
    csv_path, jsonl_path = store.write_mirrors()
    with csv_path.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == RESULT_COLUMNS
        rows = list(reader)
    assert [(r["status"], r["f1"], r["depth"]) for r in rows] == [
        ("pending", "", "18"),
        ("done", "0.25", "18"),
        ("pending", "", ""),
    ]
    records = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert records[1]["f1"] == 0.25 and records[2]["depth"] is None


def test_store_settings_wal_and_version(store: ResultStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION
    assert store.integrity_check() == "ok"


def test_read_only_open(store: ResultStore, tmp_path: Path) -> None:
    with ResultStore.open(tmp_path) as reader:
        assert len(reader.cells()) == 3
        with pytest.raises(StoreError, match="read-only"):
            reader.set_status(CELLS[0].cell_id, "failed")
    with pytest.raises(StoreError, match=r"no results store at .*empty"):
        ResultStore.open(tmp_path / "empty")


def test_newer_format_is_refused_in_one_line(store: ResultStore) -> None:
    sqlite3.connect(store.path).execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    with pytest.raises(StoreError) as info:
        ResultStore.open(store.path)
    assert str(info.value) == (
        f"{store.path} was written by a newer resablate (store format {FORMAT_VERSION + 1}, "
        f"this version reads up to {FORMAT_VERSION}); upgrade resablate"
    )


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable results store"):
        ResultStore(tmp_path / "junk.sqlite")
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="is not a resablate results store"):
        ResultStore(tmp_path / "other.sqlite")


MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
server:/export /mnt/shared nfs4 rw 0 0
user@host:/home /mnt/ssh fuse.sshfs rw 0 0
/dev/sdb1 /mnt/shared/local\\040disk ext4 rw 0 0
"""


def test_network_file_systems_are_detected_by_longest_mount() -> None:
    assert network_filesystem("/home/me/runs", MOUNTS) is None
    assert network_filesystem("/mnt/shared/runs/x", MOUNTS) == "nfs4"
    assert network_filesystem("/mnt/ssh", MOUNTS) == "fuse.sshfs"
    assert network_filesystem("/mnt/shared/local disk/runs", MOUNTS) is None
    assert network_filesystem("/mnt/sharedother", MOUNTS) is None


def test_network_store_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("resablate.grid.store.network_filesystem", lambda path: "nfs")
    with pytest.raises(StoreError, match=r"is on a network file system \(nfs\)"):
        ResultStore(tmp_path / "out")


def _create(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        ResultStore(path).close()
        results.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {exc}")


def test_eight_processes_creating_one_store_at_once_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        path = str(tmp_path / f"race{attempt}" / "store.sqlite")
        barrier, results = context.Barrier(8), context.Queue()
        workers = [context.Process(target=_create, args=(path, barrier, results)) for _ in range(8)]
        for worker in workers:
            worker.start()
        outcomes = sorted(results.get(timeout=60) for _ in workers)
        for worker in workers:
            worker.join(timeout=60)
        assert outcomes == ["ok"] * 8
        with ResultStore.open(path) as reader:
            assert reader.integrity_check() == "ok"
            assert reader.status_counts()["pending"] == 0


def test_opening_waits_for_a_lock_held_while_it_switches_to_wal(tmp_path: Path) -> None:
    # SQLite refuses a journal-mode change under another connection's write lock at once ("database
    # is locked", no busy handler): the store must wait for the lock as for any other write.
    path = tmp_path / "store.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, holder.execute, args=("COMMIT",))
    release.start()
    try:
        with ResultStore(path) as store:
            assert store.status_counts()["pending"] == 0
    finally:
        release.join()
        holder.close()


_READ = """
import sys
from resablate.grid.store import ResultStore
with ResultStore.open(sys.argv[1]) as store:
    statuses = [str(r.status) for r in store.cells()]
    print(store.integrity_check(), statuses, store.status_counts()["done"])
"""


@pytest.mark.parametrize("left_open", [False, True], ids=["closed", "writer-killed"])
def test_a_finished_store_reads_from_a_read_only_place(
    store: ResultStore, tmp_path: Path, left_open: bool
) -> None:
    _finish(store, CELLS[0], 0.8)
    if not left_open:
        store.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    done = run_read_only(tmp_path, ["python", "-c", _READ, str(tmp_path)])
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "ok ['done', 'pending', 'pending'] 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_full_disk_is_one_line_naming_the_store(store: ResultStore) -> None:
    store.mark_running(CELLS[0].cell_id, device="cpu")
    store._conn.execute("PRAGMA max_page_count = 1")  # what SQLite meets on a full disk
    rows = [{"index": i, "path": f"{i}.png" * 20, "label": 0, "pred": 0} for i in range(2000)]
    with pytest.raises(StoreError) as info:
        store.record_result(CELLS[0].cell_id, "done", predictions=rows)
    assert str(info.value) == (
        f"cannot write the results store {store.path}: database or disk is full"
    )
    assert store.cell(CELLS[0].cell_id).status == "running"


def test_a_full_disk_says_so_when_the_file_system_has_no_space_left(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("resablate.grid.store._free_bytes", lambda folder: 4096)
    store._conn.execute("PRAGMA max_page_count = 1")
    rows = [{"index": i, "path": f"{i}.png" * 20, "label": 0, "pred": 0} for i in range(2000)]
    with pytest.raises(StoreError) as info:
        store.record_result(CELLS[0].cell_id, "done", predictions=rows)
    assert str(info.value) == f"no space left on device: {store.path}"


def _io_error(*args: object, **kwargs: object) -> None:
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # type: ignore[attr-defined]
    raise exc


@pytest.mark.parametrize(
    ("free", "message"),
    [
        (0, "no space left on device: {path}"),
        (1 << 30, "{path} is not a usable results store: disk I/O error"),
    ],
)
def test_a_disk_io_error_on_a_full_disk_is_no_space_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, message: str
) -> None:
    monkeypatch.setattr("resablate.grid.store._connect", _io_error)
    monkeypatch.setattr("resablate.grid.store._free_bytes", lambda folder: free)
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path)
    assert str(info.value) == message.format(path=tmp_path / "store.sqlite")


def test_an_empty_store_file_is_refused_never_started_afresh(tmp_path: Path) -> None:
    check_store_file(tmp_path)  # no store yet: a new one may be created
    (tmp_path / "store.sqlite").write_bytes(b"")
    with pytest.raises(StoreError) as info:
        check_store_file(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'store.sqlite'} is empty (0 bytes), not a results store; restore it from "
        "a copy, or remove it to start the grid afresh"
    )
    assert info.value.field == "out_dir"


def test_skipped_checkpoints_are_recorded_with_the_result(store: ResultStore) -> None:
    skipped = ("/run/checkpoints/step-00000009.pt: does not load: not a zip file",)
    store.record_result(CELLS[0].cell_id, "done", skipped_checkpoints=skipped)
    assert store.cell(CELLS[0].cell_id).skipped_checkpoints == skipped
    assert store.cell(CELLS[1].cell_id).skipped_checkpoints == ()


def _format_1(store: ResultStore) -> None:
    """Make ``store`` a store as format 1 wrote it (before ``skipped_checkpoints``)."""
    _finish(store, CELLS[0], 0.5)
    store.close()
    conn = sqlite3.connect(store.path)
    conn.execute("ALTER TABLE cells DROP COLUMN skipped_checkpoints")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_format_1_store_is_read_in_place_and_upgraded_by_a_writer(store: ResultStore) -> None:
    _format_1(store)
    with ResultStore.open(store.path) as reader:
        row = reader.cell(CELLS[0].cell_id)
        assert (row.status, row.f1, row.skipped_checkpoints) == ("done", 0.5, ())
    with ResultStore(store.path) as writer:
        assert writer.cell(CELLS[0].cell_id).f1 == 0.5
        writer.record_result(CELLS[1].cell_id, "failed", reason="x", skipped_checkpoints=("a",))
        assert writer.cell(CELLS[1].cell_id).skipped_checkpoints == ("a",)
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 2
