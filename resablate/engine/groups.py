"""The K models one training session advances: one model alone is a pack of one.

The engine trains K >= 1 *groups* in one model: a plain model is one group; a packed model
(:mod:`resablate.packing`, handed in by the caller) holds K. :class:`ModelGroups` is all the engine
needs to know of how the groups share the model; it knows nothing of how they were put together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from torch import Tensor, nn


class ModelGroups(Protocol):
    """How the K groups of a model take their inputs and give their outputs.

    Attributes:
        size: K, the number of groups.
    """

    size: int

    def join(self, images: Tensor) -> Tensor:
        """The model's input from K batches ``[K * B, C, H, W]`` (group 0's B images first)."""
        ...

    def split(self, logits: Tensor) -> Tensor:
        """The model's output as each group's logits, ``[K, B, classes]``."""
        ...

    def idle(self) -> dict[str, Tensor]:
        """Parameter name -> bool ``[K]``: groups whose slice of the parameter (dim 0 split in K)
        a separate run would not update. Parameters not named are used by every group."""
        ...

    def hold(self, groups: Tensor) -> None:
        """Stop ``groups`` (bool ``[K]``) from updating the model's running statistics."""
        ...

    def states(self) -> Sequence[nn.Module | Mapping[str, Tensor]]:
        """Each group's weights as its model alone would hold them (a module or a state dict)."""
        ...


class OneModel:
    """A plain model as a pack of one: the identity on inputs and outputs."""

    size = 1

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def join(self, images: Tensor) -> Tensor:
        return images

    def split(self, logits: Tensor) -> Tensor:
        return logits.unsqueeze(0)

    def idle(self) -> dict[str, Tensor]:
        return {}

    def hold(self, groups: Tensor) -> None:
        """Nothing to hold: a run of one stops when its group does."""

    def states(self) -> Sequence[nn.Module | Mapping[str, Tensor]]:
        return [self.model]


def replicate(groups: ModelGroups, images: Tensor) -> Tensor:
    """The model input that feeds the same batch ``[B, C, H, W]`` to every group."""
    if groups.size == 1:
        return groups.join(images)
    return groups.join(images.expand(groups.size, *images.shape).flatten(0, 1))
