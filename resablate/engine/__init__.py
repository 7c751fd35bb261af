"""One training/evaluation run of one model on one dataset with one recipe.

``train(model, train_data, eval_data, recipe, run_dir=..., seed=...)`` returns a
:class:`TrainResult`; progress arrives as events (:mod:`resablate.engine.events`) through a
callback. The engine knows nothing about ablations: surgery and freezing happen before it sees the
model.
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
from resablate.engine.loop import StepHook, StepInfo, train
from resablate.engine.results import EvalRecord, EvalResult, TrainResult
from resablate.engine.seeding import epoch_order, stream_generator, stream_seed

__all__ = [
    "CheckpointSaved",
    "EvalRecord",
    "EvalResult",
    "Evaluated",
    "ImageSource",
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
]
