"""``resablate report``: the papers' tables and figures regenerated from a grid's store."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from resablate_cli import console
from resablate_cli.options import Metric


class Study(StrEnum):
    """Published studies to compare with."""

    cifake = "cifake"
    food5k = "food5k"


def report(
    out_dir: Annotated[Path, typer.Argument(help="The grid's run directory (holds store.sqlite).")],
    metric: Annotated[
        Metric, typer.Option("--metric", help="Metric of the ablation table.")
    ] = Metric.f1,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="table: terminal; md: report.md + figures/; html: one self-contained "
            "report.html; csv: one CSV per table; json: everything as one JSON object; "
            "latex / markdown: the paper tables alone (tables.tex / tables.md; mean ± CI, n, "
            "best in bold).",
        ),
    ] = "table",
    compare: Annotated[
        Study | None,
        typer.Option("--compare", help="Place this study's published numbers beside yours."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write (md/html/csv/latex/markdown: a folder, html/latex/markdown also "
            "a .html/.tex/.md file; json: a file). Default: OUT_DIR/report/; stdout for json.",
        ),
    ] = None,
    figures: Annotated[
        bool, typer.Option("--figures/--no-figures", help="Draw figures (md and html).")
    ] = True,
    allow_mixed_data: Annotated[
        bool,
        typer.Option(
            "--allow-mixed-data",
            help="Report cells of one dataset whose contents changed between runs (different "
            "dataset fingerprints); refused by default.",
        ),
    ] = False,
) -> None:
    """Regenerate the papers' tables and figures from a grid, with seeds and significance.

    Tables: ablation (depth × residual × pretrained), freeze plans, models (size, cost, speed).

    Seeds: mean ± 95 % t-interval; McNemar's exact test against residual on (pooled over seeds).

    Example: [bold]resablate report runs/demo --format html --compare cifake[/]
    """
    from resablate.report.build import build_report
    from resablate.report.output import check_format, write_report

    check_format(fmt)
    result = build_report(
        out_dir,
        metric=metric.value,
        compare=None if compare is None else compare.value,
        allow_mixed_data=allow_mixed_data,
    )
    if fmt == "table":
        console.out.print(result)
        return
    if fmt == "json" and out is None:
        console.print_json(result.to_dict())
        return
    written = write_report(result, fmt, out, figures=figures)
    console.err.print(f"{result.summary}; wrote {written.path} ({written.figures} figures)")


def register(app: typer.Typer) -> None:
    """Add ``report`` to the application."""
    app.command("report")(report)
