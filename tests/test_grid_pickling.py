"""Everything a grid worker process sends or receives must pickle (spawned workers, Ray tasks).

Regression: ``resablate grid --workers 2`` printed ``TypeError: cannot pickle 'mappingproxy'``
from the queue's feeder thread for every cell, because the ``CellPrepared`` event carries a
``DatasetScan`` whose read-only mappings could not be pickled (the event was silently dropped).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from grid_helpers import one_thread, write_tiny_dataset

from resablate.data.layouts import scan
from resablate.grid.executors import execute_job
from resablate.grid.job import CellPrepared, Job, run_job
from resablate.grid.spec import GridSpec

TINY = (("max_steps", 1), ("image_size", 16), ("batch_size", 4), ("checkpoint_every", 1))


def test_dataset_scan_round_trips_through_pickle(tmp_path: Path) -> None:
    found = scan(write_tiny_dataset(tmp_path / "data"))
    again = pickle.loads(pickle.dumps(found))
    assert again == found
    assert again.class_counts == {"train": {"FAKE": 8, "REAL": 8}, "test": {"FAKE": 4, "REAL": 4}}
    assert again.to_dict() == found.to_dict()


def test_what_a_worker_sends_and_receives_pickles(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    spec = GridSpec(
        depths=(18,),
        residual=("off",),
        weights=("none",),
        data=str(data),
        recipe="demo",
        overrides=TINY,
    )
    job = Job.single(spec.cells()[0], tmp_path / "run")
    events: list[Any] = []
    with one_thread():
        (outcome,) = execute_job(job, run_job, device="cpu", on_event=lambda _, e: events.append(e))
    assert outcome.status == "done"
    assert isinstance(events[0], CellPrepared)
    for message in (job, outcome, *events):
        assert type(pickle.loads(pickle.dumps(message))) is type(message)
    assert pickle.loads(pickle.dumps(events[0])).scan == events[0].scan


def test_what_a_pack_worker_sends_and_receives_pickles(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    spec = GridSpec(
        depths=(18,),
        residual=("on", "off"),
        weights=("none",),
        data=str(data),
        recipe="demo",
        overrides=TINY,
    )
    cells = tuple(spec.cells())
    job = Job(cells, tuple(str(tmp_path / c.cell_id) for c in cells), str(tmp_path / "packs"))
    events: list[tuple[str, Any]] = []
    with one_thread():
        outcomes = execute_job(job, run_job, device="cpu", on_event=lambda *e: events.append(e))
    assert [o.status for o in outcomes] == ["done", "done"]
    assert [e[0] for e in events if isinstance(e[1], CellPrepared)] == [c.cell_id for c in cells]
    for message in (job, outcomes, *events):
        assert type(pickle.loads(pickle.dumps(message))) is type(message)
