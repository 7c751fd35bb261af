"""Closed sets of values the library accepts, importable without torch.

Each set is owned here and re-exported by the module that gives it meaning
(``resablate.families.SOURCES``, ``resablate.freezing.BN_POLICIES``); the command line builds its
choices from these tuples without paying for importing torch at start-up. The cell statuses and
the metric names are owned here too: the store, tables, reports and the CLI import them.
"""

from __future__ import annotations

from enum import StrEnum

#: Where architectures come from (``hf``: Hugging Face transformers, extra ``resablate[hf]``).
SOURCES = ("torchvision", "timm", "hf")
#: Freeze plans named by the ResNet/AlexNet/VGG16 stages (``resablate.freezing.FREEZE_PLANS``;
#: a family with more stages has more, see ``freezing.freeze_plans``).
FREEZE_PLANS = ("none", "conv1", "conv1-2", "conv1-3", "conv1-4", "all")
#: BatchNorm policies of frozen stages: ``frozen`` keeps the running statistics, ``train`` lets
#: them update.
BN_POLICIES = ("frozen", "train")
#: Metrics a lesion study measures (``resablate.diagnostics.lesion.METRICS``).
LESION_METRICS = ("accuracy", "f1", "loss")
#: Public datasets ``resablate data fetch`` downloads (``resablate.data.fetch.PUBLIC``).
PUBLIC_DATASETS = ("cifake", "food5k")

#: Experiment trackers a grid can log to (``resablate.grid.tracking``); each is the optional
#: extra of the same name (``resablate[mlflow]``) and the module that extra installs.
TRACKERS = ("tensorboard", "mlflow", "wandb")


class CellStatus(StrEnum):
    """The status of a grid cell, as the results store keeps it (members equal their text).

    ``pending``: not started. ``running``: started, or interrupted while running (a rerun resumes
    it). The finished ones: ``done`` (trained and evaluated), ``diverged`` (a non-finite training
    loss), ``failed`` (an error; rerun with ``retry_failed``) and ``skipped`` (the cell cannot run
    here, e.g. its weights are unavailable; every rerun tries it again).
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        """Whether the cell's run is over (it produced a result or a reason)."""
        return self not in (CellStatus.PENDING, CellStatus.RUNNING)


#: Statuses of a cell whose run is over, in :class:`CellStatus` order.
FINISHED_STATUSES = tuple(status for status in CellStatus if status.finished)
#: Statuses that mean a cell ran and has no result (a report lists them with their reason).
PROBLEM_STATUSES = (CellStatus.FAILED, CellStatus.DIVERGED, CellStatus.SKIPPED)

#: Metrics of one evaluation, the fields of ``resablate.metrics.Metrics``: fractions in [0, 1];
#: precision, recall and F1 are the positive class's.
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
#: What a cell's result and each evaluation record (store columns, table metrics): the
#: classification metrics and ``loss``, the mean test cross-entropy in nats.
METRICS = (*CLASSIFICATION_METRICS, "loss")
#: The metric a table shows unless told otherwise (the studies report F1).
DEFAULT_METRIC = "f1"
#: :data:`METRICS` with the default first: the order reports and the CLI list them in.
METRICS_SHOWN = (DEFAULT_METRIC, *(m for m in METRICS if m != DEFAULT_METRIC))
