"""``resablate data check PATH``, ``resablate data fetch NAME --to DIR`` and ``resablate demo-data
DIR``: inspect, download and create datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resablate_cli import console
from resablate_cli.options import PublicDataset

data_app = typer.Typer(
    name="data",
    help="Inspect and download datasets: layout, splits, classes, image sizes, unreadable files.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@data_app.command("check")
def check(
    path: Annotated[
        str,
        typer.Argument(
            help="Dataset folder, parquet file or Hugging Face datasets folder "
            "(PATH::image=COL,label=COL names the columns)."
        ),
    ],
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Read headers only (fast); truncated files are then not detected."
        ),
    ] = False,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Pooled layouts (class folders, one table): share of each class for val.",
        ),
    ] = 0.2,
    test_fraction: Annotated[
        float,
        typer.Option("--test-fraction", help="Pooled layouts: share of each class for test."),
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Pooled layouts: seed of the split.")] = 0,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a dataset's layout, splits, class counts, image sizes and unreadable files.

    Every image is decoded once to find truncated or corrupt files (--quick reads headers only).
    Exits 2 when the dataset cannot be used (missing, empty, one class, a class with no
    readable image).

    Example: [bold]resablate data check ~/datasets/cifake[/]
    """
    from resablate.data import scan

    result = scan(
        path,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        verify=not quick,
    )
    if json:
        console.print_json(result.to_dict())
    else:
        console.out.print(result)


@data_app.command("fetch")
def fetch(
    name: Annotated[PublicDataset, typer.Argument(help="The public dataset.")],
    to: Annotated[Path, typer.Option("--to", help="Folder to create (new or empty).")],
    archive: Annotated[
        Path | None,
        typer.Option("--archive", help="An archive you downloaded: unpack it, download nothing."),
    ] = None,
) -> None:
    """Download a public dataset (CIFAKE, Food-5K) from Kaggle, verify it and unpack it.

    The archive comes from Kaggle's API (with your token from ~/.kaggle/kaggle.json or
    KAGGLE_USERNAME/KAGGLE_KEY when set up); --archive unpacks one you downloaded instead. The
    folders and image counts must match the published set; DIR appears only once complete.

    Example: [bold]resablate data fetch cifake --to ~/datasets/cifake[/]
    """
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from resablate.data import scan
    from resablate.data.fetch import fetch as fetch_dataset

    columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
    quiet = archive is not None or not console.err.is_terminal
    with Progress(*columns, console=console.err, transient=True, disable=quiet) as bar:
        task = bar.add_task(f"downloading {name.value}", total=None)
        root = fetch_dataset(
            name.value,
            to,
            archive=archive,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.out.print(scan(root))


def demo_data(
    directory: Annotated[Path, typer.Argument(help="Folder to write (new, empty, or a demo).")],
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the generated images.")] = 0,
    proxy: Annotated[
        bool,
        typer.Option("--proxy", help="Write the proxy task used for demo pretrained weights."),
    ] = False,
) -> None:
    """Write the demo dataset generated from scikit-image's photographs (nothing downloaded).

    A CIFAKE-style tree: train/{FAKE,REAL} (400 each), test/{FAKE,REAL} (160 each), 32×32 PNG.
    REAL are photo crops; FAKE went through a generator leaving up-sampling traces. Running it
    again with the same seed leaves the files untouched.

    Example: [bold]resablate demo-data ./demo && resablate data check ./demo[/]
    """
    from resablate.data import demo_data as write_demo
    from resablate.data import demo_proxy_data, scan

    root = (demo_proxy_data if proxy else write_demo)(directory, seed=seed)
    console.out.print(scan(root))


def register(app: typer.Typer) -> None:
    """Add the ``data`` group (``data check``, ``data fetch``) and ``demo-data`` to the
    application."""
    app.add_typer(data_app, name="data")
    app.command("demo-data")(demo_data)
