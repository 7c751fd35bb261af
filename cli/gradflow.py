"""``resablate gradflow``: gradient norms per stage and block, with and without residuals."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from resablate_cli.options import Source, SourceOption, check_outputs, show


class BnMode(StrEnum):
    """How BatchNorm normalises during the measurement."""

    train = "train"
    eval = "eval"


def gradflow(
    arch: Annotated[str, typer.Option("--arch", help="Architecture, e.g. resnet152.")],
    no_residual: Annotated[
        bool,
        typer.Option(
            "--no-residual",
            help="Also measure the same weights without residual connections, side by side.",
        ),
    ] = False,
    weights: Annotated[
        str, typer.Option("--weights", help="none, demo, imagenet or a state-dict file.")
    ] = "none",
    source: SourceOption = Source.torchvision,
    batch: Annotated[int, typer.Option("--batch", min=2, help="Images in the batch.")] = 8,
    image_size: Annotated[
        int, typer.Option("--image-size", min=8, help="Side of the square images, pixels.")
    ] = 64,
    steps: Annotated[
        int, typer.Option("--steps", min=0, help="SGD steps on the batch after the first look.")
    ] = 0,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="SGD learning rate.")] = 1e-3,
    bn: Annotated[
        BnMode,
        typer.Option("--bn", help="train: batch statistics, as in training; eval: running ones."),
    ] = BnMode.train,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the weights (random init) and batch.")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the figure (PNG, log scale) here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Measure the loss gradient's norm at every stage and residual block on one batch.

    The batch is seeded standard-normal images (normalised-input statistics) with labels
    0, 1, 0, ...; the model is measured at initialisation and after --steps SGD steps.

    Example: [bold]resablate gradflow --arch resnet152 --no-residual --out gradflow.png[/]
    """
    from resablate.diagnostics.gradflow import plot_gradient_flow, residual_gradient_flow
    from resablate.diagnostics.runs import build_for_data, synthetic_batch

    check_outputs(figure=out)
    model = build_for_data(arch, weights=weights, num_classes=2, source=source.value, seed=seed)
    images, labels = synthetic_batch(batch, image_size, seed=seed)
    study = residual_gradient_flow(
        model,
        images,
        labels,
        arms=("on", "off") if no_residual else ("on",),
        arch=arch,
        steps=steps,
        lr=lr,
        bn_mode=bn.value,
    )
    figure = None if out is None else plot_gradient_flow(study, out)
    show(study, as_json=as_json, figure=figure)


def register(app: typer.Typer) -> None:
    """Add ``gradflow`` to the application."""
    app.command("gradflow")(gradflow)
