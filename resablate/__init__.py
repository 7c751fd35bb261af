"""resablate: ablation studies of CNN architectures.

The core is importable on its own and cheaply::

    from resablate import build_model, drop_residual, freeze, count

and so is the workflow: ``train`` (one configuration), ``GridSpec`` and ``run_grid`` (a study,
resumable, into a results store), ``build_report`` (its tables and statistics)::

    from resablate import GridSpec, build_report, run_grid, train

Names are resolved lazily (PEP 562), so ``import resablate`` loads neither torch nor the
training stack until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from resablate._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "build_model": "resablate.weights",
    "list_architectures": "resablate.families",
    "get_family": "resablate.families",
    "drop_residual": "resablate.surgery",
    "restore_residual": "resablate.surgery",
    "scale_residual": "resablate.surgery",
    "residual_blocks": "resablate.surgery",
    "residual_state": "resablate.surgery",
    "apply_residual_state": "resablate.surgery",
    "lesion_blocks": "resablate.surgery",
    "register_block": "resablate.blocks",
    "SurgeryReport": "resablate.surgery",
    "freeze": "resablate.freezing",
    "unfreeze": "resablate.freezing",
    "trainable_parameters": "resablate.freezing",
    "frozen_fingerprint": "resablate.freezing",
    "FreezeReport": "resablate.freezing",
    "count": "resablate.counting",
    "Counts": "resablate.counting",
    "lesion": "resablate.diagnostics.lesion",
    "GridSpec": "resablate.grid.spec",
    "run_grid": "resablate.grid.runner",
    "train": "resablate.grid.runner",
    "build_report": "resablate.report.build",
    "ResablateError": "resablate.errors",
}

__all__ = [
    "Counts",
    "FreezeReport",
    "GridSpec",
    "ResablateError",
    "SurgeryReport",
    "__version__",
    "apply_residual_state",
    "build_model",
    "build_report",
    "count",
    "drop_residual",
    "freeze",
    "frozen_fingerprint",
    "get_family",
    "lesion",
    "lesion_blocks",
    "list_architectures",
    "register_block",
    "residual_blocks",
    "residual_state",
    "restore_residual",
    "run_grid",
    "scale_residual",
    "train",
    "trainable_parameters",
    "unfreeze",
]

if TYPE_CHECKING:
    from resablate.blocks import register_block
    from resablate.counting import Counts, count
    from resablate.diagnostics.lesion import lesion
    from resablate.errors import ResablateError
    from resablate.families import get_family, list_architectures
    from resablate.freezing import (
        FreezeReport,
        freeze,
        frozen_fingerprint,
        trainable_parameters,
        unfreeze,
    )
    from resablate.grid.runner import run_grid, train
    from resablate.grid.spec import GridSpec
    from resablate.report.build import build_report
    from resablate.surgery import (
        SurgeryReport,
        apply_residual_state,
        drop_residual,
        lesion_blocks,
        residual_blocks,
        residual_state,
        restore_residual,
        scale_residual,
    )
    from resablate.weights import build_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'resablate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
