"""The options that describe cells, shared by ``train`` and ``grid`` (one spelling each), and the
grid spec they make.

``train`` and ``grid`` declare their parameters with these types, so a flag means the same thing
in both: ``--arch`` is an architecture, ``--weights`` the initial weights, ``--seeds`` the seeds,
``--set FIELD=VALUE`` any recipe field. Where the two differ only in the default (one cell for
``train``, the studies' axes for ``grid``), the help states each command's default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resablate.choices import TRACKERS
from resablate_cli.options import BnPolicy, choices, folder

if TYPE_CHECKING:
    from resablate.grid.spec import GridSpec
    from resablate.grid.tracking import GridTracking


class Amp(StrEnum):
    """Autocast mode: auto = bf16 on CUDA, fp32 on the CPU; an explicit mode applies anywhere."""

    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


def _option(flag: str, text: str, default: str | None = None, **kwargs: Any) -> Any:
    shown = f" \\[default: {default}]" if default else ""
    return typer.Option(flag, help=text + shown, **kwargs)


_ARCH = "Architectures, e.g. resnet18 resnet50 vgg16 (several values or repeated)."
_RESIDUAL = "Residual plans: on, off, or stage sets like off:conv4_x,conv5_x."
_WEIGHTS = (
    "Initial weights: none, imagenet, demo or a .pth/.safetensors path (on the demo data "
    "imagenet means the demo weights)."
)

TrainArchOption = Annotated[list[str], _option("--arch", _ARCH)]
GridArchOption = Annotated[list[str] | None, _option("--arch", _ARCH + " After the depths'.")]
TrainResidualOption = Annotated[list[str] | None, _option("--residual", _RESIDUAL, "on")]
GridResidualOption = Annotated[list[str] | None, _option("--residual", _RESIDUAL, "on off")]
ResidualAlphaOption = Annotated[
    list[float] | None,
    _option(
        "--residual-alpha",
        "Shortcut scales for the plans that alter stages (1 = on, 0 = off), e.g. 1 0.5 0.",
    ),
]
TrainWeightsOption = Annotated[list[str] | None, _option("--weights", _WEIGHTS, "none")]
GridWeightsOption = Annotated[list[str] | None, _option("--weights", _WEIGHTS, "imagenet none")]
FreezeOption = Annotated[
    list[str] | None,
    _option("--freeze", "Freeze plans: none conv1 conv1-2 conv1-3 conv1-4 all.", "none"),
]
BnOption = Annotated[BnPolicy, _option("--bn", "BatchNorm of frozen stages.")]
SeedsOption = Annotated[
    list[int] | None, _option("--seeds", "Seeds of all randomness, e.g. 0 1 2.", "0", min=0)
]
RecipeOption = Annotated[
    str | None,
    _option("--recipe", "Recipe: cifake, food, demo.", "demo on demo data, else cifake"),
]
DataOption = Annotated[
    str,
    _option(
        "--data",
        "Dataset folder, parquet file(s) or Hugging Face datasets folder (PATH::image=COL,"
        "label=COL names the columns), or 'demo' for the embedded demo data (offline).",
    ),
]
# An empty --out is refused (``Path("")`` would be the working directory); --data '' is refused
# by the grid spec, which names the folder of every command.
GridOutOption = Annotated[
    Path,
    _option("--out", "Run directory: store, results.csv, one folder per cell.", parser=folder),
]
TrainOutOption = Annotated[
    Path | None,
    _option(
        "--out",
        "Grid directory of the run: store, results.csv, cells/<cell id>/.",
        "runs/train/<cell id>",
        parser=folder,
    ),
]
SettingsOption = Annotated[
    list[str] | None,
    _option(
        "--set",
        "Any recipe field as FIELD=VALUE, e.g. --set checkpoint_every=50 (repeatable; the "
        "named flags win).",
    ),
]
DeviceOption = Annotated[
    str, _option("--device", "Where to train: auto (CUDA when visible), cpu, cuda, cuda:N.")
]
EpochsOption = Annotated[int | None, _option("--epochs", "Recipe override: epochs.")]
LrOption = Annotated[float | None, _option("--lr", "Recipe override: peak learning rate.")]
BatchSizeOption = Annotated[
    int | None, _option("--batch-size", "Recipe override: images per micro-batch.")
]
GradAccumOption = Annotated[
    int | None, _option("--grad-accum", "Recipe override: micro-batches per step.")
]
MaxStepsOption = Annotated[
    int | None, _option("--max-steps", "Recipe override: cap on optimiser steps per cell.")
]
ImageSizeOption = Annotated[
    int | None, _option("--image-size", "Recipe override: input side in pixels.")
]
StorageSizeOption = Annotated[
    int | None,
    _option(
        "--storage-size",
        "Recipe override: side in pixels each image is resized to once, when decoded (needed "
        "when the images differ in size).",
    ),
]
AmpOption = Annotated[
    Amp | None,
    _option("--amp", "Recipe override: autocast dtype (auto: bf16 on CUDA, fp32 on the CPU)."),
]
CompileOption = Annotated[
    bool | None, _option("--compile/--no-compile", "Recipe override: torch.compile.")
]
JsonOption = Annotated[bool, _option("--json", "Print the summary as JSON on stdout.")]
QuietOption = Annotated[
    bool,
    _option(
        "--quiet",
        "Print nothing but errors (no progress, no summary; the exit code says how it ended; "
        "--json still prints the summary).",
    ),
]
KeepCheckpointsOption = Annotated[
    bool,
    _option(
        "--keep-checkpoints",
        "Keep every checkpoint; by default a finished cell keeps only its final model and "
        "results (a failed one keeps its checkpoints, to resume).",
    ),
]
Tracker = choices("Tracker", TRACKERS, "Experiment trackers, each an optional extra.")
TrackOption = Annotated[
    list[Tracker] | None,
    _option(
        "--track",
        "Log each cell (config, step loss, evaluations, final results) as one run of a tracker: "
        "tensorboard, mlflow or wandb (repeatable; each an extra, e.g. pip install "
        "'resablate\\[mlflow]'). Does not change cell ids.",
    ),
]

#: Recipe fields with a flag of their own: command parameter -> recipe field.
OVERRIDE_FIELDS = {
    "epochs": "epochs",
    "lr": "lr",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "max_steps": "max_steps",
    "image_size": "image_size",
    "storage_size": "storage_size",
    "amp": "amp",
    "compile_model": "compile",
}


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "amp=none"]`` → ``{"lr": 0.01, "amp": "none"}`` (values read as JSON if they
    parse, else kept as text)."""
    result: dict[str, Any] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not FIELD=VALUE", param_hint="--set")
        try:
            result[name.strip()] = json.loads(text)
        except ValueError:
            result[name.strip()] = text
    return result


def recipe_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe overrides of a command: ``--set`` pairs, then the named flags given."""
    overrides = parse_settings(params["settings"] or [])
    for name, field in OVERRIDE_FIELDS.items():
        value = params[name]
        if value is not None:
            overrides[field] = value.value if isinstance(value, Enum) else value
    return overrides


def device_of(params: Mapping[str, Any]) -> str | None:
    """The ``device`` of ``run_grid``: ``None`` for ``auto``."""
    device = str(params["device"])
    return None if device == "auto" else device


def grid_tracking(params: Mapping[str, Any]) -> GridTracking:
    """The command's experiment trackers (``--track``), their extras checked before anything
    runs (a grid callback; none given: it does nothing)."""
    from resablate.grid.tracking import GridTracking

    return GridTracking([tracker.value for tracker in params["track"] or ()])


def cell_fields(
    params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """The grid spec fields of a command's cell options (``overrides`` as a dict).

    Args:
        params: The command's parameters (``ctx.params``), named as in ``train`` and ``grid``.
        defaults: The command's own defaults of the axes not given (``GridSpec``'s otherwise).
        **fields: Further spec fields (``family``, ``depths``, ``archs``, ``baselines``).
    """
    given = {
        name: tuple(params[name])
        for name in ("residual", "weights", "freeze", "seeds")
        if params[name]
    }
    alpha = params["residual_alpha"]
    return {
        "source": params["source"].value,
        "residual_alpha": tuple(alpha) if alpha else None,
        "bn": params["bn"].value,
        "recipe": params["recipe"],
        "data": params["data"],
        "overrides": recipe_overrides(params),
        **(defaults or {}),
        **given,
        **fields,
    }


def cell_spec(
    params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None, **fields: Any
) -> GridSpec:
    """The grid spec of a command's cell options (arguments as :func:`cell_fields`)."""
    from resablate.grid.spec import GridSpec

    values = cell_fields(params, defaults, **fields)
    return GridSpec(**{**values, "overrides": tuple(values["overrides"].items())})
