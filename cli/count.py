"""``resablate count``: parameters and FLOPs of several architectures side by side."""

from __future__ import annotations

from typing import Annotated

import typer

from resablate_cli.options import InputSizeOption, JsonOption, Source, SourceOption, show


def count(
    archs: Annotated[
        list[str],
        typer.Argument(
            help="Models: registered architectures (resnet50), any torchvision or timm model "
            "(vit_b_16, timm:convnext_tiny) or a factory (package.module:callable).",
        ),
    ],
    source: SourceOption = Source.torchvision,
    input_size: InputSizeOption = 224,
    json: JsonOption = False,
) -> None:
    """Compare parameters and FLOPs of architectures (1000-class heads, batch 1, as published).

    FLOPs are fvcore's multiply-adds; operators counted as 0 (attention products, operators
    without a rule) are named under the table. Models are built on the meta device: nothing is
    downloaded or allocated.

    Example: [bold]resablate count resnet18 resnet50 resnet101 resnet152 vgg16 efficientnet_b3
    efficientnet_b4[/]
    """
    from resablate.counting import count_architectures

    result = count_architectures(archs, source=source.value, input_size=(3, input_size, input_size))
    show(result, as_json=json)


def register(app: typer.Typer) -> None:
    """Add ``count`` to the application."""
    app.command("count")(count)
