"""``resablate count``: parameters and FLOPs of several architectures side by side."""

from __future__ import annotations

from typing import Annotated

import typer

from resablate_cli import console
from resablate_cli.surgery import Source


def count(
    archs: Annotated[list[str], typer.Argument(help="Architectures, e.g. resnet50 vgg16.")],
    source: Annotated[Source, typer.Option("--source", help="Model source.")] = Source.torchvision,
    input_size: Annotated[
        int, typer.Option("--input-size", min=1, help="Image side for FLOPs, in pixels.")
    ] = 224,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Compare parameters and FLOPs of architectures (1000-class heads, batch 1, as published).

    FLOPs are fvcore's multiply-adds. Models are built on the meta device: nothing is
    downloaded or allocated.

    Example: [bold]resablate count resnet18 resnet50 resnet101 resnet152 vgg16 efficientnet_b3
    efficientnet_b4[/]
    """
    from resablate.counting import count_architectures

    result = count_architectures(archs, source=source.value, input_size=(3, input_size, input_size))
    if json:
        console.print_json(result.to_dict())
    else:
        console.out.print(result)


def register(app: typer.Typer) -> None:
    """Add ``count`` to the application."""
    app.command("count")(count)
