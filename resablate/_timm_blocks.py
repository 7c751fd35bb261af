"""timm's ResNet blocks for surgery: their adapters and rewired subclasses (imports timm).

Imported by :mod:`resablate.families` the first time a timm block is met, never at start-up.
"""

from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck

from resablate._rewired import RewiredBlock
from resablate.families import (
    BlockAdapter,
    register_block,
    shortcut_path,
    timm_basic_act,
    timm_basic_main,
    timm_bottleneck_act,
    timm_bottleneck_main,
)

TIMM_BASIC_BLOCK = register_block(
    BlockAdapter(
        block_type="timm.models.resnet.BasicBlock",
        main=timm_basic_main,
        shortcut=shortcut_path,
        act=timm_basic_act,
        rewired="resablate._timm_blocks.RewiredTimmBasicBlock",
    )
)
TIMM_BOTTLENECK = register_block(
    BlockAdapter(
        block_type="timm.models.resnet.Bottleneck",
        main=timm_bottleneck_main,
        shortcut=shortcut_path,
        act=timm_bottleneck_act,
        rewired="resablate._timm_blocks.RewiredTimmBottleneck",
    )
)


class RewiredTimmBasicBlock(RewiredBlock, BasicBlock):
    """timm ``BasicBlock`` with a rewired residual connection."""

    upstream_block = BasicBlock
    adapter = TIMM_BASIC_BLOCK


class RewiredTimmBottleneck(RewiredBlock, Bottleneck):
    """timm ``Bottleneck`` with a rewired residual connection."""

    upstream_block = Bottleneck
    adapter = TIMM_BOTTLENECK
