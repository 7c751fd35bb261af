"""What a training run returns: evaluation records, the final evaluation, the run's result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resablate.engine.execution import Execution
from resablate.metrics import Metrics


@dataclass(frozen=True)
class EvalRecord:
    """One line of the history (``history.jsonl``).

    Attributes:
        step: Optimiser steps done when it was taken.
        epoch: Epochs done (``step / steps_per_epoch``).
        split: ``"train"`` (running means over the steps since the previous record; precision,
            recall and F1 are ``None``), ``"val"`` or ``"test"``.
        loss: Mean cross-entropy (fp32) per image.
        accuracy: Fraction correct.
        precision: Positive-class precision (``None`` for train records).
        recall: Positive-class recall (``None`` for train records).
        f1: Positive-class F1 (``None`` for train records).
        lr: Learning rate of the last update before the record.
        n: Images the record is computed over.
    """

    step: int
    epoch: float
    split: str
    loss: float
    accuracy: float
    precision: float | None
    recall: float | None
    f1: float | None
    lr: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


@dataclass(frozen=True)
class EvalResult:
    """The evaluation of one split, with per-sample predictions in the split's order.

    Attributes:
        split: Name of the evaluated split.
        loss: Mean cross-entropy per image.
        metrics: Accuracy, positive-class precision/recall/F1, confusion matrix.
        labels: True class of each sample.
        preds: Predicted class (argmax) of each sample.
        probs: Softmax probability of the positive class of each sample.
        paths: Image file of each sample (empty when the data has no paths).
    """

    split: str
    loss: float
    metrics: Metrics
    labels: tuple[int, ...]
    preds: tuple[int, ...]
    probs: tuple[float, ...]
    paths: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Split, loss and metrics (per-sample predictions go to ``predictions.csv``)."""
        return {"split": self.split, "loss": self.loss, **self.metrics.to_dict()}


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`resablate.engine.train`.

    Attributes:
        status: ``"done"`` or ``"diverged"`` (a non-finite fp32 training loss).
        steps: Optimiser steps done.
        total_steps: Optimiser steps planned.
        epochs: Epochs done (fractional).
        final: Final evaluation of the eval split (``None`` when diverged).
        history: Every record of ``history.jsonl``, in order.
        train_seconds: Wall-clock seconds spent in training steps over all sessions (evaluation
            and checkpointing excluded).
        images_per_second: Training images per second over those seconds.
        diverged_at_step: 1-based optimiser step whose loss was non-finite, else ``None``.
        reason: Why the run diverged, else ``None``.
        resumed_from_step: Step of the checkpoint the run resumed from (0 = fresh start).
        skipped_checkpoints: ``"<file>: <why>"`` of each newer checkpoint passed over on resume
            because it does not load (``checkpoint.load_latest``), newest first.
        frozen_check: ``"passed"`` (frozen parameters and BN statistics byte-identical after
            training), ``"failed"`` or ``"not applicable"`` (nothing frozen).
        device: Device name.
        amp: Autocast mode in effect (``"none"`` = fp32, the CPU's default).
        execution: Everything the run executed with (device and GPU count, autocast dtype,
            channels_last, compile, TF32, cudnn.benchmark, deterministic).
    """

    status: str
    steps: int
    total_steps: int
    epochs: float
    final: EvalResult | None
    history: tuple[EvalRecord, ...]
    train_seconds: float
    images_per_second: float
    diverged_at_step: int | None
    reason: str | None
    resumed_from_step: int
    frozen_check: str
    device: str
    amp: str
    execution: Execution
    skipped_checkpoints: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types (history as a list of records)."""
        data = dict(self.__dict__)
        data["execution"] = self.execution.to_dict()
        data["final"] = self.final.to_dict() if self.final is not None else None
        data["history"] = [r.to_dict() for r in self.history]
        return data
