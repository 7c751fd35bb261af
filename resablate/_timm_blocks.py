"""timm's ResNet blocks for surgery: their adapters and rewired subclasses (imports timm).

Imported by :mod:`resablate.families` the first time a timm block is met, never at start-up.
"""

from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck

from resablate._rewired import rewired_class
from resablate.families import (
    declare_blocks,
    timm_basic_act,
    timm_basic_main,
    timm_bottleneck_act,
    timm_bottleneck_main,
)

TIMM_BASIC_BLOCK, TIMM_BOTTLENECK = declare_blocks(
    "timm.models.resnet",
    __name__,
    "RewiredTimm",
    {
        "BasicBlock": (timm_basic_main, timm_basic_act),
        "Bottleneck": (timm_bottleneck_main, timm_bottleneck_act),
    },
)
RewiredTimmBasicBlock = rewired_class(BasicBlock, TIMM_BASIC_BLOCK)
RewiredTimmBottleneck = rewired_class(Bottleneck, TIMM_BOTTLENECK)
