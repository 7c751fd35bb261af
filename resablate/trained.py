"""A finished run back as its trained model: architecture, weights and ablation.

Kept apart from :mod:`resablate.run_dir` so that what writes run directories (the engine) imports no
model code. The architecture comes from ``cell.json``, the weights from ``model.safetensors``
(loaded strictly: surgery never changes state-dict keys), then the residual plan is re-applied.
"""

from __future__ import annotations

from torch import nn

from resablate.errors import ConfigError
from resablate.residual_plan import ResidualPlan
from resablate.run_dir import WEIGHTS_FILE, RunDir
from resablate.weights import build_model, head_path, load_state_dict_file


def rebuild_model(run: RunDir) -> nn.Module:
    """The run's trained model with its ablation, on the CPU in eval mode.

    Builds the architecture of ``cell.json`` with the classifier size of
    ``model.safetensors``, loads the weights and re-applies the cell's residual plan.

    Raises:
        ConfigError: Not a run directory, no final weights (unfinished or diverged), or
            weights without the architecture's classifier.
        WeightsError: ``model.safetensors`` does not fit the cell's architecture.
    """

    cell = run.read_cell()
    if not run.has_weights:
        raise ConfigError(
            f"run {run.path} has no {WEIGHTS_FILE}: it has not finished or it diverged"
        )
    state = load_state_dict_file(run.weights_file)
    source = cell.get("source", "torchvision")
    head = head_path(cell["arch"], source)
    if f"{head}.weight" not in state:
        raise ConfigError(
            f"{run.weights_file} has no {head}.weight: not a {cell['arch']} state dict"
        )
    model = build_model(
        cell["arch"],
        weights=run.weights_file,
        num_classes=int(state[f"{head}.weight"].shape[0]),
        source=source,
    )
    ResidualPlan.parse(cell.get("residual", "on"), cell.get("residual_alpha", 0.0)).apply(model)
    return model.eval()
