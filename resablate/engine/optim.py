"""The optimiser a recipe names."""

from __future__ import annotations

import torch

from resablate.recipes import Recipe

# Devices with torch's fused AdamW kernel (one pass over all parameters instead of a dozen
# element-wise operations per tensor).
_FUSED_DEVICES = frozenset({"cpu", "cuda"})


def fused_supported(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW takes ``params``: floating point, on the CPU or CUDA, all on
    one device."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in _FUSED_DEVICES
        and all(p.is_floating_point() for p in params)
    )


def build_optimizer(params: list[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``params`` (the trainable parameters only).

    AdamW is torch's fused implementation where the parameters' device has it
    (:func:`fused_supported`): the update rule of the default one up to float rounding, computed
    element by element alike wherever the element sits in its tensor (so a packed model's slices
    move bit for bit as its cells' own tensors would). On the 2-core development CPU it cut
    ResNet-18's AdamW step at 32×32 from 40 ms to 7 ms (``benchmarks/packing.py``). SGD stays
    torch's default: its fused kernel rounds an element differently depending on where it sits,
    which would break that equality.
    """
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    return torch.optim.AdamW(
        params,
        lr=recipe.lr,
        betas=recipe.betas,
        eps=recipe.eps,
        weight_decay=recipe.weight_decay,
        fused=fused_supported(params) or None,
    )
