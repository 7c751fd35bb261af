"""Blocks resablate declares by hand: torchvision's ResNet ``BasicBlock`` and ``Bottleneck``.

They would be found by tracing too; declaring them keeps surgery on the ResNets of the papers free
of ``torch.fx`` and shows :func:`resablate.blocks.register_block` at work. Imported by
:mod:`resablate._rewired`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchvision.models.resnet import BasicBlock, Bottleneck

from resablate.blocks import register_block


def _downsample(block: Any, x: Tensor) -> Tensor:
    downsample = block.downsample
    return x if downsample is None else downsample(x)


def _basic_main(block: Any, x: Tensor) -> Tensor:
    out = block.relu(block.bn1(block.conv1(x)))
    return block.bn2(block.conv2(out))


def _bottleneck_main(block: Any, x: Tensor) -> Tensor:
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    return block.bn3(block.conv3(out))


def _relu(block: Any, x: Tensor) -> Tensor:
    return block.relu(x)


BASIC_BLOCK, BOTTLENECK = (
    register_block(
        block, main=main, shortcut=_downsample, act=_relu, shortcut_modules=("downsample",)
    )
    for block, main in ((BasicBlock, _basic_main), (Bottleneck, _bottleneck_main))
)
