"""Learning-rate schedules as pure functions of the optimiser step.

``linear`` is the Hugging Face Trainer's ``get_linear_schedule_with_warmup`` that the CIFAKE study
used: ``w = ceil(warmup_fraction * total)`` warm-up steps, then linear decay to 0 at ``total``. The
learning rate of the update made at (0-based) step ``s`` is ``lr * factor(s)`` with::

    factor(s) = s / w                        for s < w
    factor(s) = (total - s) / (total - w)    for s >= w     (never below 0)

so the first update has lr 0 and the peak ``lr`` is reached at ``s = w``. ``constant`` keeps
``factor(s) = 1``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from resablate.recipes import Recipe


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Warm-up length in optimiser steps: ``ceil(warmup_fraction * total_steps)``."""
    return math.ceil(total_steps * warmup_fraction)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for the update at 0-based optimiser step ``step``."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int) -> LambdaLR:
    """The recipe's schedule over ``total_steps`` optimiser steps (step it once per update)."""
    warmup = warmup_steps(total_steps, recipe.warmup_fraction)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup, recipe.schedule)

    return LambdaLR(optimizer, factor)
