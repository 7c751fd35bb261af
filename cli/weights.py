"""``resablate weights``: fetch official ImageNet weights into the cache, list what is cached."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resablate_cli import console
from resablate_cli.surgery import JsonOption, Source, SourceOption

weights_app = typer.Typer(
    name="weights",
    help="Official ImageNet weights: fetch them on a connected machine, list the cache.",
    no_args_is_help=True,
)


@weights_app.command("fetch")
def fetch(
    arch: Annotated[str, typer.Argument(help="Architecture, e.g. resnet50.")],
    source: SourceOption = Source.torchvision,
) -> None:
    """Download ARCH's ImageNet weights into the upstream cache (needs the network).

    torchvision weights go to $TORCH_HOME/hub/checkpoints/, timm weights to the Hugging Face
    cache. Copy that file to an offline machine's cache to use `--weights imagenet` there.

    Example: [bold]resablate weights fetch resnet50 --source timm[/]
    """
    from resablate.weights import fetch_weights, weights_sha256

    path = fetch_weights(arch, source.value)
    console.out.print(f"{path}  sha256 {weights_sha256(path)}")


@weights_app.command("list")
def list_(json: JsonOption = False) -> None:
    """List every architecture's ImageNet weights and whether they are cached here.

    Example: [bold]resablate weights list[/]
    """
    from rich.table import Table

    from resablate.weights import list_weights

    infos = list_weights()
    if json:
        console.print_json({"weights": [info.to_dict() for info in infos]})
        return
    table = Table(title="ImageNet weights (--json gives the full paths)")
    for column in ("architecture", "source", "tag", "cached"):
        table.add_column(column, no_wrap=True)
    table.add_column("file", overflow="fold")
    for info in infos:
        cached = "[green]yes[/]" if info.cached else "no"
        table.add_row(info.arch, info.source, info.tag, cached, Path(info.path).name)
    console.out.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``weights`` group to the application."""
    app.add_typer(weights_app)
