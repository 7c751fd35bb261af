"""Hugging Face ``transformers`` models: the registered ResNets (microsoft/resnet-18 … -152), built
offline, and any image classifier named by a hub id or a local directory (imports transformers:
only the builders of :mod:`resablate.families` and :mod:`resablate.model_spec` import this module).

Each depth is built from a ``ResNetConfig`` equal to the architecture fields of the microsoft
checkpoint's ``config.json`` (layer type, depths, hidden sizes, stem width, v1.5 stride placement),
so its state_dict has the checkpoint's keys and shapes and ``weights="imagenet"`` loads the cached
``model.safetensors`` strictly. :class:`ResNetLogits` returns the logits tensor (not a
``ModelOutput``), as every other model resablate builds; any other classifier gets the same
behaviour from a ``Logits<Class>`` subclass made once per class (:func:`build_from_config`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
)

from resablate._subclass import made_subclass, rebuild_as
from resablate.errors import ConfigError

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


class _Logits(nn.Module):
    """Mixin: the classifier's forward returns the logits tensor; pickles by rebuilding from the
    upstream class (:mod:`resablate._subclass`)."""

    upstream_class: ClassVar[type[nn.Module]]

    def forward(self, pixel_values: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return super().forward(pixel_values, *args, **kwargs).logits  # type: ignore[no-any-return]

    def __reduce_ex__(self, protocol: Any) -> Any:  # type: ignore[override]
        return (rebuild_as, (_logits_class, self.upstream_class), dict(self.__dict__))


_LOGITS: dict[type, type] = {}


def _logits_class(upstream: type) -> type:
    """The logits-returning subclass of a transformers classifier class (made once)."""
    doc = f"``{upstream.__name__}`` whose forward returns the logits tensor."
    return made_subclass(_LOGITS, upstream, _Logits, "Logits", __name__, doc)


def build_from_config(name_or_dir: str) -> nn.Module:
    """A randomly initialised image classifier from a Hugging Face config (1000-class head
    unless the config says otherwise; works under ``torch.device("meta")``).

    Args:
        name_or_dir: A local directory holding ``config.json`` (``save_pretrained``'s), or a hub
            id whose ``config.json`` is cached or can be downloaded (only that small file; no
            weights).

    Raises:
        ConfigError: The config cannot be read (offline and not cached, not a config), or it is
            not an image classification model.
    """
    try:
        config = AutoConfig.from_pretrained(name_or_dir)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ConfigError(
            f"cannot read the config of Hugging Face model {name_or_dir} ({reason}); offline, "
            "save the model with save_pretrained on a connected machine and pass its directory"
        ) from None
    if isinstance(config, ResNetConfig):
        return ResNetLogits(config)
    try:
        model = AutoModelForImageClassification.from_config(config)
    except ValueError:
        raise ConfigError(
            f"Hugging Face model {name_or_dir} ({config.model_type}) is not an image "
            "classification model"
        ) from None
    model.__class__ = _logits_class(type(model))
    return model
