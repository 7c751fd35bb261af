"""Write a report to disk: Markdown + figures, one self-contained HTML page, CSV, JSON, or the
paper tables alone as LaTeX or Markdown.

Every file is written atomically (``resablate.atomic``): a reader sees the previous report or the
new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.atomic import sweep_stale, write_text
from resablate.errors import ConfigError
from resablate.paths import output_dir
from resablate.report.document import report_document
from resablate.report.html import render_html
from resablate.report.markdown import render_markdown
from resablate.report.paper import latex_tables, markdown_tables

if TYPE_CHECKING:
    from resablate.report.build import Report
    from resablate.report.tables import Tabular

#: Formats written to files (``table`` is the terminal rendering, done by the CLI).
FILE_FORMATS = ("md", "html", "csv", "json", "latex", "markdown")
#: Every format of a report: the terminal's and the files'.
FORMATS = ("table", *FILE_FORMATS)
FIGURES_FOLDER = "figures"
# The formats that write the paper tables alone: their file name and renderer.
_PAPER_FILES = {"latex": ("tables.tex", latex_tables), "markdown": ("tables.md", markdown_tables)}


def check_format(fmt: str, legal: tuple[str, ...] = FORMATS) -> str:
    """``fmt`` when it is one of ``legal`` (by default :data:`FORMATS`).

    Raises:
        ConfigError: Unknown format (naming the legal ones).
    """
    if fmt not in legal:
        raise ConfigError(
            f"unknown report format {fmt!r}; choose one of {', '.join(legal)}", field="format"
        )
    return fmt


@dataclass(frozen=True)
class WrittenReport:
    """What :func:`write_report` wrote.

    Attributes:
        path: The main file (``report.md``, ``report.html``, the JSON file or the CSV folder).
        files: Every file written, the main one first.
        figures: How many figures were drawn.
    """

    path: Path
    files: tuple[Path, ...]
    figures: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "figures": self.figures,
        }


def table_csv(table: Tabular) -> str:
    """A table's records as CSV (columns = the union of the records' keys, in first-seen order;
    lists and dicts as JSON)."""
    records = table.records()
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(
            {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in record.items()}
        )
    return buffer.getvalue()


def csv_tables(report: Report) -> dict[str, str]:
    """``file stem -> CSV text`` for each table of the report (ablation, freeze, models, cells)."""
    named: dict[str, Tabular | None] = {
        "ablation": report.ablation,
        "freeze": report.freeze,
        "models": report.models,
        "cells": report.problems,
    }
    return {name: table_csv(table) for name, table in named.items() if table is not None}


def default_output(report: Report, fmt: str) -> Path:
    """Where a format goes without an ``out``: ``OUT_DIR/report/`` (JSON: ``report.json`` there)."""
    folder = report.out_dir / "report"
    return folder / "report.json" if fmt == "json" else folder


def write_report(
    report: Report,
    fmt: str,
    out: str | os.PathLike[str] | None = None,
    *,
    figures: bool = True,
    feature_maps: bool = True,
) -> WrittenReport:
    """Write ``report`` in ``fmt``.

    Args:
        report: From :func:`resablate.report.build.build_report`.
        fmt: ``"md"`` (``report.md`` + ``figures/`` in the folder ``out``), ``"html"``
            (``report.html`` in the folder ``out``, or ``out`` itself when it ends in ``.html``),
            ``"csv"`` (one ``<table>.csv`` per table in the folder ``out``), ``"json"``
            (the file ``out``), ``"latex"`` / ``"markdown"`` (the paper tables alone:
            ``tables.tex`` / ``tables.md`` in the folder ``out``, or ``out`` itself when it ends
            in ``.tex`` / ``.md``).
        out: Destination; :func:`default_output` when ``None``.
        figures: Draw the figures (md and html).
        feature_maps: Include the feature-map figure (rebuilds models from their run dirs).

    Raises:
        ConfigError: Unknown format; a destination that is (below) a file or cannot be written,
            checked before anything is drawn.
    """
    check_format(fmt, FILE_FORMATS)
    target = Path(out).expanduser() if out is not None else default_output(report, fmt)
    paper = _PAPER_FILES.get(fmt)
    # html and the paper tables take a folder or a file with their suffix; json a file.
    suffix = ".html" if fmt == "html" else None if paper is None else Path(paper[0]).suffix
    in_file = fmt == "json" or target.suffix == suffix
    try:
        output_dir(target.parent if in_file else target, "report folder")
    except ConfigError as exc:
        if out is None:  # the default lies in the grid's folder, which may be read-only
            raise ConfigError(f"{exc}; write the report elsewhere", field="out") from None
        raise
    if fmt == "json":
        write_text(target, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        return WrittenReport(target, (target,), 0)
    if paper is not None:
        file_name, render = paper
        page = target if in_file else target / file_name
        write_text(page, render(report))
        return WrittenReport(page, (page,), 0)
    if fmt == "csv":
        files = []
        for name, text in csv_tables(report).items():
            write_text(target / f"{name}.csv", text)
            files.append(target / f"{name}.csv")
        return WrittenReport(target, tuple(files), 0)
    page = target if fmt == "html" and target.suffix == ".html" else target / f"report.{fmt}"
    sweep_stale(page.parent)
    if fmt == "md":
        return _write_page(report, page, page.parent / FIGURES_FOLDER, figures, feature_maps)
    # HTML embeds its figures: draw them in a scratch folder that goes away afterwards.
    with tempfile.TemporaryDirectory(prefix="resablate-report-") as scratch:
        return _write_page(report, page, Path(scratch), figures, feature_maps)


def _write_page(
    report: Report, page: Path, figure_dir: Path, figures: bool, feature_maps: bool
) -> WrittenReport:
    sections = []
    if figures:
        from resablate.report.figure_data import report_figures

        sections = report_figures(report, figure_dir, feature_maps=feature_maps)
    blocks = report_document(report, sections)
    markdown = page.suffix == ".md"
    write_text(page, render_markdown(blocks, page.parent) if markdown else render_html(blocks))
    drawn = tuple(f.path for s in sections for f in s.figures)
    if markdown and figure_dir.is_dir():
        # Figures of an earlier report (e.g. cells since dropped from the grid) would linger.
        for stale in set(figure_dir.glob("*.png")) - set(drawn):
            stale.unlink()
    return WrittenReport(page, (page, *drawn) if markdown else (page,), len(drawn))
