"""Parameters and FLOPs of a model, in total and per stage, without touching the model.

Convention (fvcore's, so numbers match published tables): one fused multiply-add is one flop, at
batch 1, in eval mode. The per-operator rules are fvcore's (``fvcore.nn.jit_handles``):

- convolution: ``out_numel / Cout × Cout × Cin/groups × kh × kw`` (= batch × prod(weight shape) ×
  prod(output spatial shape)); transposed convolutions use the input spatial shape;
- linear: ``input numel × out_features`` (bias ignored);
- batch norm with running statistics (eval): ``numel × (2 if affine else 1)``; without running
  statistics: ``numel × (5 if affine else 4)``; group/layer norm: ``numel × (5 if affine else 4)``;
- adaptive average pooling: input numel; upsampling: output numel (× 4 when bilinear);
- activations, max pooling, additions and other element-wise ops: 0 (fvcore ignores them).

The model runs once through :func:`torch.func.functional_call` with meta-device stand-ins for its
parameters and buffers and a meta input, so only shapes are computed (ResNet-152 at 224×224 takes a
few tens of milliseconds on a CPU), and the model's tensors, modes and device are left as they were.
Operators are seen through forward hooks on modules; arithmetic written directly in a custom
``forward`` (``torch.matmul`` outside a module) is not counted. For every registered architecture
the totals equal fvcore's ``FlopCountAnalysis`` exactly (tests/test_counting.py).

``active_params`` are the parameters of the modules the forward pass actually calls: after
:func:`resablate.drop_residual` the idle ``downsample`` projections are not active.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from resablate.errors import ConfigError
from resablate.families import get_family, stage_map

HEAD_STAGE = "head"


@dataclass(frozen=True)
class StageCount:
    """Counts of one stage (paper name, or ``"head"`` for everything after the last stage).

    Attributes:
        stage: ``"conv1"``, ``"conv2_x"``, ... or ``"head"`` (pooling and classifier).
        params: Parameters of the stage.
        trainable_params: Those with ``requires_grad``.
        active_params: Those used by the forward pass.
        flops: Multiply-adds of the stage at batch 1.
    """

    stage: str
    params: int
    trainable_params: int
    active_params: int
    flops: int


@dataclass(frozen=True)
class Counts:
    """Parameters and FLOPs of a model (fvcore's convention: one multiply-add = one flop).

    Attributes:
        params: All parameters (shared ones once).
        trainable_params: Parameters with ``requires_grad``.
        active_params: Parameters of the modules the forward pass calls.
        flops: Multiply-adds of one forward pass at batch 1 in eval mode.
        input_size: ``(C, H, W)`` of the counted input.
        stages: Per stage in forward order, then ``"head"``; empty when the model has no stage
            map (neither a registered family nor ResNet-like). Stage counts sum to the totals.
    """

    params: int
    trainable_params: int
    active_params: int
    flops: int
    input_size: tuple[int, ...]
    stages: tuple[StageCount, ...]

    @property
    def gflops(self) -> float:
        """FLOPs in units of 10⁹."""
        return self.flops / 1e9

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["stages"] = [asdict(s) for s in self.stages]
        return data

    def __rich__(self) -> Any:
        from rich.table import Table

        size = "×".join(str(s) for s in self.input_size)
        table = Table(title=f"parameters and FLOPs (input {size}, batch 1)")
        table.add_column("stage")
        for column in ("params", "trainable", "active", "GFLOPs"):
            table.add_column(column, justify="right")
        for s in self.stages:
            table.add_row(
                s.stage,
                f"{s.params:,}",
                f"{s.trainable_params:,}",
                f"{s.active_params:,}",
                f"{s.flops / 1e9:.3f}",
            )
        table.add_row(
            "total",
            f"{self.params:,}",
            f"{self.trainable_params:,}",
            f"{self.active_params:,}",
            f"{self.gflops:.3f}",
            style="bold",
        )
        return table


# --- per-module flop rules (fvcore's) ------------------------------------------------------------


def _conv(module: Any, x: Tensor, out: Tensor) -> int:
    spatial = (x if module.transposed else out).shape[2:]
    return int(x.shape[0] * math.prod(module.weight.shape) * math.prod(spatial))


def _linear(module: Any, x: Tensor, out: Tensor) -> int:
    return int(x.numel() * module.out_features)


def _batch_norm(module: Any, x: Tensor, out: Tensor) -> int:
    uses_running_stats = not module.training and module.running_mean is not None
    if uses_running_stats:
        return x.numel() * (2 if module.affine else 1)
    return x.numel() * (5 if module.affine else 4)


def _norm(module: Any, x: Tensor, out: Tensor) -> int:
    affine = getattr(module, "affine", None)
    if affine is None:
        affine = getattr(module, "elementwise_affine", False)
    return x.numel() * (5 if affine else 4)


def _instance_norm(module: Any, x: Tensor, out: Tensor) -> int:
    # fvcore reads the affine flag from the argument holding running_mean (index 1) here.
    return x.numel() * (5 if module.running_mean is not None else 4)


def _adaptive_avg_pool(module: Any, x: Tensor, out: Tensor) -> int:
    return x.numel()


def _upsample(module: Any, x: Tensor, out: Tensor) -> int:
    mode = getattr(module, "mode", "nearest")
    return out.numel() * {"nearest": 1, "bilinear": 4}.get(mode, 0)


_RULES: tuple[tuple[type[nn.Module], Callable[[Any, Tensor, Tensor], int]], ...] = (
    (nn.modules.conv._ConvNd, _conv),
    (nn.Linear, _linear),
    (nn.modules.batchnorm._BatchNorm, _batch_norm),
    (nn.modules.instancenorm._InstanceNorm, _instance_norm),
    (nn.GroupNorm, _norm),
    (nn.LayerNorm, _norm),
    (nn.AdaptiveAvgPool2d, _adaptive_avg_pool),
    (nn.Upsample, _upsample),
)


# Modules whose output has their input's shape: during counting they pass their input through
# instead of running their (slow on the meta device) kernel. Their hooks still fire.
_SHAPE_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
)


def _passthrough(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return x


def _rule(module: nn.Module) -> Callable[[Any, Tensor, Tensor], int] | None:
    for cls, rule in _RULES:
        if isinstance(module, cls):
            return rule
    return None


# --- counting ------------------------------------------------------------------------------------


def _checked_size(input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(input_size)
    if not size or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ConfigError(f"input_size must be positive integers such as (3, 224, 224), not {size}")
    return size


def _stage_lookup(model: nn.Module) -> tuple[list[str], Callable[[str], str]]:
    """Stage names in order (``"head"`` last) and a function module name -> stage."""
    try:
        stages = stage_map(model)
    except ConfigError:
        return [], lambda name: HEAD_STAGE
    owner = {path: stage for stage, paths in stages.items() for path in paths}

    def stage_of(name: str) -> str:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            stage = owner.get(".".join(parts[:i]))
            if stage is not None:
                return stage
        return HEAD_STAGE

    return [*stages, HEAD_STAGE], stage_of


def count(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Counts:
    """Count the parameters and FLOPs of ``model`` (fvcore's convention, batch 1, eval mode).

    The model is not changed: its parameters, buffers, device and train/eval modes are the same
    afterwards (also when counting fails).

    Args:
        model: Any ``nn.Module`` whose forward takes one image batch.
        input_size: ``(C, H, W)`` of one input image, in pixels.

    Returns:
        Totals and per-stage counts; see :class:`Counts` and the module docstring for the rules.

    Raises:
        ConfigError: ``input_size`` is not a sequence of positive integers.
    """
    size = _checked_size(input_size)
    stage_names, stage_of = _stage_lookup(model)
    modules = dict(model.named_modules())
    module_stage = {name: stage_of(name) for name in modules}
    called: set[str] = set()
    flops: Counter[str] = Counter()

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        rule = _rule(modules[name])
        stage = module_stage[name]

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            called.add(name)
            if rule is not None and inputs and isinstance(inputs[0], Tensor):
                flops[stage] += int(rule(module, inputs[0], output))

        return hook

    training = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(make_hook(name)) for name, m in modules.items()]
    shortcut = [
        m
        for m in modules.values()
        if isinstance(m, _SHAPE_PRESERVING) and "forward" not in m.__dict__
    ]
    try:
        for module, _ in training:
            module.training = False  # set directly: a module's train() may be overridden
        for module in shortcut:
            module.forward = _passthrough
        meta = {
            name: torch.empty_like(t, device="meta")
            for name, t in (*model.named_parameters(), *model.named_buffers())
        }
        dtype = next((t.dtype for t in meta.values() if t.is_floating_point()), torch.float32)
        x = torch.empty((1, *size), dtype=dtype, device="meta")
        with torch.no_grad():
            functional_call(model, meta, (x,))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training:
            module.training = mode
        for module in shortcut:
            module.__dict__.pop("forward", None)

    per_stage: dict[str, list[int]] = {s: [0, 0, 0] for s in stage_names}
    totals = [0, 0, 0]
    seen: set[int] = set()
    for name, module in modules.items():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            row = (p.numel(), p.numel() if p.requires_grad else 0, p.numel() * (name in called))
            bucket = per_stage.setdefault(module_stage[name], [0, 0, 0])
            for i, value in enumerate(row):
                bucket[i] += value
                totals[i] += value
    stages = tuple(
        StageCount(s, per_stage[s][0], per_stage[s][1], per_stage[s][2], flops[s])
        for s in stage_names
        if s in per_stage
    )
    return Counts(
        params=totals[0],
        trainable_params=totals[1],
        active_params=totals[2],
        flops=sum(flops.values()),
        input_size=size,
        stages=stages,
    )


@dataclass(frozen=True)
class ArchitectureCounts:
    """Parameters and FLOPs of several architectures side by side (1000-class heads).

    Attributes:
        input_size: ``(C, H, W)`` of the counted input.
        rows: ``(arch, source, counts)`` in the order asked.
    """

    input_size: tuple[int, ...]
    rows: tuple[tuple[str, str, Counts], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types."""
        return {
            "input_size": list(self.input_size),
            "architectures": [
                {
                    "arch": arch,
                    "source": source,
                    "params": c.params,
                    "flops": c.flops,
                    "stages": [asdict(s) for s in c.stages],
                }
                for arch, source, c in self.rows
            ],
        }

    def __rich__(self) -> Any:
        from rich.table import Table

        size = "×".join(str(s) for s in self.input_size)
        table = Table(title=f"parameters and FLOPs (1000-class heads, input {size}, batch 1)")
        table.add_column("architecture")
        table.add_column("source")
        for column in ("params", "params (M)", "GFLOPs"):
            table.add_column(column, justify="right")
        for arch, source, c in self.rows:
            table.add_row(arch, source, f"{c.params:,}", f"{c.params / 1e6:.1f}", f"{c.gflops:.2f}")
        return table


def count_architectures(
    archs: Sequence[str], *, source: str = "torchvision", input_size: Sequence[int] = (3, 224, 224)
) -> ArchitectureCounts:
    """Count registered architectures as the papers quote them (1000-class heads, random init).

    Models are built on the meta device (shapes only), so this is fast and allocates nothing.

    Raises:
        ConfigError: No architecture, an unknown one (checked before any is built), or a bad
            ``input_size``.
    """
    if not archs:
        raise ConfigError("name at least one architecture to count")
    size = _checked_size(input_size)
    families = [get_family(arch, source) for arch in archs]
    rows = []
    for family in families:
        with torch.device("meta"):
            model = family.builder()
        rows.append((family.arch, family.source, count(model, size)))
    return ArchitectureCounts(input_size=size, rows=tuple(rows))
