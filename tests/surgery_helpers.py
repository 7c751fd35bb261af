"""What the surgery tests share: the check that a surgered model still compiles."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def assert_compiles_to_the_same_output(model: nn.Module, x: Tensor) -> None:
    """``torch.compile`` (aot_eager backend: no C compiler) gives the eager output of ``model``."""
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend="aot_eager")
        assert torch.allclose(compiled(x), expected, rtol=1e-5, atol=1e-6)
