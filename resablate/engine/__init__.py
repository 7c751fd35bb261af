"""Training and evaluation of K >= 1 groups of one model on one dataset with one recipe.

``train(model, train_data, eval_data, recipe, run_dir=..., seed=...)`` returns a
:class:`TrainResult`; ``train_groups(model, groups, ...)`` trains the K groups of a packed model as
K runs in the same session. Progress arrives as events (:mod:`resablate.engine.events`) through a
callback. The engine knows nothing about ablations: surgery, freezing and packing happen before it
sees the model, and what it checks (a frozen fingerprint) is handed in (an import-linter contract
keeps it so).
"""

from resablate.engine.data import ImageSource, Transform
from resablate.engine.evaluate import evaluate
from resablate.engine.events import (
    CheckpointSaved,
    Evaluated,
    StepProgress,
    TrainEvent,
    TrainFinished,
    TrainStarted,
)
from resablate.engine.groups import ModelGroups, OneModel
from resablate.engine.loop import StepHook, StepInfo, train, train_groups
from resablate.engine.results import EvalRecord, EvalResult, TrainResult
from resablate.engine.seeding import epoch_order, stream_generator, stream_seed

__all__ = [
    "CheckpointSaved",
    "EvalRecord",
    "EvalResult",
    "Evaluated",
    "ImageSource",
    "ModelGroups",
    "OneModel",
    "StepHook",
    "StepInfo",
    "StepProgress",
    "TrainEvent",
    "TrainFinished",
    "TrainResult",
    "TrainStarted",
    "Transform",
    "epoch_order",
    "evaluate",
    "stream_generator",
    "stream_seed",
    "train",
    "train_groups",
]
