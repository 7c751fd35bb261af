"""``resablate compare-features``: linear CKA between the stage outputs of two trained models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resablate_cli import console
from resablate_cli.options import check_outputs, show, split_values


def compare_features(
    run_a: Annotated[
        Path, typer.Argument(help="First finished run directory (or one-cell grid directory).")
    ],
    run_b: Annotated[
        Path, typer.Argument(help="Second finished run directory (or one-cell grid directory).")
    ],
    stages: Annotated[
        list[str] | None,
        typer.Option(
            "--stages", help="Stages or module paths (conv1,conv4_x,layer3.1); default all."
        ),
    ] = None,
    images: Annotated[
        int, typer.Option("--images", min=2, help="Test images to compare on (seeded subset).")
    ] = 64,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the image subset.")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the heat map (PNG) here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    save: Annotated[
        bool,
        typer.Option(
            "--save/--no-save",
            help="Keep the result as RUN_A/cka-<RUN_B folder name>.json + .png (the report "
            "shows it).",
        ),
    ] = True,
) -> None:
    """Linear CKA (Kornblith et al. 2019) between every stage of RUN_A and every stage of RUN_B.

    Both models see the same test images of RUN_A's dataset, through RUN_A's eval transform.
    1 = the same representation up to rotation and scale; near 0 = unrelated. The result is
    also kept in RUN_A as cka-<RUN_B folder name>.json and .png (--no-save: not).

    Example: [bold]resablate compare-features runs/res-on runs/res-off --out cka.png[/]
    """
    from resablate.diagnostics.cka import compare_runs, plot_cka, save_cka
    from resablate.diagnostics.runs import run_directory

    run_a, run_b = run_directory(run_a), run_directory(run_b)
    check_outputs(figure=out, run_dir=run_a if save else None)
    chosen = split_values(stages) or None
    result = compare_runs(run_a, run_b, stages=chosen, limit=images, seed=seed)
    if save:
        saved = save_cka(result, run_a, run_b)
        console.err.print(f"saved {saved[0]} and {saved[1].name}", highlight=False, markup=False)
    figure = None if out is None else plot_cka(result, out)
    show(result, as_json=as_json, figure=figure, notes=result.notes)


def register(app: typer.Typer) -> None:
    """Add ``compare-features`` to the application."""
    app.command("compare-features")(compare_features)
