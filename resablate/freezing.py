"""Freezing stages for transfer learning, with an explicit BatchNorm policy.

Plans use the papers' numbering over the model's stage map
(:func:`resablate.families.stage_map`): ``none``; ``conv1`` (the stem); ``conv1-K`` (the first K
stages, e.g. ``conv1-3`` = stem, conv2_x, conv3_x for a ResNet); ``all`` (every conv stage: the
"fixed feature extractor"; the classifier stays trainable, and so do the fully connected layers
before it in AlexNet/VGG16). ResNets, AlexNet and VGG16 have 5 stages, EfficientNet-B3/B4 have 9.

A frozen parameter gets ``requires_grad=False``. With ``bn="frozen"`` (the default) every BatchNorm
layer inside a frozen stage is held in eval mode, also when ``model.train()`` is called later, so
its running statistics never move: its class is swapped for a module-level subclass whose
``train()`` keeps ``training=False`` (pickles, deep-copies and moves between devices like the
original). With ``bn="train"`` those layers follow ``model.train()`` and update their statistics
(their affine parameters stay frozen). :func:`frozen_fingerprint` lets a trainer verify afterwards
that frozen weights and running statistics are byte-identical.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from resablate._subclass import made_subclass, rebuild_as
from resablate.choices import BN_POLICIES
from resablate.choices import FREEZE_PLANS as FREEZE_PLANS
from resablate.errors import ConfigError
from resablate.families import stage_map, stage_member


class HeldBatchNorm(nn.Module):
    """Mixin for a BatchNorm layer that stays in eval mode whatever ``train()`` is asked."""

    def train(self, mode: bool = True) -> HeldBatchNorm:
        return super().train(False)  # type: ignore[return-value]


class HeldBatchNorm1d(HeldBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` held in eval mode."""


class HeldBatchNorm2d(HeldBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` held in eval mode."""


class HeldBatchNorm3d(HeldBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` held in eval mode."""


_HELD: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: HeldBatchNorm1d,
    nn.BatchNorm2d: HeldBatchNorm2d,
    nn.BatchNorm3d: HeldBatchNorm3d,
}
_UPSTREAM = {held: upstream for upstream, held in _HELD.items()}


class _MadeHeld(HeldBatchNorm):
    """Base of the held classes made on demand for other BatchNorm types (timm's
    ``BatchNormAct2d``), see :mod:`resablate._subclass`."""

    upstream_class: ClassVar[type[nn.Module]]

    def __reduce_ex__(self, protocol: Any) -> Any:  # type: ignore[override]
        return (rebuild_as, (_held_class, self.upstream_class), dict(self.__dict__))


def _held_class(upstream: type[nn.Module]) -> type[nn.Module]:
    """The held subclass of the BatchNorm class ``upstream`` (made once)."""
    held = _HELD.get(upstream)
    if held is None:
        doc = f"{upstream.__qualname__} held in eval mode."
        held = made_subclass(_HELD, upstream, _MadeHeld, "Held", __name__, doc)
        _UPSTREAM[held] = upstream
    return held


@dataclass(frozen=True)
class FreezeReport:
    """What :func:`freeze` or :func:`unfreeze` changed.

    Attributes:
        plan: The freeze plan applied (``"none"`` after :func:`unfreeze`).
        bn: BatchNorm policy: ``"frozen"`` (held in eval mode) or ``"train"``.
        frozen_stages: Paper names of the frozen stages, in forward order.
        params: All parameters of the model.
        params_frozen: Parameters with ``requires_grad=False`` afterwards.
        bn_layers_held: BatchNorm layers held in eval mode.
        trainable_before: Trainable parameters before the call.
        trainable_after: Trainable parameters after the call.
    """

    plan: str
    bn: str
    frozen_stages: tuple[str, ...]
    params: int
    params_frozen: int
    bn_layers_held: int
    trainable_before: int
    trainable_after: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        data = asdict(self)
        data["frozen_stages"] = list(self.frozen_stages)
        return data

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"freeze {self.plan} (BatchNorm: {self.bn})", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("frozen stages", ", ".join(self.frozen_stages) or "-")
        table.add_row("parameters", f"{self.params:,}")
        table.add_row("frozen", f"{self.params_frozen:,}")
        table.add_row("trainable", f"{self.trainable_before:,} -> {self.trainable_after:,}")
        table.add_row("BatchNorm layers held in eval", str(self.bn_layers_held))
        return table


StageMap = Mapping[str, Sequence[str]]


def _stages_of(model: nn.Module, stages: StageMap | None) -> Mapping[str, tuple[str, ...]]:
    """The registry's stage map of ``model``, or the user's ``stages`` checked against it."""
    if stages is None:
        try:
            return stage_map(model)
        except ConfigError:
            raise ConfigError(
                f"{type(model).__name__} has no named stages (neither a registered architecture "
                "nor ResNet-like): pass stages={name: module paths, in forward order}, e.g. "
                "stages={'stem': ('conv1', 'bn1'), 'body': ('layer1',)}"
            ) from None
    if not stages:
        raise ConfigError("a stage map needs at least one stage: name -> module paths")
    checked: dict[str, tuple[str, ...]] = {}
    for name, paths in stages.items():
        paths = (paths,) if isinstance(paths, str) else tuple(paths)
        for path in paths:
            try:
                stage_member(model, path)
            except AttributeError:
                raise ConfigError(
                    f"stage {name!r}: no module or parameter {path!r} in {type(model).__name__}"
                ) from None
        checked[name] = paths
    return checked


def freeze_plans(model: nn.Module, stages: StageMap | None = None) -> tuple[str, ...]:
    """The legal plans for ``model``: none, conv1, conv1-2 … conv1-N (N = its stage count), all.

    ``stages``: a user stage map (stage name -> module paths, in forward order) instead of the
    registry's; the plans count its stages the same way (``conv1`` = the first stage).
    """
    count = len(_stages_of(model, stages))
    return ("none", "conv1", *(f"conv1-{k}" for k in range(2, count + 1)), "all")


def _frozen_stage_names(model: nn.Module, plan: str, smap: StageMap) -> tuple[str, ...]:
    stages = tuple(smap)
    key = plan.strip().lower()
    match = re.fullmatch(r"conv1-(\d+)", key)
    if key == "none":
        return ()
    if key == "all":
        return stages
    if key == "conv1":
        return stages[:1]
    if match and 2 <= int(match.group(1)) <= len(stages):
        return stages[: int(match.group(1))]
    raise ConfigError(
        f"unknown freeze plan {plan!r}; plans: {', '.join(freeze_plans(model, smap))}"
    )


def _unique_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad`` (shared ones once), for the optimiser."""
    return [p for p in _unique_params([model]) if p.requires_grad]


def _numel(params: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def _release_all(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) in _UPSTREAM:
            module.__class__ = _UPSTREAM[type(module)]  # type: ignore[assignment]
            module.training = model.training
    for p in model.parameters():
        p.requires_grad_(True)


def freeze(
    model: nn.Module, plan: str, *, bn: str = "frozen", stages: StageMap | None = None
) -> FreezeReport:
    """Freeze the stages of ``plan`` in place (replacing any previous freeze).

    Args:
        model: A registered family's model or any torchvision/timm ResNet.
        plan: ``none``, ``conv1``, ``conv1-K`` (K up to the model's stage count) or ``all``.
        bn: ``"frozen"``: BatchNorm layers of frozen stages stay in eval mode (running statistics
            never move); ``"train"``: they follow ``model.train()``.
        stages: A user stage map, stage name -> module or parameter paths in forward order
            (``{"stem": ["conv1", "bn1"], "body": ["layer1"]}``), for a model the registry does
            not know; default: the registry's (:func:`resablate.families.stage_map`).

    Returns:
        What was frozen.

    Raises:
        ConfigError: Unknown plan (the message lists the legal ones) or BN policy, a plan other
            than ``none`` for a model without named stages and no ``stages`` (the message says
            to pass ``stages=``), or a user stage map naming a module the model lacks.
    """
    if bn not in BN_POLICIES:
        raise ConfigError(f"unknown BatchNorm policy {bn!r}; policies: {', '.join(BN_POLICIES)}")
    # Plan none freezes nothing: it applies to every model, named stages or not.
    nothing = stages is None and plan.strip().lower() == "none"
    smap = {} if nothing else _stages_of(model, stages)
    frozen_stages = _frozen_stage_names(model, plan, smap)
    members = [stage_member(model, path) for stage in frozen_stages for path in smap[stage]]
    frozen_modules = [m for m in members if isinstance(m, nn.Module)]
    norms = [
        m
        for root in frozen_modules
        for m in root.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    trainable_before = _numel(trainable_parameters(model))
    _release_all(model)
    frozen_params = [m for m in members if isinstance(m, nn.Parameter)]
    for p in [*_unique_params(frozen_modules), *frozen_params]:
        p.requires_grad_(False)
    held = 0
    if bn == "frozen":
        for m in norms:
            upstream = _UPSTREAM.get(type(m), type(m))
            m.__class__ = _held_class(upstream)  # type: ignore[assignment]
            m.training = False
            held += 1
    params = _numel(_unique_params([model]))
    trainable_after = _numel(trainable_parameters(model))
    return FreezeReport(
        plan=plan.strip().lower(),
        bn=bn,
        frozen_stages=frozen_stages,
        params=params,
        params_frozen=params - trainable_after,
        bn_layers_held=held,
        trainable_before=trainable_before,
        trainable_after=trainable_after,
    )


def unfreeze(model: nn.Module) -> FreezeReport:
    """Make every parameter trainable and release held BatchNorm layers, in place.

    Released BatchNorm layers take the model's current train/eval mode.
    """
    trainable_before = _numel(trainable_parameters(model))
    _release_all(model)
    params = _numel(_unique_params([model]))
    return FreezeReport(
        plan="none",
        bn="train",
        frozen_stages=(),
        params=params,
        params_frozen=0,
        bn_layers_held=0,
        trainable_before=trainable_before,
        trainable_after=params,
    )


def frozen_fingerprint(model: nn.Module) -> dict[str, str]:
    """SHA-256 of every frozen parameter and of the buffers of held BatchNorm layers.

    Take it before training and compare after: equal dicts mean the frozen weights and running
    statistics are byte-identical.

    Returns:
        State-dict name -> hex digest of the tensor's bytes (with dtype and shape).
    """
    tensors: dict[str, torch.Tensor] = {
        name: p for name, p in model.named_parameters() if not p.requires_grad
    }
    for name, module in model.named_modules():
        if isinstance(module, HeldBatchNorm):
            prefix = f"{name}." if name else ""
            tensors.update({prefix + b: t for b, t in module.named_buffers(recurse=False)})
    digests = {}
    for name, tensor in sorted(tensors.items()):
        data = tensor.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        digests[name] = digest.hexdigest()
    return digests
