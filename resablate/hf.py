"""The Hugging Face ``transformers`` ResNets (microsoft/resnet-18 … -152), built offline (imports
transformers: only :mod:`resablate.families`' builders import this module).

Each depth is built from a ``ResNetConfig`` equal to the architecture fields of the microsoft
checkpoint's ``config.json`` (layer type, depths, hidden sizes, stem width, v1.5 stride placement),
so its state_dict has the checkpoint's keys and shapes and ``weights="imagenet"`` loads the cached
``model.safetensors`` strictly. :class:`ResNetLogits` returns the logits tensor (not a
``ModelOutput``), as every other model resablate builds.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers import ResNetConfig, ResNetForImageClassification

#: depth -> (layer type, blocks per stage, stage widths); stem width 64, stride in the 3×3 conv.
CONFIGS: dict[int, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    34: ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    50: ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    101: ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
    152: ("bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048)),
}


class ResNetLogits(ResNetForImageClassification):
    """``ResNetForImageClassification`` whose forward returns the logits ``[B, num_labels]``."""

    def forward(self, pixel_values: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        return super().forward(pixel_values, *args, **kwargs).logits


def config(depth: int) -> ResNetConfig:
    """The ``ResNetConfig`` of microsoft/resnet-``depth`` (1000 ImageNet classes)."""
    layer_type, depths, hidden_sizes = CONFIGS[depth]
    return ResNetConfig(
        num_channels=3,
        embedding_size=64,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type=layer_type,
        hidden_act="relu",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,
        # A PretrainedConfig keyword that transformers' typed ResNetConfig signature leaves out.
        num_labels=1000,  # type: ignore[call-arg]
    )


def build_resnet(depth: int) -> ResNetLogits:
    """microsoft/resnet-``depth``, randomly initialised (works under ``torch.device("meta")``)."""
    return ResNetLogits(config(depth))
