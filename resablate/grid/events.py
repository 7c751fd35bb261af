"""What a running grid tells its caller: one event per step of the run (the CLI draws from them).

``GridStarted`` once the store holds every cell, then per cell ``CellStarted``, its engine
progress wrapped in ``CellProgress``, and ``CellFinished`` with the row as stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resablate.grid.store import CellRow


@dataclass(frozen=True)
class GridStarted:
    """The store holds every cell; ``to_run`` are the ids about to run, in order."""

    out_dir: str
    cells: tuple[CellRow, ...]
    to_run: tuple[str, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class CellStarted:
    """A cell started (or was submitted to a cluster) on ``device``, alone (``pack_size`` 1) or
    in a pack of ``pack_size`` cells trained as one packed model."""

    cell_id: str
    label: str
    device: str
    pack_size: int = 1


@dataclass(frozen=True)
class CellProgress:
    """An engine progress event of a running cell (``resablate.engine.events``)."""

    cell_id: str
    event: Any


@dataclass(frozen=True)
class CellFinished:
    """A cell ended with ``status`` (``done``, ``diverged``, ``failed``, ``skipped``).

    Attributes:
        row: The cell as now stored (metrics, reason).
    """

    cell_id: str
    status: str
    row: CellRow


@dataclass(frozen=True)
class DemoWeightsPretraining:
    """A cell needs demo weights that are not built yet: they are being pre-trained on the proxy
    task (once per architecture, on the CPU; the file is cached at ``path``). Arrives as a cell's
    :class:`CellProgress` event."""

    arch: str
    source: str
    path: str


@dataclass(frozen=True)
class DemoWeightsReady:
    """The demo weights of ``arch`` were pre-trained in ``seconds`` (wall time) into ``path``."""

    arch: str
    source: str
    path: str
    seconds: float


GridEvent = GridStarted | CellStarted | CellProgress | CellFinished


def fan_out(*callbacks: Callable[[GridEvent], object]) -> Callable[[GridEvent], None]:
    """One grid callback that hands each event to ``callbacks``, in order (e.g. the CLI's view,
    then :class:`~resablate.grid.tracking.GridTracking`)."""

    def callback(event: GridEvent) -> None:
        for each in callbacks:
            each(event)

    return callback
