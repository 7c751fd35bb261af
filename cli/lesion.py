"""``resablate lesion``: delete residual blocks of a trained model at test time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resablate_cli import console
from resablate_cli.options import (
    LesionMetric,
    Source,
    SourceOption,
    check_outputs,
    show,
    split_values,
)


def lesion(
    run_dir: Annotated[
        Path | None,
        typer.Argument(
            help="A finished run directory (cell.json + model.safetensors), or a one-cell grid "
            "directory (what train writes)."
        ),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Build this architecture instead of a run's.")
    ] = None,
    weights: Annotated[
        str, typer.Option("--weights", help="With --arch: none, demo, imagenet or a file.")
    ] = "none",
    source: SourceOption = Source.torchvision,
    data: Annotated[
        str, typer.Option("--data", help="With --arch: dataset folder or 'demo'.")
    ] = "demo",
    recipe: Annotated[
        str, typer.Option("--recipe", help="With --arch: recipe whose eval transform is used.")
    ] = "demo",
    blocks: Annotated[
        list[str] | None,
        typer.Option("--blocks", help="Only these blocks (layer3.0,layer3.1); default all."),
    ] = None,
    k_random: Annotated[
        int, typer.Option("--k-random", min=0, help="Also delete k random blocks, k = 1..K.")
    ] = 0,
    draws: Annotated[int, typer.Option("--draws", min=1, help="Random sets per k.")] = 5,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the random sets.")] = 0,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Evaluate at most this many images.")
    ] = None,
    metric: Annotated[LesionMetric, typer.Option("--metric", help="Metric of the figure.")] = (
        LesionMetric.accuracy
    ),
    out: Annotated[Path | None, typer.Option("--out", help="Write the figure (PNG) here.")] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save/--no-save",
            help="With RUN_DIR: keep the study as RUN_DIR/lesion.json + lesion.png (the report "
            "shows it).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Delete each residual block at test time (output = its shortcut) and measure the metric.

    With --k-random K, also deletes k random blocks at once for k = 1..K: a residual network
    degrades smoothly (an ensemble of shallow paths), a plain one collapses.

    With RUN_DIR the study is also kept in RUN_DIR/lesion.json and lesion.png (--no-save: not).

    Example: [bold]resablate lesion runs/train/3f2a9c1b7e40 --k-random 4 --out lesion.png[/]
    """
    from resablate.diagnostics.lesion import lesion_study, plot_lesion, save_lesion
    from resablate.diagnostics.runs import load_subject, run_directory

    run_dir = None if run_dir is None else run_directory(run_dir)
    check_outputs(figure=out, run_dir=run_dir if save else None)
    subject = load_subject(
        run_dir,
        arch=arch,
        weights=weights,
        source=source.value,
        data=data,
        recipe=recipe,
        limit=limit,
        seed=seed,
    )
    result = lesion_study(
        subject.model,
        (subject.data.images, subject.data.labels),
        split_values(blocks) or None,
        k_random=k_random,
        draws=draws,
        seed=seed,
        positive=subject.positive,
        label=subject.label,
    )
    if run_dir is not None and save:
        saved = save_lesion(result, run_dir, metric=metric.value)
        console.err.print(f"saved {saved[0]} and {saved[1].name}", highlight=False, markup=False)
    figure = None if out is None else plot_lesion(result, out, metric=metric.value)
    show(result, as_json=as_json, figure=figure, notes=subject.notes)


def register(app: typer.Typer) -> None:
    """Add ``lesion`` to the application."""
    app.command("lesion")(lesion)
