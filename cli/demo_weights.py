"""``resablate demo-weights``: build (once) and show the offline demo-pretrained weights."""

from __future__ import annotations

from typing import Annotated

import typer

from resablate_cli import console


def demo_weights(
    archs: Annotated[list[str], typer.Argument(help="Architectures, e.g. resnet18 resnet50.")],
    source: Annotated[
        str, typer.Option("--source", help="Model source: torchvision or timm.")
    ] = "torchvision",
    as_json: Annotated[bool, typer.Option("--json", help="Print the files as JSON.")] = False,
) -> None:
    """Pre-train ARCH on the demo proxy task (once, cached) so that --weights demo works offline.

    Example: [bold]resablate demo-weights resnet18 resnet50[/]
    """
    from rich.table import Table

    from resablate.demo_weights import ensure_demo_weights
    from resablate.weights import demo_weights_path, weights_sha256

    rows = []
    for arch in archs:
        existed = demo_weights_path(arch, source).is_file()
        if not existed and not as_json:
            console.err.print(f"pre-training {arch} ({source}) on the demo proxy task ...")
        path = ensure_demo_weights(arch, source)
        rows.append(
            {
                "arch": arch,
                "source": source,
                "path": str(path),
                "bytes": path.stat().st_size,
                "sha256": weights_sha256(path),
                "built_now": not existed,
            }
        )
    if as_json:
        console.print_json(rows)
        return
    table = Table(title="demo-pretrained weights", title_justify="left")
    for column in ("architecture", "file", "size", "sha256", "state"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            f"{row['arch']} ({row['source']})",
            row["path"],
            f"{row['bytes'] / 1e6:.1f} MB",
            row["sha256"][:12],
            "built now" if row["built_now"] else "cached",
        )
    console.out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``resablate demo-weights`` to the application."""
    app.command("demo-weights")(demo_weights)
