"""A report as a flat list of blocks, rendered to Markdown or HTML by their own modules.

Keeping the structure here (which sections, in which order, with which captions) lets the two
renderers stay small and agree on content: each only decides how a heading, a paragraph, a table,
a figure, a code block or a list is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resablate.report.build import Report
    from resablate.report.figures import FigureFile
    from resablate.report.tables import Tabular


@dataclass(frozen=True)
class Heading:
    """A section heading (``level`` 1 = the title)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class TableBlock:
    """A table: header, rows of display strings (a newline inside a cell = a line break), notes."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class FigureBlock:
    """A figure file and its caption."""

    figure: FigureFile


@dataclass(frozen=True)
class CodeBlock:
    """Preformatted text (e.g. the grid spec as JSON)."""

    text: str
    language: str = ""


@dataclass(frozen=True)
class ListBlock:
    """A bulleted list."""

    items: tuple[str, ...]


Block = Heading | Paragraph | TableBlock | FigureBlock | CodeBlock | ListBlock


@dataclass(frozen=True)
class FigureSection:
    """A titled group of figures (e.g. all confusion matrices)."""

    title: str
    description: str
    figures: tuple[FigureFile, ...]


def table_block(table: Tabular) -> TableBlock:
    """A :class:`TableBlock` from any table of :mod:`resablate.report.tables`."""
    return TableBlock(
        title=table.title,
        header=tuple(table.header()),
        rows=tuple(tuple(r) for r in table.display_rows()),
        notes=tuple(table.notes),
    )


def report_document(report: Report, figures: Sequence[FigureSection] = ()) -> list[Block]:
    """The report's blocks in order: summary, tables, figures, problems, spec, environment."""
    blocks: list[Block] = [
        Heading(f"resablate report · {report.out_dir.name or report.out_dir}", 1),
        Paragraph(f"{report.summary}. Store: {report.store_path.name}; metric: {report.metric}."),
    ]
    if report.compare is not None and report.published is not None:
        study = report.published
        blocks.append(Paragraph(f"Compared with the published {study.study} study: {study.title}."))
    for table in (report.ablation, report.freeze, report.models):
        if table is not None:
            blocks += [Heading(table.title), table_block(table)]
    for section in figures:
        blocks += [Heading(section.title), Paragraph(section.description)]
        blocks += [FigureBlock(f) for f in section.figures]
    blocks += [Heading(report.problems.title), table_block(report.problems)]
    blocks.append(Heading("Grid spec"))
    if report.spec is None:
        blocks.append(Paragraph("The store holds no grid spec."))
    else:
        blocks.append(CodeBlock(json.dumps(report.spec, indent=2, sort_keys=True), "json"))
    blocks.append(Heading("Environment"))
    if report.environment:
        items = tuple(f"{k}: {v}" for k, v in report.environment.items())
        blocks.append(ListBlock(items))
    else:
        blocks.append(Paragraph("No finished cell recorded its environment."))
    return blocks
