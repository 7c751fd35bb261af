"""Progress events the engine sends to ``callback(event)``; the library itself never prints.

The CLI turns them into a rich progress bar (terminal) or log lines (otherwise). An exception
raised by the callback stops training at once (the last checkpoint stays valid for a resume).
"""

from __future__ import annotations

from dataclasses import dataclass

from resablate.engine.results import EvalRecord


@dataclass(frozen=True)
class TrainStarted:
    """Training is about to run.

    Attributes:
        total_steps: Optimiser steps of the whole run.
        start_step: Step the run starts from (> 0 after a resume).
        steps_per_epoch: Optimiser steps per epoch.
        images_per_step: Images per optimiser step.
        device: Device name, e.g. ``"cpu"`` or ``"NVIDIA H100 80GB HBM3"``.
        amp: Autocast mode in effect (``"none"`` on CPU).
        skipped_checkpoints: ``"<file>: <why>"`` for each newer checkpoint that did not load
            and was passed over on resume (see ``checkpoint.load_latest``).
        ran_on: What runs, in one line (``Execution.summary()``, e.g. ``"cpu · fp32"``).
    """

    total_steps: int
    start_step: int
    steps_per_epoch: int
    images_per_step: int
    device: str
    amp: str
    skipped_checkpoints: tuple[str, ...] = ()
    ran_on: str = ""


@dataclass(frozen=True)
class StepProgress:
    """Progress after an optimiser step.

    Attributes:
        step: Optimiser steps done.
        total_steps: Optimiser steps of the whole run.
        epoch: Epochs done (fractional).
        loss: Mean training loss (fp32 cross-entropy) of the steps since the previous event.
        lr: Learning rate of the last update.
        images_per_second: Training throughput of this session so far.
        eta_seconds: Estimated seconds of training left (evaluation excluded).
    """

    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float
    images_per_second: float
    eta_seconds: float


@dataclass(frozen=True)
class Evaluated:
    """An evaluation (or a training-loss record) was added to the history.

    Attributes:
        record: The record.
        group: The group of a packed run it belongs to (``None`` for a single model).
    """

    record: EvalRecord
    group: int | None = None


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint was written after ``step`` optimiser steps, to ``path``."""

    step: int
    path: str


@dataclass(frozen=True)
class TrainFinished:
    """Training ended with ``status`` (``"done"`` or ``"diverged"``) after ``steps`` steps."""

    status: str
    steps: int
    train_seconds: float


TrainEvent = TrainStarted | StepProgress | Evaluated | CheckpointSaved | TrainFinished
