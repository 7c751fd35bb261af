"""A census of the calls that make the host wait for a GPU, taken on the CPU.

On CUDA, reading a value back (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)``, ``nonzero``),
building a tensor from Python data (``torch.tensor(list, device=...)`` copies from the host) and a
blocking ``.to(device)`` all synchronise the host with the GPU, so the CPU can no longer queue work
ahead of it. :class:`SyncCensus` counts these calls where they are made, on any device, so a CPU
test can show that a training step makes none. ``.to(device)`` counts whenever a device is named
without ``non_blocking=True``, even when the tensor is already there: code that should not move
anything inside a step should not ask to.

Calls made by ``torch.optim`` itself are not counted: without ``capturable``/``fused`` the
optimisers keep their step counters as host tensors, and reading those costs no synchronisation.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_READBACKS = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.cpu: "cpu",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__int__: "int",
    torch.Tensor.__float__: "float",
    torch.Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.Tensor.masked_select: "masked_select",
    torch.masked_select: "masked_select",
}
_FACTORIES = {torch.tensor: "torch.tensor(data)", torch.as_tensor: "torch.as_tensor(data)"}
_MOVES = {torch.Tensor.to: "blocking .to(device)", torch.Tensor.cuda: "blocking .cuda()"}
_TORCH_DIR = Path(torch.__file__).parent
_EXEMPT = (str(_TORCH_DIR / "optim"),)
_PASS_THROUGH = (str(_TORCH_DIR / "overrides.py"), str(_TORCH_DIR / "_tensor.py"), __file__)


def _names_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if "device" in kwargs:
        return True
    return any(isinstance(a, torch.device | str | torch.Tensor) for a in args[1:])


class SyncCensus(TorchFunctionMode):
    """Counts host-synchronising calls by kind while active (``calls``: kind -> count)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def _kind(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if func in _READBACKS:
            return _READBACKS[func]
        if func in _FACTORIES:
            return None if isinstance(args[0], torch.Tensor) else _FACTORIES[func]
        if func in _MOVES and not kwargs.get("non_blocking"):
            return (
                _MOVES[func] if func is torch.Tensor.cuda or _names_device(args, kwargs) else None
            )
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self._kind(func, args, kwargs)
        if kind is not None and not _from_optimiser():
            self.calls[kind] += 1
        return func(*args, **kwargs)


def _from_optimiser() -> bool:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PASS_THROUGH):
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(_EXEMPT)
