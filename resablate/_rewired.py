"""Rewired residual blocks: module-level subclasses that surgery swaps in by changing ``__class__``.

A rewired block keeps every attribute, submodule, parameter and buffer of the upstream block (so
state_dict keys and values, pickling, deepcopy, ``.to(device)`` and ``torch.compile`` keep working);
only ``forward`` differs. It reads two plain attributes that surgery sets on the instance:

- ``residual_alpha`` (float): output = ``act(main(x) + residual_alpha * shortcut(x))``; with 0 the
  shortcut (and its projection ``downsample``) is not run at all: output = ``act(main(x))``.
- ``lesioned`` (bool): the main path is not run: output = ``act(shortcut(x))``, the block with its
  residual branch's contribution removed (Veit et al. 2016). For an identity shortcut this is ``x``
  itself, since the block's input already went through a ReLU.

The timm blocks live in :mod:`resablate._timm_blocks` so that timm is imported only when needed.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from resablate.families import TV_BASIC_BLOCK, TV_BOTTLENECK, BlockAdapter


class RewiredBlock(nn.Module):
    """Mixin placed before the upstream block class; see the module docstring."""

    upstream_block: ClassVar[type[nn.Module]]
    adapter: ClassVar[BlockAdapter]
    residual_alpha: float = 1.0
    lesioned: bool = False

    def forward(self, x: Tensor) -> Tensor:
        adapter = self.adapter
        if self.lesioned:
            return adapter.act(self, adapter.shortcut(self, x))
        out = adapter.main(self, x)
        alpha = self.residual_alpha
        if alpha != 0.0:
            shortcut = adapter.shortcut(self, x)
            out = out + (shortcut if alpha == 1.0 else alpha * shortcut)
        return adapter.act(self, out)


def rewired_class(upstream: type[nn.Module], adapter: BlockAdapter) -> type[nn.Module]:
    """The rewired subclass of ``upstream``, named and placed as ``adapter.rewired`` says.

    The caller binds it to that module-level name, so pickling finds it by reference.
    """
    module, _, name = adapter.rewired.rpartition(".")
    namespace = {
        "upstream_block": upstream,
        "adapter": adapter,
        "__module__": module,
        "__qualname__": name,
        "__doc__": f"{adapter.block_type} with a rewired residual connection.",
    }
    return type(name, (RewiredBlock, upstream), namespace)


RewiredBasicBlock = rewired_class(BasicBlock, TV_BASIC_BLOCK)
RewiredBottleneck = rewired_class(Bottleneck, TV_BOTTLENECK)
