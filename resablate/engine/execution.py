"""What a run executes with: device, autocast dtype, memory format, compilation, backend flags.

A recipe states wishes (``amp="auto"``, ``channels_last=None``, ``tf32=True`` ...); the device
decides what they mean. :func:`resolve_execution` turns both into an :class:`Execution`, which the
engine applies, stores in every checkpoint (a run resumes only under the same device type and
precision) and records in ``train.json`` and the grid's store, so a result says what really ran.

Policy on CUDA (``docs/training.md``): bf16 autocast, channels_last, TF32 tensor cores for float32
matmuls and convolutions, and cuDNN autotuning (input shapes are fixed within a run). On the CPU the
defaults are fp32 and NCHW; an explicit ``amp``/``channels_last``/``compile`` applies there too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn

from resablate.recipes import CompileMode, Recipe

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""cuBLAS workspace setting that makes its kernels deterministic (8 buffers of 4 MiB per stream).

Set in the environment when the engine is imported, unless the user set one: cuBLAS reads it once,
when the process's first cuBLAS handle is created, so setting it when a deterministic run starts
(after an earlier run, a probe or the user's own code has used the GPU) has no effect.
"""
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Execution:
    """The effective settings of one run.

    Attributes:
        device: The device trained on, with its index on CUDA (``"cpu"``, ``"cuda:0"``).
        device_name: ``"cpu"`` or the GPU's name (e.g. ``"NVIDIA H100 80GB HBM3"``).
        gpu_count: CUDA devices visible to the process (0 on the CPU).
        amp: Autocast dtype: ``"bf16"``, ``"fp16"`` (with a GradScaler) or ``"none"`` (fp32).
        channels_last: Model and inputs in NHWC memory format.
        compile: The ``torch.compile`` mode the model ran under, ``"off"`` for eager
            (:class:`~resablate.recipes.CompileMode`; ``True``/``False`` from older records
            read as ``"default"``/``"off"``).
        tf32: float32 matmuls and cuDNN convolutions may use TF32 (always ``False`` on the CPU).
        cudnn_benchmark: cuDNN autotuning on (always ``False`` on the CPU).
        deterministic: Deterministic algorithms were requested (by the recipe or already on in the
            process).
    """

    device: str
    device_name: str
    gpu_count: int
    amp: str
    channels_last: bool
    compile: CompileMode
    tf32: bool
    cudnn_benchmark: bool
    deterministic: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "compile", CompileMode.parse(self.compile))

    @property
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"``."""
        return torch.device(self.device).type

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` for fp32."""
        return _AUTOCAST_DTYPES.get(self.amp)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of the forward pass (a no-op for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def precision(self) -> str:
        """``"cuda bf16"``, ``"cpu fp32"`` ...: what a checkpoint must match to be resumed."""
        return f"{self.device_type} {'fp32' if self.amp == 'none' else self.amp}"

    def summary(self) -> str:
        """One line, e.g. ``"NVIDIA H100 80GB HBM3 (cuda:0 of 8) · bf16 · channels_last"``."""
        where = self.device_name
        if self.device_type == "cuda":
            where += f" ({self.device} of {self.gpu_count})"
        flags = [
            name
            for name, on in (
                ("channels_last", self.channels_last),
                (
                    "compile" if self.compile is CompileMode.DEFAULT else f"compile {self.compile}",
                    bool(self.compile),
                ),
                ("tf32", self.tf32),
                ("cudnn.benchmark", self.cudnn_benchmark),
                ("deterministic", self.deterministic),
            )
            if on
        ]
        return " · ".join([where, "fp32" if self.amp == "none" else self.amp, *flags])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain types (the compile mode as its name: checkpoints load with
        ``weights_only=True``, which refuses any class)."""
        return {**asdict(self), "compile": self.compile.value}


def compile_model(model: nn.Module, execution: Execution) -> nn.Module:
    """``model`` wrapped in ``torch.compile`` with the execution's mode, or ``model`` itself when
    compilation is off (the wrapper shares the model's parameters; nothing is compiled before
    its first call)."""
    if not execution.compile:
        return model
    return cast(nn.Module, torch.compile(model, mode=execution.compile.value))


def device_name(device: torch.device) -> str:
    """``"cpu"``, or the GPU's marketing name (e.g. ``"NVIDIA H100 80GB HBM3"``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def resolve_execution(recipe: Recipe, device: torch.device) -> Execution:
    """The settings a run of ``recipe`` on ``device`` executes with (see the module docstring)."""
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    amp = ("bf16" if cuda else "none") if recipe.amp == "auto" else recipe.amp
    deterministic = recipe.deterministic or torch.are_deterministic_algorithms_enabled()
    return Execution(
        device=str(device),
        device_name=device_name(device),
        gpu_count=torch.cuda.device_count() if cuda else 0,
        amp=amp,
        channels_last=cuda if recipe.channels_last is None else recipe.channels_last,
        compile=recipe.compile,
        tf32=cuda and recipe.tf32,
        cudnn_benchmark=cuda and recipe.cudnn_benchmark and not deterministic,
        deterministic=deterministic,
    )


@contextlib.contextmanager
def backend_settings(execution: Execution) -> Iterator[None]:
    """Apply the execution's process-wide flags for the duration of a run, then restore them.

    On CUDA: TF32 for matmuls and cuDNN, ``cudnn.benchmark``, ``cudnn.deterministic``. With
    ``deterministic``: ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an operation
    without a deterministic CUDA kernel warns instead of raising; ``docs/training.md`` lists
    them); cuBLAS's deterministic workspace is set at import (:data:`CUBLAS_WORKSPACE_CONFIG`).
    Deterministic mode already on in the process is left on.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (
        matmul.allow_tf32,
        cudnn.allow_tf32,
        cudnn.benchmark,
        cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    enable = execution.deterministic and not saved[4]
    try:
        if execution.device_type == "cuda":
            matmul.allow_tf32 = cudnn.allow_tf32 = execution.tf32
            cudnn.benchmark = execution.cudnn_benchmark
            cudnn.deterministic = execution.deterministic
        if enable:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved[:4]
        if enable:
            torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
