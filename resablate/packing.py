"""Packed cells: K models of one architecture fused into one model (horizontal fusion, HFTA).

Fusing K ResNets of the same architecture gives one model of the same class whose layers hold the
K models side by side, one *group* per model, along the channel axis:

- every ``Conv2d`` becomes a grouped convolution with ``K`` times the groups (group ``k`` reads only
  group ``k``'s input channels), its weight the K weights concatenated along dim 0;
- every ``BatchNorm2d`` normalises ``K * C`` channels (statistics are per channel, hence per
  group); its ``num_batches_tracked`` is kept per group in ``group_batches_tracked``;
- the ``Linear`` head becomes :class:`PackedLinear`: K independent linear maps (one batched
  matrix product), weight ``[K * out, in]``;
- each residual block adds its shortcut scaled by a per-group ``alpha`` (1 = residual on, 0 =
  dropped, anything between = scaled), so cells with different residual plans share a pack.

The input of a packed model is the K groups' batches concatenated along channels
(:func:`pack_inputs`: ``[B, K * 3, H, W]``, group-major), its output the K groups' logits
``[B, K * classes]`` (:func:`split_outputs` gives ``[K, B, classes]``). Every operation keeps the
groups apart, so group ``k`` computes what model ``k`` computes alone up to float
re-association, and a non-finite value in one group never reaches another.

Every parameter and buffer of the packed model is the K models' tensors concatenated along dim 0
under the same state-dict key, so :func:`unfuse` gives back K state dicts with exactly the
standalone keys, order and shapes.

What a standalone model does not use, its group does not touch either: where a block's shortcut
is dropped (alpha 0) in some groups but not all, the projection shortcut (``downsample``) still
runs for the whole pack, so its BatchNorm holds those groups' running statistics
(:class:`PackedBatchNorm2d`) and :func:`idle_groups` names the parameters those groups must not
update (the optimiser's business). :func:`hold_groups` does the same for whole groups (a diverged
cell stops updating).

Supported: torchvision ResNets (ResNet, ResNeXt, Wide-ResNet) after residual surgery (drop or
scale, not lesion) and freezing. Other models raise :class:`~resablate.errors.ConfigError`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from resablate._rewired import rewired_class, unwire
from resablate.adapters import BASIC_BLOCK, BOTTLENECK
from resablate.blocks import BlockAdapter
from resablate.errors import ConfigError
from resablate.families import type_name
from resablate.freezing import HeldBatchNorm
from resablate.surgery import residual_state

GROUP_COUNTER = "group_batches_tracked"
"""Buffer of a packed BatchNorm layer: each group's ``num_batches_tracked`` (int64 ``[K]``)."""


class PackedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` over ``K * C`` channels that can hold some groups' running statistics.

    Attributes:
        pack_size: K.
        held: Groups (bool ``[K]``) whose running statistics and batch counter stay as they are
            in training mode (``None`` = none held). Set by :func:`fuse` and :func:`hold_groups`.
    """

    held: Tensor | None
    _held_channels: Tensor
    group_batches_tracked: Tensor

    def __init__(
        self,
        num_features: int,
        pack_size: int,
        *,
        device: torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_features, device=device, **kwargs)
        self.pack_size = pack_size
        counter = torch.zeros(pack_size, dtype=torch.long, device=device)
        self.register_buffer(GROUP_COUNTER, counter)
        self.held = None

    def hold(self, groups: Tensor) -> None:
        """Hold ``groups`` (bool ``[K]``) too; the masks live on the layer's device (no copy in
        the forward pass)."""
        groups = groups.to(self.group_batches_tracked.device, dtype=torch.bool)
        self.held = groups if self.held is None else self.held | groups
        self._held_channels = self.held.repeat_interleave(self.num_features // self.pack_size)

    def _apply(self, fn: Any, recurse: bool = True) -> PackedBatchNorm2d:
        """Move (or cast) the masks with the layer's buffers."""
        super()._apply(fn, recurse)
        if self.held is not None:
            self.held, self._held_channels = fn(self.held), fn(self._held_channels)
        return self

    def forward(self, x: Tensor) -> Tensor:
        updates = self.training and self.track_running_stats
        held = self.held
        if not updates or held is None:
            out = super().forward(x)
            if updates:
                self.group_batches_tracked.add_(1)
            return out
        mean, var = self.running_mean, self.running_var
        assert mean is not None and var is not None
        keep_mean, keep_var = mean.clone(), var.clone()
        out = super().forward(x)
        channels = self._held_channels
        # New tensors, not in-place copies: autograd saved the updated ones for the backward.
        self.running_mean = torch.where(channels, keep_mean, mean)
        self.running_var = torch.where(channels, keep_var, var)
        self.group_batches_tracked.add_((~held).long())
        return out


class PackedHeldBatchNorm2d(HeldBatchNorm, PackedBatchNorm2d):
    """:class:`PackedBatchNorm2d` of a frozen stage, held in eval mode (``bn="frozen"``)."""


class PackedLinear(nn.Module):
    """K independent linear maps as one module: ``[B, K * in] -> [B, K * out]``, group-major.

    Attributes:
        weight: ``[K * out, in]``: the K weights concatenated along dim 0.
        bias: ``[K * out]`` or ``None``.
    """

    def __init__(
        self, in_features: int, out_features: int, pack_size: int, *, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.pack_size = in_features, out_features, pack_size
        self.weight = nn.Parameter(torch.empty(pack_size * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(pack_size * out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        k, n_in, n_out = self.pack_size, self.in_features, self.out_features
        batch = x.shape[0]
        xs = x.reshape(batch, k, n_in).transpose(0, 1)
        weights = self.weight.view(k, n_out, n_in).transpose(1, 2)
        if self.bias is None:
            y = torch.bmm(xs, weights)
        else:
            y = torch.baddbmm(self.bias.view(k, 1, n_out), xs, weights)
        return y.transpose(0, 1).reshape(batch, k * n_out)


class PackedBlock(nn.Module):
    """Mixin placed before the upstream block class: ``act(main(x) + alpha_k * shortcut(x))``.

    ``pack_alphas`` are the groups' shortcut weights; ``pack_scale`` (``[1, K * C, 1, 1]``, a
    non-persistent buffer) spreads them over each group's output channels, cast to the shortcut's
    dtype (a bf16 block stays bf16). When every group's alpha is 0 the shortcut is not run (as in
    a standalone dropped block); when every group's is 1 it is added unscaled.
    """

    upstream_block: ClassVar[type[nn.Module]]
    adapter: ClassVar[BlockAdapter]
    pack_scale: Tensor
    pack_alphas: tuple[float, ...]

    def forward(self, x: Tensor) -> Tensor:
        adapter = self.adapter
        out = adapter.main(self, x)
        alphas = self.pack_alphas
        if any(alphas):
            shortcut = adapter.shortcut(self, x)
            if all(a == 1.0 for a in alphas):
                out = out + shortcut
            else:
                out = out + self.pack_scale.to(shortcut.dtype) * shortcut
        return adapter.act(self, out)


def _packed_class(upstream: type[nn.Module], adapter: BlockAdapter, name: str) -> type[nn.Module]:
    namespace = {
        "upstream_block": upstream,
        "adapter": adapter,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{upstream.__qualname__} of a packed model (per-group shortcut alpha).",
    }
    return type(name, (PackedBlock, upstream), namespace)


PackedBasicBlock = _packed_class(BasicBlock, BASIC_BLOCK, "PackedBasicBlock")
PackedBottleneck = _packed_class(Bottleneck, BOTTLENECK, "PackedBottleneck")

_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {
    BasicBlock: PackedBasicBlock,
    rewired_class(BasicBlock): PackedBasicBlock,
    Bottleneck: PackedBottleneck,
    rewired_class(Bottleneck): PackedBottleneck,
}
_LEAVES = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Sequential)


def _kind(module: nn.Module) -> str:
    """The structural kind of a module (the same for a block before and after surgery)."""
    if type(module) in _BLOCKS:
        return type_name(_BLOCKS[type(module)])
    if isinstance(module, nn.BatchNorm2d):
        return "BatchNorm2d"
    return type_name(type(module))


def unpackable_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be packed, or ``None`` when it can.

    Packable: a torchvision ResNet (ResNeXt and Wide-ResNet included) made of convolutions,
    BatchNorm with a momentum, ReLU, pooling and a linear head; residual blocks dropped or scaled
    by surgery, none lesioned.
    """
    if not isinstance(model, ResNet):
        return f"{type_name(type(model))} is not a torchvision ResNet"
    for name, module in model.named_modules():
        if name == "" or type(module) in _BLOCKS or isinstance(module, (*_LEAVES, nn.Conv2d)):
            continue
        if isinstance(module, nn.Linear) and name == "fc":
            continue
        if type(module) is nn.BatchNorm2d or isinstance(module, HeldBatchNorm):
            if module.momentum is None:
                return f"BatchNorm layer {name} averages cumulatively (momentum None)"
            continue
        return f"module {name} of type {type_name(type(module))} has no packed form"
    lesioned = [n for n, s in residual_state(model).items() if s["lesioned"]]
    if lesioned:
        return f"block {lesioned[0]} is lesioned"
    return None


def _check_members(models: Sequence[nn.Module]) -> None:
    if not models:
        raise ConfigError("cannot pack an empty list of models")
    for i, model in enumerate(models):
        reason = unpackable_reason(model)
        if reason is not None:
            raise ConfigError(f"cannot pack model {i}: {reason}")
    reference = models[0]
    layout = [(n, _kind(m), m.training) for n, m in reference.named_modules()]
    params = [
        (n, p.shape, p.dtype, p.device, p.requires_grad) for n, p in reference.named_parameters()
    ]
    buffers = [(n, b.shape, b.dtype) for n, b in reference.named_buffers()]
    for i, model in enumerate(models[1:], start=1):
        if [(n, _kind(m), m.training) for n, m in model.named_modules()] != layout:
            raise ConfigError(f"cannot pack model {i} with model 0: their layers differ")
        theirs = [
            (n, p.shape, p.dtype, p.device, p.requires_grad) for n, p in model.named_parameters()
        ]
        if theirs != params:
            raise ConfigError(
                f"cannot pack model {i} with model 0: parameter shapes, dtypes, devices or "
                "frozen parts differ"
            )
        if [(n, b.shape, b.dtype) for n, b in model.named_buffers()] != buffers:
            raise ConfigError(f"cannot pack model {i} with model 0: buffers differ")


def _cat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach() for t in tensors], dim=0)


def _fuse_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    ref, k = convs[0], len(convs)
    fused = nn.Conv2d(
        ref.in_channels * k,
        ref.out_channels * k,
        ref.kernel_size,  # type: ignore[arg-type]
        stride=ref.stride,  # type: ignore[arg-type]
        padding=ref.padding,  # type: ignore[arg-type]
        dilation=ref.dilation,  # type: ignore[arg-type]
        groups=ref.groups * k,
        bias=ref.bias is not None,
        padding_mode=ref.padding_mode,
        device=ref.weight.device,
        dtype=ref.weight.dtype,
    )
    _copy_params(fused, convs)
    return fused


def _fuse_norm(norms: Sequence[nn.BatchNorm2d]) -> PackedBatchNorm2d:
    ref, k = norms[0], len(norms)
    cls = PackedHeldBatchNorm2d if isinstance(ref, HeldBatchNorm) else PackedBatchNorm2d
    fused = cls(
        ref.num_features * k,
        k,
        eps=ref.eps,
        momentum=ref.momentum,
        affine=ref.affine,
        track_running_stats=ref.track_running_stats,
        device=ref.weight.device,
        dtype=ref.weight.dtype,
    )
    _copy_params(fused, norms)
    if ref.track_running_stats:
        with torch.no_grad():
            for name in ("running_mean", "running_var"):
                _buffer(fused, name).copy_(_cat([_buffer(n, name) for n in norms]))
            counts = torch.stack([_buffer(n, "num_batches_tracked") for n in norms])
            fused.group_batches_tracked.copy_(counts)
            _buffer(fused, "num_batches_tracked").copy_(counts.max())
    fused.training = ref.training
    return fused


def _buffer(module: nn.Module, name: str) -> Tensor:
    buffer = module.get_buffer(name)
    assert buffer is not None
    return buffer


def _fuse_linear(heads: Sequence[nn.Linear]) -> PackedLinear:
    ref = heads[0]
    fused = PackedLinear(ref.in_features, ref.out_features, len(heads), bias=ref.bias is not None)
    fused.to(device=ref.weight.device, dtype=ref.weight.dtype)
    _copy_params(fused, heads)
    fused.training = ref.training
    return fused


def _copy_params(fused: nn.Module, members: Sequence[nn.Module]) -> None:
    """Concatenate the members' parameters into ``fused``'s (requires_grad from member 0)."""
    with torch.no_grad():
        for name, param in fused.named_parameters(recurse=False):
            sources = [getattr(m, name) for m in members]
            param.copy_(_cat(sources))
            param.requires_grad_(sources[0].requires_grad)


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _pack_block(block: nn.Module, alphas: tuple[float, ...]) -> None:
    block.__class__ = _BLOCKS[unwire(block)]
    block.pack_alphas = alphas  # type: ignore[assignment]
    last_norm = block.get_submodule("bn3" if isinstance(block, Bottleneck) else "bn2")
    channels = last_norm.num_features // len(alphas)  # type: ignore[operator]
    scale = torch.tensor(alphas, device=next(block.parameters()).device)
    block.register_buffer(
        "pack_scale", scale.repeat_interleave(channels).view(1, -1, 1, 1), persistent=False
    )
    if 0.0 in alphas and any(alphas):
        dropped = torch.tensor([a == 0.0 for a in alphas])
        for module in _shortcut_modules(block):
            if isinstance(module, PackedBatchNorm2d):
                module.hold(dropped)


def _shortcut_modules(block: nn.Module) -> list[nn.Module]:
    downsample = getattr(block, "downsample", None)
    return [] if downsample is None else list(downsample.modules())


def fuse(models: Sequence[nn.Module]) -> nn.Module:
    """Fuse K models of one architecture into one packed model (see the module docstring).

    The models are not changed. Group ``k`` of the result starts from ``models[k]``'s weights,
    buffers, residual wiring and frozen parts; its train/eval mode is model 0's.

    Args:
        models: The K models (K >= 1): same class, layers, shapes, dtypes, devices and frozen
            parameters; residual plans may differ.

    Returns:
        The packed model (a torchvision ``ResNet`` whose layers are packed); ``pack_size(model)``
        is K.

    Raises:
        ConfigError: A model cannot be packed (:func:`unpackable_reason`), or the models differ
            in architecture, shapes or frozen parts.
    """
    _check_members(models)
    k = len(models)
    fused = copy.deepcopy(models[0])
    members = [dict(m.named_modules()) for m in models]
    states = [residual_state(m) for m in models]
    for name, module in list(fused.named_modules()):
        group = [member[name] for member in members]
        if isinstance(module, nn.Conv2d):
            _set_module(fused, name, _fuse_conv(group))
        elif isinstance(module, nn.BatchNorm2d):
            _set_module(fused, name, _fuse_norm(group))
        elif isinstance(module, nn.Linear):
            _set_module(fused, name, _fuse_linear(group))
    for name, block in fused.named_modules():
        if type(block) in _BLOCKS:
            _pack_block(block, tuple(float(state[name]["alpha"]) for state in states))
    fused.pack_size = k  # type: ignore[assignment]
    return fused


def pack_size(model: nn.Module) -> int:
    """K of a packed model.

    Raises:
        ConfigError: ``model`` is not a packed model.
    """
    k = getattr(model, "pack_size", None)
    if not isinstance(k, int):
        raise ConfigError(f"{type_name(type(model))} is not a packed model (see resablate.packing)")
    return k


def unfuse(model: nn.Module) -> list[dict[str, Tensor]]:
    """The K groups of a packed model as K standalone state dicts.

    Each has exactly the keys, order, shapes and dtypes of the standalone model's
    ``state_dict()`` (``num_batches_tracked`` from the group's own counter); the tensors are
    copies on the packed model's device.
    """
    k = pack_size(model)
    state = model.state_dict()
    groups: list[dict[str, Tensor]] = [{} for _ in range(k)]
    for key, tensor in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == GROUP_COUNTER:
            continue
        if leaf == "num_batches_tracked":
            chunks = state[f"{prefix}.{GROUP_COUNTER}" if prefix else GROUP_COUNTER]
        else:
            chunks = tensor.detach().unflatten(0, (k, -1))
        for group, chunk in zip(groups, chunks, strict=True):
            group[key] = chunk.clone()
    return groups


def idle_groups(model: nn.Module) -> dict[str, Tensor]:
    """Parameters some groups do not use: name -> bool ``[K]``, True for those groups.

    A group whose residual connection is dropped (alpha 0) in a block does not use the block's
    projection shortcut while other groups of the pack do; its slice of those parameters must
    stay as it is (a standalone run never gives them a gradient). Blocks dropped in every group
    do not run their shortcut at all (the parameters get no gradient) and are not listed.
    """
    k = pack_size(model)
    idle: dict[str, Tensor] = {}
    for name, block in model.named_modules():
        alphas = getattr(block, "pack_alphas", None)
        if isinstance(block, PackedBlock) and alphas and 0.0 in alphas and any(alphas):
            mask = torch.tensor([a == 0.0 for a in alphas])
            downsample = getattr(block, "downsample", None)
            if downsample is not None:
                for param_name, _ in downsample.named_parameters():
                    idle[f"{name}.downsample.{param_name}"] = mask
    assert all(len(m) == k for m in idle.values())
    return idle


def hold_groups(model: nn.Module, groups: Tensor) -> None:
    """Hold the running statistics of ``groups`` (bool ``[K]``) in every BatchNorm layer.

    Added to what the pack's own residual plans hold (:func:`idle_groups`); used when a group
    stops training (its cell diverged).
    """
    k = pack_size(model)
    if groups.shape != (k,):
        raise ConfigError(f"hold_groups needs a bool mask of {k} groups, got {tuple(groups.shape)}")
    for module in model.modules():
        if isinstance(module, PackedBatchNorm2d):
            module.hold(groups)


def pack_inputs(batches: Sequence[Tensor]) -> Tensor:
    """K image batches ``[B, C, H, W]`` (one per group, same shape) -> ``[B, K * C, H, W]``."""
    return torch.cat(list(batches), dim=1)


def split_outputs(logits: Tensor, k: int) -> Tensor:
    """A packed model's logits ``[B, K * classes]`` -> ``[K, B, classes]`` (a view)."""
    return logits.unflatten(1, (k, -1)).transpose(0, 1)


class PackedGroups:
    """A packed model's groups as the engine trains them (``resablate.engine.groups.ModelGroups``).

    Attributes:
        model: The packed model.
        size: K.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.size = pack_size(model)

    def join(self, images: Tensor) -> Tensor:
        """``[K * B, C, H, W]`` (group-major) -> the packed input ``[B, K * C, H, W]``."""
        return images.unflatten(0, (self.size, -1)).transpose(0, 1).flatten(1, 2)

    def split(self, logits: Tensor) -> Tensor:
        return split_outputs(logits, self.size)

    def idle(self) -> dict[str, Tensor]:
        return idle_groups(self.model)

    def hold(self, groups: Tensor) -> None:
        hold_groups(self.model, groups)

    def states(self) -> list[dict[str, Tensor]]:
        return unfuse(self.model)
