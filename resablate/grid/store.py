"""The results store: one SQLite database per grid run directory (``OUT/store.sqlite``).

The store holds one row per cell (its canonical config, status, metrics, counts, timings and
environment), the evaluation history of each cell, the per-sample test predictions of each cell
(for paired tests and misclassification galleries) and the grid spec that produced the cells.

Safety (``docs/architecture.md``, "Safety"): WAL journal, ``busy_timeout``, every writing
transaction opened with ``BEGIN IMMEDIATE``, a cell's status and its metrics written in one
transaction, the format version in ``PRAGMA user_version`` (a store written by a newer resablate is
refused), and a store on a network file system is refused (SQLite's locking is unreliable there).

Only the grid driver writes; reports and other readers open the store read-only with
:meth:`ResultStore.open`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resablate.atomic import write_text
from resablate.choices import FINISHED_STATUSES, METRICS, CellStatus
from resablate.errors import ConfigError, StoreError
from resablate.grid.cell import Cell

STORE_FILENAME = "store.sqlite"
CSV_FILENAME = "results.csv"
JSONL_FILENAME = "results.jsonl"

FORMAT_VERSION = 2
BUSY_TIMEOUT_MS = 30_000
#: Free space below which a failed write is taken for a full disk (SQLite writes whole pages).
_FULL_DISK_BYTES = 1 << 20

_STATUSES = tuple(CellStatus)
_STATUS_LIST = ",".join(f"'{status}'" for status in CellStatus)

#: File-system types on which SQLite's locks cannot be trusted (``/proc/mounts`` names).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "sshfs",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.rclone",
        "davfs",
        "fuse.davfs2",
        "glusterfs",
        "fuse.glusterfs",
    }
)

#: The columns of ``results.csv`` / ``results.jsonl``, in order.
RESULT_COLUMNS = (
    "cell_id",
    "arch",
    "source",
    "depth",
    "residual",
    "residual_alpha",
    "pretrained",
    "freeze",
    "recipe",
    "seed",
    "status",
    "reason",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "loss",
    "params",
    "active_params",
    "flops",
    "train_seconds",
    "images_per_second",
    "device",
)

_SCHEMA = f"""
CREATE TABLE grid (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE cells (
    cell_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    arch TEXT NOT NULL,
    source TEXT NOT NULL,
    depth INTEGER,
    residual TEXT NOT NULL,
    residual_alpha REAL NOT NULL,
    pretrained TEXT NOT NULL,
    freeze TEXT NOT NULL,
    recipe TEXT NOT NULL,
    seed INTEGER NOT NULL,
    data TEXT NOT NULL,
    in_grid INTEGER NOT NULL DEFAULT 1,
    position INTEGER,
    status TEXT NOT NULL DEFAULT '{CellStatus.PENDING}'
        CHECK (status IN ({_STATUS_LIST})),
    reason TEXT,
    accuracy REAL,
    precision REAL,
    recall REAL,
    f1 REAL,
    loss REAL,
    params INTEGER,
    active_params INTEGER,
    flops INTEGER,
    steps INTEGER,
    train_seconds REAL,
    images_per_second REAL,
    device TEXT,
    environment TEXT,
    run_dir TEXT,
    skipped_checkpoints TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX cells_status ON cells (status);
CREATE TABLE evaluations (
    cell_id TEXT NOT NULL REFERENCES cells (cell_id),
    seq INTEGER NOT NULL,
    step INTEGER,
    epoch REAL,
    split TEXT,
    accuracy REAL,
    precision REAL,
    recall REAL,
    f1 REAL,
    loss REAL,
    extra TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (cell_id, seq)
);
CREATE TABLE predictions (
    cell_id TEXT NOT NULL REFERENCES cells (cell_id),
    idx INTEGER NOT NULL,
    path TEXT,
    label INTEGER NOT NULL,
    pred INTEGER NOT NULL,
    prob REAL,
    PRIMARY KEY (cell_id, idx)
);
"""


# What brings a store of each older format up to FORMAT_VERSION, in order.
_MIGRATIONS = {
    1: ("ALTER TABLE cells ADD COLUMN skipped_checkpoints TEXT NOT NULL DEFAULT '[]'",),
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def network_filesystem(path: str | os.PathLike[str], mounts: str | None = None) -> str | None:
    """The network file-system type that ``path`` lives on, or ``None`` for a local one.

    Args:
        path: A file or folder (need not exist; its nearest existing parent is used).
        mounts: The text of ``/proc/mounts``; read from the system when ``None``. Where it
            cannot be read (not Linux), the path is taken to be local.
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = Path(path).expanduser().resolve()
    best, best_type = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        # /proc/mounts escapes spaces and a few other characters as octal.
        point = parts[1].encode().decode("unicode_escape")
        inside = point == "/" or target == Path(point) or Path(point) in target.parents
        if inside and len(point) >= len(best):
            best, best_type = point, parts[2]
    return best_type if best_type.lower() in NETWORK_FILESYSTEMS else None


@dataclass(frozen=True)
class CellRow:
    """One cell as the store holds it.

    The cell is parsed once, when the row is read, from the stored canonical config; the store's
    columns that repeat its fields (``arch`` ... ``data``, the weights in the column
    ``pretrained``, the studies' word) are for SQL and ``results.csv`` readers.

    Attributes:
        cell_id: The cell's id (hash of its canonical config).
        cell: The cell.
        depth: The ResNet depth, ``None`` for non-ResNet baselines.
        in_grid: Whether the cell belongs to the grid spec last run in this store (cells that a
            changed spec dropped stay in the store with ``in_grid`` false).
        position: The cell's index in that grid (``None`` when not in it).
        status: The cell's status; ``reason`` says why for failed/diverged/skipped.
        accuracy: Test metrics of the final evaluation (fractions in [0, 1]); ``loss`` is the mean
            cross-entropy in nats. ``None`` until the cell has a result.
        params: Parameter counts; ``flops`` in fvcore's convention (one multiply-add = one flop)
            at batch 1 and the cell's image size.
        steps: Optimiser steps taken.
        train_seconds: Wall-clock training time in seconds; ``images_per_second`` the training
            throughput.
        environment: Versions, device, git revision, dataset fingerprint, weights hash.
        skipped_checkpoints: ``"<file>: <why>"`` of each checkpoint the last run passed over on
            resume because it does not load (empty in stores of format 1).
        attempts: How many times the cell was started.
        created_at: ISO-8601 UTC timestamps (``started_at``/``finished_at`` of the last attempt).
    """

    cell_id: str
    cell: Cell
    depth: int | None
    in_grid: bool
    position: int | None
    status: CellStatus
    reason: str | None
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    loss: float | None
    params: int | None
    active_params: int | None
    flops: int | None
    steps: int | None
    train_seconds: float | None
    images_per_second: float | None
    device: str | None
    environment: dict[str, Any]
    run_dir: str | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    skipped_checkpoints: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready plain types (``cell`` as ``Cell.to_dict()``)."""
        return {**_row_values(self), "cell": self.cell.to_dict()}

    def result_record(self) -> dict[str, Any]:
        """The row of ``results.csv`` / ``results.jsonl`` (:data:`RESULT_COLUMNS`)."""
        values = {**self.cell.to_dict(), **_row_values(self), "pretrained": self.cell.weights.text}
        return {name: values[name] for name in RESULT_COLUMNS}


@dataclass(frozen=True)
class EvaluationRow:
    """One evaluation of a cell during training (its history, in order).

    Attributes:
        seq: Position in the history (0-based).
        step: Optimiser step after which the evaluation ran.
        epoch: Training progress in epochs (fractional).
        split: The split evaluated (``"val"`` or ``"test"``).
        accuracy: Metrics of that evaluation (fractions); ``loss`` in nats.
        extra: Any further fields the engine recorded (e.g. training loss, learning rate).
    """

    cell_id: str
    seq: int
    step: int | None
    epoch: float | None
    split: str | None
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    loss: float | None
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready plain types."""
        return asdict(self)


@dataclass(frozen=True)
class PredictionRow:
    """A cell's prediction for one test sample (test order is the dataset scan's order).

    Attributes:
        index: The sample's index in the test split.
        path: The image file.
        label: The true class index; ``pred`` the predicted one.
        prob: The predicted probability of the positive class (index 1).
    """

    cell_id: str
    index: int
    path: str | None
    label: int
    pred: int
    prob: float | None

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready plain types."""
        return asdict(self)


_CELL_ROW_FIELDS = tuple(f.name for f in fields(CellRow))
_EVAL_FIELDS = ("step", "epoch", "split", *METRICS)


def _row_values(row: CellRow) -> dict[str, Any]:
    """The row's fields but the cell, by name."""
    return {name: getattr(row, name) for name in _CELL_ROW_FIELDS if name != "cell"}


def check_store_file(folder: str | os.PathLike[str]) -> None:
    """Refuse a ``store.sqlite`` in ``folder`` that exists but is empty (0 bytes): a store cut
    to nothing, never one to start afresh (that would retrain every cell and overwrite
    ``results.csv``). A store being created holds at least its header page once it is in WAL
    mode, so call this under the run directory's lock, where no other process creates it (or
    where a mistaken refusal costs nothing: a dry run).

    Raises:
        StoreError: The file exists and holds 0 bytes.
    """
    path = Path(folder) / STORE_FILENAME
    if path.is_file() and path.stat().st_size == 0:
        raise StoreError(
            f"{path} is empty (0 bytes), not a results store; restore it from a copy, or remove "
            "it to start the grid afresh",
            field="out_dir",
        )


def _free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use in ``folder``'s file system."""
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


def _store_error(path: Path, exc: sqlite3.DatabaseError, what: str) -> StoreError:
    """The one-line error of a failed SQLite call: a full disk says so (SQLite reports it as
    "database or disk is full" or as a "disk I/O error"), anything else is ``what: exc``."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        with contextlib.suppress(OSError):
            if _free_bytes(path.parent) < _FULL_DISK_BYTES:
                return StoreError(f"no space left on device: {path}")
    return StoreError(f"{what}: {exc}")


def _cell_row(row: sqlite3.Row) -> CellRow:
    stored = set(row.keys())  # a store of format 1, read in place, lacks later columns
    values = {name: row[name] for name in _CELL_ROW_FIELDS if name != "cell" and name in stored}
    values["cell"] = Cell.from_dict(json.loads(row["config"]))
    values["environment"] = json.loads(row["environment"] or "{}")
    values["skipped_checkpoints"] = tuple(json.loads(values.get("skipped_checkpoints") or "[]"))
    values["in_grid"] = bool(row["in_grid"])
    values["status"] = CellStatus(row["status"])
    return CellRow(**values)


def _cell_depth(cell: Cell) -> int | None:
    """The depth of a registered family's cell; None for other models (read without importing
    a user's factory)."""
    from resablate.families import get_family

    try:
        return get_family(cell.arch, cell.source).depth
    except ConfigError:
        return None


def _connect(database: str | Path, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(database, uri=uri, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch ``conn``'s database to WAL, waiting up to ``BUSY_TIMEOUT_MS`` for other openers.

    SQLite answers a journal-mode change that meets another connection's lock with "database is
    locked" at once, without its busy handler (seen in about 1 of 80 openings when 8 processes
    create one store together), so the change is retried here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _connect_read_only(target: Path) -> sqlite3.Connection:
    """Open ``target`` for reading only, wherever it lies.

    ``mode=ro`` reads the write-ahead log a running or killed writer left (SQLite creates its
    ``-shm`` index beside the store when the folder is writable). In a read-only place without
    that index, a store whose log is empty or gone is read as ``immutable``; one whose log still
    holds results cannot be read there safely and is refused with what to do.
    """
    uri = target.resolve().as_uri()
    try:
        conn = _connect(f"{uri}?mode=ro", uri=True)
        conn.execute("PRAGMA user_version").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        # Only "cannot open" in a folder this process cannot write falls through: a locked or
        # broken store must never be read as immutable while a writer may be at work.
        cannot_open = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CANTOPEN
        if not cannot_open or os.access(target.parent, os.W_OK):
            raise
        wal = target.with_name(target.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise StoreError(
                f"{target} cannot be read where it is: its write-ahead log {wal.name} holds "
                "results not yet merged into it and the folder is read-only; copy the run "
                "folder somewhere writable and read it there"
            ) from None
    return _connect(f"{uri}?immutable=1", uri=True)


class ResultStore:
    """A grid's results database.

    Writers (the grid driver) construct it directly; readers use :meth:`open`. Use it as a
    context manager, or call :meth:`close`.

    Args:
        path: The database file, or the run directory holding ``store.sqlite``.
        readonly: Open an existing store for reading only (SQLite ``mode=ro``; never
            writes, so a store in a read-only place, e.g. a mounted archive, can be read).

    Raises:
        StoreError: The store is missing (read-only), not a resablate store, written by a newer
            format, or on a network file system (writable).
    """

    FORMAT_VERSION = FORMAT_VERSION

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        target = Path(path).expanduser()
        if target.is_dir() or (not target.suffix and not target.exists()):
            target = target / STORE_FILENAME
        self.path = target
        self.readonly = readonly
        self._together = False
        if readonly and not target.is_file():
            raise StoreError(f"no results store at {target} (run a grid into that folder first)")
        if not readonly:
            fs_type = network_filesystem(target.parent)
            if fs_type:
                raise StoreError(
                    f"{target.parent} is on a network file system ({fs_type}); SQLite's locks "
                    "are unreliable there: use a local output folder",
                    field="out_dir",
                )
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = _connect_read_only(target) if readonly else _connect(target)
            self._prepare()
        except sqlite3.DatabaseError as exc:
            raise _store_error(target, exc, f"{target} is not a usable results store") from None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ResultStore:
        """Open an existing store read-only (``path`` = the database or its run directory)."""
        return cls(path, readonly=True)

    def _prepare(self) -> None:
        if self.readonly:
            # One statement, one snapshot: a writer creating the store between two reads would
            # otherwise show tables without their format version.
            version, tables = self._conn.execute(
                "SELECT (SELECT user_version FROM pragma_user_version), "
                "(SELECT count(*) FROM sqlite_master)"
            ).fetchone()
            self._check_version(version, tables)
            return
        _enable_wal(self._conn)
        # FULL: a committed cell survives a power cut, not only a killed process.
        self._conn.execute("PRAGMA synchronous = FULL")
        # Read the version inside the writing transaction: of several processes creating the
        # store at once, exactly one creates the schema and the others see it.
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if self._check_version(version, tables):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                for older in range(version, FORMAT_VERSION):
                    for statement in _MIGRATIONS[older]:
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")

    def _check_version(self, version: int, tables: int) -> bool:
        """Refuse a newer or foreign store; True when the database is empty (to be created)."""
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer resablate (store format {version}, this "
                f"version reads up to {FORMAT_VERSION}); upgrade resablate"
            )
        if version == 0 and (tables or self.readonly):
            if not tables:
                raise StoreError(f"{self.path} holds no results yet (a grid is starting there?)")
            raise StoreError(f"{self.path} is not a resablate results store")
        return version == 0

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Make every write inside the block one transaction: all of them are kept, or none (a
        pack's cells are recorded so)."""
        with self._write():
            self._together = True
            try:
                yield
            finally:
                self._together = False

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        conn = self._conn
        if self._together:  # inside together(): its transaction
            yield conn
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite has already rolled back after a full disk
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # full disk, I/O error, locked past the timeout
            raise _store_error(
                self.path, exc, f"cannot write the results store {self.path}"
            ) from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- writing

    def set_spec(self, spec: Mapping[str, Any]) -> None:
        """Record the grid spec (JSON-ready mapping) last run in this store."""
        now = _now()
        text = json.dumps(spec, sort_keys=True)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO grid (id, spec, created_at, updated_at) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, "
                "updated_at = excluded.updated_at",
                (text, now, now),
            )

    def sync_cells(self, cells: Sequence[Cell], *, run_dirs: Mapping[str, str]) -> int:
        """Make ``cells`` the current grid: add the new ones as pending, in one transaction.

        Cells already in the store keep their status and results; cells of an earlier grid that
        are not in ``cells`` stay in the store but leave the current grid (``in_grid`` false).

        Args:
            cells: The grid's cells in display order.
            run_dirs: Each cell's run directory, by cell id.

        Returns:
            How many cells were added.
        """
        depths = {(c.arch, c.source): _cell_depth(c) for c in cells}
        now = _now()
        added = 0
        with self._write() as conn:
            conn.execute("UPDATE cells SET in_grid = 0, position = NULL")
            for position, cell in enumerate(cells):
                cursor = conn.execute(
                    "INSERT INTO cells (cell_id, config, arch, source, depth, residual, "
                    "residual_alpha, pretrained, freeze, recipe, seed, data, in_grid, position, "
                    "run_dir, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?) "
                    "ON CONFLICT (cell_id) DO NOTHING",
                    (
                        cell.cell_id,
                        json.dumps(cell.to_dict(), sort_keys=True),
                        cell.arch,
                        cell.source,
                        depths[(cell.arch, cell.source)],
                        cell.residual.text,
                        cell.residual.alpha,
                        cell.weights.text,
                        cell.freeze,
                        cell.recipe,
                        cell.seed,
                        cell.data,
                        position,
                        run_dirs[cell.cell_id],
                        now,
                        now,
                    ),
                )
                added += cursor.rowcount
                conn.execute(
                    "UPDATE cells SET in_grid = 1, position = ? WHERE cell_id = ?",
                    (position, cell.cell_id),
                )
        return added

    def set_counts(self, cell_id: str, *, params: int, active_params: int, flops: int) -> None:
        """Record a cell's parameter and FLOP counts (see :class:`CellRow`)."""
        with self._write() as conn:
            self._update(conn, cell_id, params=params, active_params=active_params, flops=flops)

    def mark_running(self, cell_id: str, *, device: str | None = None) -> None:
        """Mark a cell started: status ``running``, one more attempt, ``started_at`` now."""
        with self._write() as conn:
            self._update(conn, cell_id, status=CellStatus.RUNNING, reason=None, device=device)
            conn.execute(
                "UPDATE cells SET attempts = attempts + 1, started_at = ?, finished_at = NULL "
                "WHERE cell_id = ?",
                (_now(), cell_id),
            )

    def set_status(self, cell_id: str, status: CellStatus, reason: str | None = None) -> None:
        """Set a cell's status and reason (without metrics; see :meth:`record_result`)."""
        with self._write() as conn:
            self._update(conn, cell_id, status=status, reason=reason)

    def record_result(
        self,
        cell_id: str,
        status: CellStatus,
        *,
        reason: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
        values: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        evaluations: Sequence[Mapping[str, Any]] = (),
        predictions: Sequence[Mapping[str, Any]] = (),
        skipped_checkpoints: Sequence[str] = (),
    ) -> None:
        """Write a finished cell: status, reason, metrics, history and predictions, atomically.

        Args:
            cell_id: The cell.
            status: A finished status (:data:`~resablate.choices.FINISHED_STATUSES`).
            reason: Why the cell failed, diverged or was skipped.
            metrics: Final test metrics by name (:data:`METRICS`).
            values: Further cell columns: ``params``, ``active_params``, ``flops``, ``steps``,
                ``train_seconds``, ``images_per_second``, ``device``, ``run_dir``.
            environment: Versions, device, git revision, fingerprints (JSON-ready).
            evaluations: The evaluation history in order; keys :data:`METRICS`, ``step``,
                ``epoch``, ``split``; other keys are kept in ``extra``.
            predictions: Per test sample: ``index``, ``path``, ``label``, ``pred``, ``prob``.
            skipped_checkpoints: ``"<file>: <why>"`` of each checkpoint the run passed over.
        """
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status {status!r} is not a finished status {FINISHED_STATUSES}")
        columns: dict[str, Any] = dict(values or {})
        unknown = sorted(set(columns) - set(_CELL_ROW_FIELDS))
        if unknown:
            raise ValueError(f"unknown cell columns: {', '.join(unknown)}")
        for name in METRICS:
            columns[name] = None if metrics is None else metrics.get(name)
        if environment is not None:
            columns["environment"] = json.dumps(dict(environment), sort_keys=True, default=str)
        columns["skipped_checkpoints"] = json.dumps(list(skipped_checkpoints))
        eval_rows = [
            (
                cell_id,
                seq,
                *(record.get(name) for name in _EVAL_FIELDS),
                json.dumps(
                    {k: v for k, v in record.items() if k not in _EVAL_FIELDS},
                    sort_keys=True,
                    default=str,
                ),
            )
            for seq, record in enumerate(evaluations)
        ]
        pred_rows = [
            (cell_id, p["index"], p.get("path"), p["label"], p["pred"], p.get("prob"))
            for p in predictions
        ]
        with self._write() as conn:
            self._update(conn, cell_id, status=status, reason=reason, **columns)
            conn.execute("UPDATE cells SET finished_at = ? WHERE cell_id = ?", (_now(), cell_id))
            conn.execute("DELETE FROM evaluations WHERE cell_id = ?", (cell_id,))
            conn.execute("DELETE FROM predictions WHERE cell_id = ?", (cell_id,))
            conn.executemany(
                "INSERT INTO evaluations (cell_id, seq, step, epoch, split, accuracy, precision, "
                "recall, f1, loss, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                eval_rows,
            )
            conn.executemany(
                "INSERT INTO predictions (cell_id, idx, path, label, pred, prob) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                pred_rows,
            )

    @staticmethod
    def _update(conn: sqlite3.Connection, cell_id: str, **columns: Any) -> None:
        if "status" in columns and columns["status"] not in _STATUSES:
            raise ValueError(f"status {columns['status']!r} is not one of {_STATUSES}")
        columns["updated_at"] = _now()
        assignments = ", ".join(f"{name} = ?" for name in columns)
        cursor = conn.execute(
            f"UPDATE cells SET {assignments} WHERE cell_id = ?", (*columns.values(), cell_id)
        )
        if cursor.rowcount != 1:
            raise StoreError(f"cell {cell_id} is not in the store")

    def write_mirrors(self, folder: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
        """Write ``results.csv`` and ``results.jsonl`` (current grid, in order) atomically.

        Args:
            folder: Where to write them; the store's folder by default.

        Returns:
            The two paths written.
        """
        target = Path(folder) if folder is not None else self.path.parent
        records = [row.result_record() for row in self.cells()]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        csv_path, jsonl_path = target / CSV_FILENAME, target / JSONL_FILENAME
        write_text(csv_path, buffer.getvalue())
        write_text(jsonl_path, "".join(json.dumps(r) + "\n" for r in records))
        return csv_path, jsonl_path

    # ----------------------------------------------------------------------------- reading

    def spec(self) -> dict[str, Any] | None:
        """The grid spec last run in this store (``GridSpec.to_dict()``, with ``execution`` when
        the run recorded how it ran: then it is a study file's resolved form, which
        ``resablate.grid.study.read_study`` reads back), or ``None``."""
        row = self._conn.execute("SELECT spec FROM grid WHERE id = 1").fetchone()
        return None if row is None else json.loads(row["spec"])

    def cells(
        self, status: CellStatus | None = None, *, include_dropped: bool = False
    ) -> list[CellRow]:
        """Cells of the current grid in grid order (optionally only those with ``status``).

        Args:
            status: Keep only cells with this status.
            include_dropped: Also return cells an earlier spec had and the current one dropped
                (after the current grid's cells, by id).
        """
        if status is not None and status not in _STATUSES:
            raise StoreError(f"unknown cell status {status!r}; legal: {', '.join(_STATUSES)}")
        query = "SELECT * FROM cells WHERE (? IS NULL OR status = ?)"
        if not include_dropped:
            query += " AND in_grid = 1"
        query += " ORDER BY in_grid DESC, position, cell_id"
        return [_cell_row(r) for r in self._conn.execute(query, (status, status))]

    def cell(self, cell_id: str) -> CellRow:
        """One cell by id (``StoreError`` when unknown)."""
        row = self._conn.execute("SELECT * FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        if row is None:
            raise StoreError(f"cell {cell_id} is not in the store {self.path}")
        return _cell_row(row)

    def evaluations(self, cell_id: str) -> list[EvaluationRow]:
        """The evaluation history of a cell, in order."""
        rows = self._conn.execute(
            "SELECT * FROM evaluations WHERE cell_id = ? ORDER BY seq", (cell_id,)
        )
        return [
            EvaluationRow(
                cell_id=r["cell_id"],
                seq=r["seq"],
                **{name: r[name] for name in _EVAL_FIELDS},
                extra=json.loads(r["extra"]),
            )
            for r in rows
        ]

    def predictions(self, cell_id: str) -> list[PredictionRow]:
        """A cell's per-sample test predictions, in test order."""
        rows = self._conn.execute(
            "SELECT * FROM predictions WHERE cell_id = ? ORDER BY idx", (cell_id,)
        )
        return [
            PredictionRow(r["cell_id"], r["idx"], r["path"], r["label"], r["pred"], r["prob"])
            for r in rows
        ]

    def status_counts(self) -> dict[CellStatus, int]:
        """How many cells of the current grid have each status (every status present)."""
        counts = dict.fromkeys(CellStatus, 0)
        rows = self._conn.execute(
            "SELECT status, count(*) AS n FROM cells WHERE in_grid = 1 GROUP BY status"
        )
        for row in rows:
            counts[CellStatus(row["status"])] = row["n"]
        return counts

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` for a sound database)."""
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])
