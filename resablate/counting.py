"""Parameters and FLOPs of a model, in total and per stage, without touching the model.

Convention (fvcore's, so numbers match published tables): one fused multiply-add is one flop, at
batch 1, in eval mode. The per-operator rules are fvcore's (``fvcore.nn.jit_handles``):

- convolution: ``out_numel / Cout × Cout × Cin/groups × kh × kw`` (= batch × prod(weight shape) ×
  prod(output spatial shape)); transposed convolutions use the input spatial shape;
- linear and matrix products (``F.linear``, ``@``, ``mm``, ``addmm``, ``bmm``, ``einsum``):
  ``input numel × out_features``, i.e. ``M × K × N`` per product (bias ignored); ``baddbmm``, which
  fvcore leaves out, is counted like ``bmm``;
- batch norm with running statistics (eval): ``numel × (2 if affine else 1)``; without running
  statistics: ``numel × (5 if affine else 4)``; group/layer norm: ``numel × (5 if affine else 4)``;
- adaptive average pooling (module or ``F.adaptive_avg_pool2d``): input numel; nearest/bilinear
  upsampling: output numel (× 4 when bilinear); ``grid_sample``: output numel × 4;
- activations, max and fixed-window pooling, additions and other element-wise ops: 0 (fvcore
  ignores them);
- attention (``F.scaled_dot_product_attention``, and the attention inside
  ``nn.MultiheadAttention``): the products ``QKᵀ`` and ``AV`` are **not** counted, as fvcore does
  not count ``scaled_dot_product_attention``; the projections around them are (they are linears).
  The call is listed in :attr:`Counts.uncounted_ops`. For ViT-B/16 at 224×224 this leaves out
  0.73 of its 17.6 GFLOPs.

The model runs once through :func:`torch.func.functional_call` with meta-device stand-ins for its
parameters and buffers and a meta input, so only shapes are computed (ResNet-152 at 224×224 takes a
few tens of milliseconds on a CPU), and the model's tensors, modes and device are left as they were.
Layers with a rule above (convolution, linear, normalisation, adaptive pooling, upsampling modules)
are counted from their module call; everything computed outside them, module-less calls included
(``F.linear`` in ``nn.MultiheadAttention``, ``F.adaptive_avg_pool2d`` in a ``forward``, ``x @ w``),
is counted at the operator level and attributed to the innermost module running it, and through it
to a stage. Operators that do multiply-adds but have no rule here (``mv``, ``addbmm``,
``cdist``, bicubic upsampling, FFTs, ...) are counted as 0 and listed in
:attr:`Counts.uncounted_ops`. For every registered architecture the totals equal fvcore's
``FlopCountAnalysis`` exactly, and within 1 % for ViT-B/16, ConvNeXt, RegNet, MobileNetV2 and
EfficientNet (tests/test_counting.py).

``active_params`` are the parameters the forward pass actually reads: a parameter is active when
an operator receives it (or the normalisation layer owning it runs). After
:func:`resablate.drop_residual` the idle ``downsample`` projections are inactive; the output
projection of ``nn.MultiheadAttention``, used without being called as a module, is active.

``nn.DataParallel`` and ``DistributedDataParallel`` wrappers are counted as the model they wrap.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from resablate.errors import ConfigError
from resablate.families import stage_map
from resablate.model_spec import FACTORY, ModelSpec, parse_model

HEAD_STAGE = "head"


@dataclass(frozen=True)
class StageCount:
    """Counts of one stage (paper name, or ``"head"`` for everything after the last stage).

    Attributes:
        stage: ``"conv1"``, ``"conv2_x"``, ... or ``"head"`` (pooling and classifier).
        params: Parameters of the stage.
        trainable_params: Those with ``requires_grad``.
        active_params: Those the forward pass reads.
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
        active_params: Parameters the forward pass reads (see the module docstring).
        flops: Multiply-adds of one forward pass at batch 1 in eval mode.
        input_size: ``(C, H, W)`` of the counted input.
        stages: Per stage in forward order, then ``"head"``; empty when the model has no stage
            map (neither a registered family nor ResNet-like). Stage counts sum to the totals.
        uncounted_ops: ``(operator, calls)`` for operators that do multiply-adds but are counted
            as 0 (attention products by fvcore's convention, operators without a rule), sorted by
            name; empty when everything was counted.
    """

    params: int
    trainable_params: int
    active_params: int
    flops: int
    input_size: tuple[int, ...]
    stages: tuple[StageCount, ...]
    uncounted_ops: tuple[tuple[str, int], ...] = ()

    @property
    def gflops(self) -> float:
        """FLOPs in units of 10⁹."""
        return self.flops / 1e9

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types; ``uncounted_ops`` as ``{operator: calls}``."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["stages"] = [asdict(s) for s in self.stages]
        data["uncounted_ops"] = dict(self.uncounted_ops)
        return data

    def __rich__(self) -> Any:
        from rich.table import Table

        size = "×".join(str(s) for s in self.input_size)
        table = Table(
            title=f"parameters and FLOPs (input {size}, batch 1)",
            caption=uncounted_note(self.uncounted_ops),
        )
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


def uncounted_note(uncounted_ops: Iterable[tuple[str, int]]) -> str | None:
    """One line naming the operators counted as 0, e.g. for a table caption; None when none.

    Example: ``"not counted (0 FLOPs): scaled_dot_product_attention ×12"``.
    """
    ops = [f"{name} ×{calls}" for name, calls in uncounted_ops]
    return f"not counted (0 FLOPs): {', '.join(ops)}" if ops else None


# --- flop rules (fvcore's) -----------------------------------------------------------------------


def _conv_flops(x: Tensor, weight_shape: Sequence[int], out: Tensor, transposed: bool) -> int:
    spatial = (x if transposed else out).shape[2:]
    return int(x.shape[0] * math.prod(weight_shape) * math.prod(spatial))


def _norm_flops(numel: int, affine: bool, running_stats: bool) -> int:
    if running_stats:
        return numel * (2 if affine else 1)
    return numel * (5 if affine else 4)


# Per module: (module, input, output) -> flops.


def _conv(module: Any, x: Tensor, out: Tensor) -> int:
    return _conv_flops(x, module.weight.shape, out, module.transposed)


def _linear(module: Any, x: Tensor, out: Tensor) -> int:
    return int(x.numel() * module.out_features)


def _batch_norm(module: Any, x: Tensor, out: Tensor) -> int:
    running = not module.training and module.running_mean is not None
    return _norm_flops(x.numel(), module.affine, running)


def _norm(module: Any, x: Tensor, out: Tensor) -> int:
    affine = getattr(module, "affine", None)
    if affine is None:
        affine = getattr(module, "elementwise_affine", False)
    return _norm_flops(x.numel(), affine, False)


def _instance_norm(module: Any, x: Tensor, out: Tensor) -> int:
    # fvcore reads the affine flag from the argument holding running_mean (index 1) here.
    return _norm_flops(x.numel(), module.running_mean is not None, False)


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


# Per operator outside those modules: (args, output) -> flops, keyed by aten overload packet.


def _matmul_flops(a: Tensor, b: Tensor) -> int:
    # (…, M, K) @ (…, K, N): one multiply-add per output element and K.
    return int(a.numel() * b.shape[-1])


def _batch_norm_op(args: Sequence[Any], out: Any) -> int:
    # native_batch_norm / _native_batch_norm_legit*: the first bool after the tensors is `training`.
    training = next((a for a in args[3:] if isinstance(a, bool)), False)
    return _norm_flops(args[0].numel(), args[1] is not None, not training)


_aten = torch.ops.aten
_OP_RULES: dict[Any, Callable[[Sequence[Any], Any], int]] = {
    _aten.mm: lambda args, out: _matmul_flops(args[0], args[1]),
    _aten.addmm: lambda args, out: _matmul_flops(args[1], args[2]),
    _aten.bmm: lambda args, out: _matmul_flops(args[0], args[1]),
    _aten.baddbmm: lambda args, out: _matmul_flops(args[1], args[2]),
    _aten.convolution: lambda args, out: _conv_flops(args[0], args[1].shape, out, args[6]),
    _aten.native_batch_norm: _batch_norm_op,
    _aten._native_batch_norm_legit: _batch_norm_op,
    _aten._native_batch_norm_legit_no_training: _batch_norm_op,
    _aten.native_layer_norm: lambda args, out: _norm_flops(
        args[0].numel(), args[2] is not None, False
    ),
    _aten.native_group_norm: lambda args, out: _norm_flops(
        args[0].numel(), args[1] is not None, False
    ),
    _aten._adaptive_avg_pool2d: lambda args, out: args[0].numel(),
    _aten.upsample_nearest2d: lambda args, out: out.numel(),
    _aten.upsample_bilinear2d: lambda args, out: out.numel() * 4,
    _aten.grid_sampler_2d: lambda args, out: out.numel() * 4,
}

# Operators that do multiply-adds but have no rule: counted as 0 and reported.
_UNCOUNTED_OPS = frozenset(
    {
        "addbmm",
        "addmv",
        "mv",
        "dot",
        "vdot",
        "_cdist_forward",
        "upsample_linear1d",
        "upsample_bicubic2d",
        "upsample_trilinear3d",
        "upsample_nearest1d",
        "upsample_nearest3d",
        "_upsample_bilinear2d_aa",
        "_upsample_bicubic2d_aa",
        "_adaptive_avg_pool3d",
        "grid_sampler_3d",
        "_fft_r2c",
        "_fft_c2r",
        "_fft_c2c",
    }
)

_ATTENTION = "scaled_dot_product_attention"


# Per module-less call, where the operators it decomposes into would be counted differently from
# fvcore: (args, kwargs) -> flops, or None for "counted as 0, reported as uncounted".


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _mha_projections(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    # F.multi_head_attention_forward(query, key, value, embed_dim_to_check, ...): the q, k, v
    # projections map each input row to embed_dim outputs, the output projection each query row.
    bound = _MHA_SIGNATURE.bind(*args, **kwargs).arguments
    rows = 2 * bound["query"].numel() + bound["key"].numel() + bound["value"].numel()
    return int(rows * bound["embed_dim_to_check"])


_FUNCTION_RULES: dict[Any, Callable[[Sequence[Any], dict[str, Any]], int | None]] = {
    F.adaptive_avg_pool2d: lambda args, kwargs: args[0].numel(),
    torch._C._nn.adaptive_avg_pool2d: lambda args, kwargs: args[0].numel(),
    F.scaled_dot_product_attention: lambda args, kwargs: None,
    F.multi_head_attention_forward: _mha_projections,
}
# The attention products inside nn.MultiheadAttention are reported as the attention they are.
_UNCOUNTED_INSIDE = {
    F.scaled_dot_product_attention: _ATTENTION,
    F.multi_head_attention_forward: _ATTENTION,
}


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


# Plain convolutions (these classes exactly, their own forward) skip their meta kernel as well:
# the output shape is the documented formula of nn.Conv1d/2d/3d.
_PLAIN_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _conv_shape(module: Any) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        dims = len(module.kernel_size)
        if x.dim() < dims + 1 or x.shape[-dims - 1] != module.in_channels:
            raise RuntimeError(
                f"{type(module).__name__} expects {module.in_channels} input channels in "
                f"{dims + 2}-d input, got shape {tuple(x.shape)}"
            )
        spatial = []
        for i, size in enumerate(x.shape[-dims:]):
            if module.padding == "same":
                spatial.append(size)
                continue
            pad = 0 if module.padding == "valid" else module.padding[i]
            reach = module.dilation[i] * (module.kernel_size[i] - 1) + 1
            spatial.append((size + 2 * pad - reach) // module.stride[i] + 1)
        return x.new_empty((*x.shape[: -dims - 1], module.out_channels, *spatial))

    return forward


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


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers (any depth)."""
    while isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
    return model


class _Tally:
    """What one counting run has seen: flops per stage, parameters read, uncounted operators.

    Module hooks keep the stack of running modules. Inside a module or call counted by its own
    rule the operators it runs are not looked at again (``covered``); the parameters it reads are
    its own (a module's) or its arguments (a call's).
    """

    def __init__(self, module_stage: dict[str, str], param_of: dict[int, int]) -> None:
        self.module_stage = module_stage
        self.param_of = param_of  # id(meta stand-in) -> id(parameter)
        self.stack: list[str] = []
        self.covered = 0
        self.flops: Counter[str] = Counter()
        self.used: set[int] = set()
        self.uncounted: Counter[str] = Counter()

    def add(self, flops: int) -> None:
        self.flops[self.module_stage[self.stack[-1]] if self.stack else HEAD_STAGE] += flops

    def read(self, values: Iterable[Any]) -> None:
        for value in values:
            if isinstance(value, list | tuple) and value and isinstance(value[0], Tensor):
                self.read(value)
            elif isinstance(value, Tensor):
                param = self.param_of.get(id(value))
                if param is not None:
                    self.used.add(param)


class _FunctionCounter(TorchFunctionMode):
    """Counts the module-less calls that their operators alone would miscount (_FUNCTION_RULES)."""

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        rule = _FUNCTION_RULES.get(func)
        tally = self.tally
        if rule is None or tally.covered:
            return func(*args, **kwargs)
        tally.covered += 1  # its operators are this call's
        try:
            out = func(*args, **kwargs)
        finally:
            tally.covered -= 1
        tally.read(args)
        tally.read(kwargs.values())
        flops = rule(args, kwargs)
        if flops is not None:
            tally.add(flops)
        if func in _UNCOUNTED_INSIDE:
            tally.uncounted[_UNCOUNTED_INSIDE[func]] += 1
        return out


class _OperatorCounter(TorchDispatchMode):
    """Counts the aten operators run outside counted modules and calls; records parameters read."""

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tally = self.tally
        if tally.covered:
            return out
        tally.read(args)
        tally.read(kwargs.values())
        packet = func.overloadpacket
        rule = _OP_RULES.get(packet)
        if rule is not None:
            tally.add(rule(args, out))
        elif packet.__name__ in _UNCOUNTED_OPS:
            tally.uncounted[packet.__name__] += 1
        return out


def count(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Counts:
    """Count the parameters and FLOPs of ``model`` (fvcore's convention, batch 1, eval mode).

    The model is not changed: its parameters, buffers, device and train/eval modes are the same
    afterwards (also when counting fails).

    Args:
        model: Any ``nn.Module`` whose forward takes one image batch (``DataParallel`` and
            ``DistributedDataParallel`` are unwrapped).
        input_size: ``(C, H, W)`` of one input image, in pixels.

    Returns:
        Totals and per-stage counts; see :class:`Counts` and the module docstring for the rules.

    Raises:
        ConfigError: ``input_size`` is not a sequence of positive integers.
    """
    size = _checked_size(input_size)
    model = unwrap(model)
    stage_names, stage_of = _stage_lookup(model)
    modules = dict(model.named_modules())
    shortcut = {
        id(m): _passthrough if isinstance(m, _SHAPE_PRESERVING) else _conv_shape(m)
        for m in modules.values()
        if (isinstance(m, _SHAPE_PRESERVING) or type(m) in _PLAIN_CONVOLUTIONS)
        and "forward" not in m.__dict__
    }
    # torch.empty is much faster than empty_like on the meta device; strides do not matter here.
    meta = {
        name: torch.empty(t.shape, dtype=t.dtype, device="meta")
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    param_of = {id(meta[name]): id(p) for name, p in model.named_parameters()}
    tally = _Tally({name: stage_of(name) for name in modules}, param_of)

    def make_hooks(name: str, module: nn.Module) -> tuple[Callable[..., None], Callable[..., None]]:
        rule = _rule(module)
        stage = tally.module_stage[name]
        # Counted by its rule or skipping its kernel (shape-preserving): its operators are not
        # looked at, and it reads its own parameters.
        reads_own = rule is not None or id(module) in shortcut
        own = [id(p) for p in module.parameters(recurse=False)] if reads_own else []

        def before(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            tally.stack.append(name)
            tally.covered += rule is not None
            tally.used.update(own)

        def after(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            tally.stack.pop()
            tally.covered -= rule is not None
            if rule is not None and not tally.covered and inputs and isinstance(inputs[0], Tensor):
                tally.flops[stage] += int(rule(module, inputs[0], output))

        return before, after

    training = [(m, m.training) for m in model.modules()]
    handles = []
    for name, module in modules.items():
        before, after = make_hooks(name, module)
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    try:
        for module, _ in training:
            module.training = False  # set directly: a module's train() may be overridden
        for module in modules.values():
            if id(module) in shortcut:
                module.forward = shortcut[id(module)]
        dtype = next((t.dtype for t in meta.values() if t.is_floating_point()), torch.float32)
        x = torch.empty((1, *size), dtype=dtype, device="meta")
        with torch.no_grad(), _FunctionCounter(tally), _OperatorCounter(tally):
            functional_call(model, meta, (x,))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training:
            module.training = mode
        for module in modules.values():
            if id(module) in shortcut:
                module.__dict__.pop("forward", None)

    per_stage: dict[str, list[int]] = {s: [0, 0, 0] for s in stage_names}
    totals = [0, 0, 0]
    seen: set[int] = set()
    for name, module in modules.items():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            row = (
                p.numel(),
                p.numel() if p.requires_grad else 0,
                p.numel() * (id(p) in tally.used),
            )
            # by the parameter's own path: a stage map may list a parameter (a ViT's class token)
            bucket = per_stage.setdefault(stage_of(f"{name}.{pname}" if name else pname), [0, 0, 0])
            for i, value in enumerate(row):
                bucket[i] += value
                totals[i] += value
    stages = tuple(
        StageCount(s, per_stage[s][0], per_stage[s][1], per_stage[s][2], tally.flops[s])
        for s in stage_names
        if s in per_stage
    )
    return Counts(
        params=totals[0],
        trainable_params=totals[1],
        active_params=totals[2],
        flops=sum(tally.flops.values()),
        input_size=size,
        stages=stages,
        uncounted_ops=tuple(sorted(tally.uncounted.items())),
    )


@dataclass(frozen=True)
class ArchitectureCounts:
    """Parameters and FLOPs of several models side by side (library models: 1000-class heads).

    Attributes:
        input_size: ``(C, H, W)`` of the counted input.
        rows: ``(arch, source, counts)`` in the order asked (for a user factory, ``arch`` is
            ``"module:callable"`` and ``source`` is ``"factory"``).
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
                    "uncounted_ops": dict(c.uncounted_ops),
                }
                for arch, source, c in self.rows
            ],
        }

    def __rich__(self) -> Any:
        from rich.table import Table

        size = "×".join(str(s) for s in self.input_size)
        notes = [
            f"{arch}: {note}"
            for arch, _, c in self.rows
            if (note := uncounted_note(c.uncounted_ops)) is not None
        ]
        table = Table(
            title=f"parameters and FLOPs (input {size}, batch 1; library models with 1000-class "
            "heads)",
            caption="\n".join(notes) or None,
        )
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
    """Count models as the papers quote them (random init; library models with 1000-class heads).

    Models are built on the meta device where their builders allow (shapes only), so this is
    fast and allocates nothing.

    Args:
        archs: Model names: registered architectures, any torchvision or timm model
            (``timm:convnext_tiny``) or user factories (``package.module:callable``); see
            :func:`resablate.model_spec.parse_model`.
        source: The source of names without one.
        input_size: ``(C, H, W)`` of the counted input, in pixels.

    Raises:
        ConfigError: No architecture, an unknown one (all are checked before any is built), or a
            bad ``input_size``.
    """
    if not archs:
        raise ConfigError("name at least one architecture to count")
    size = _checked_size(input_size)
    specs = [parse_model(arch, source) for arch in archs]
    rows = [(spec.arch, spec.source, _count_spec(spec, size)) for spec in specs]
    return ArchitectureCounts(input_size=size, rows=tuple(rows))


def _count_spec(spec: ModelSpec, size: tuple[int, ...]) -> Counts:
    """Count one parsed model; a user factory's model whose forward fails on one image batch
    (a module that is no image model) is a ``ConfigError`` naming the factory."""
    model = spec.build_on_meta()
    if spec.source != FACTORY:
        return count(model, size)
    try:
        return count(model, size)
    except ConfigError:
        raise
    except Exception as exc:  # the user's forward: say which model failed, keep the cause
        shape = "×".join(map(str, (1, *size)))
        raise ConfigError(
            f"model factory {spec.arch} built a {type(model).__name__} whose forward fails on "
            f"a {shape} image batch: {type(exc).__name__}: {exc}"
        ) from exc
