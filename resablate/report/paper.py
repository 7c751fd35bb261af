"""The paper tables as text to paste: LaTeX (booktabs) and Markdown, the best values in bold.

Three of the report's tables become paper tables: the ablation table (the best scenario of each
row in bold), the freeze table (the best plan of each column in bold) and the model table's test
metrics (the best configuration of each metric in bold). A value reads ``mean ± half-width
(n=3)``, the half-width of the 95 % Student-t interval over the finished seeds
(:func:`resablate.report.stats.t_interval`), ``mean (n=1)`` for a single seed and ``—`` where no
seed finished or the grid has no such cell. Best = the highest mean, the lowest for ``loss``;
ties are all bold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resablate.report.build import Report
    from resablate.report.stats import MeanInterval
    from resablate.report.tables import PivotTable

#: Digits after the decimal point of every value.
DIGITS = 3
VALUES_NOTE = (
    "Values: mean ± half-width of the 95 % Student-t interval over the n finished seeds "
    "(one seed: no interval); — where no seed finished; best in bold (highest, lowest for loss)."
)
# The model table's metric columns (its header's names and order).
_MODEL_METRICS = (
    ("loss", "loss"),
    ("F1", "f1"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("accuracy", "accuracy"),
)


@dataclass(frozen=True)
class PaperTable:
    """A table of labels and values, with the values to set in bold.

    Attributes:
        name: ``"ablation"``, ``"freeze"`` or ``"models"`` (the LaTeX label's suffix).
        title: Caption.
        label_header: Names of the label columns.
        value_header: Names of the value columns.
        labels: The label cells of each row.
        values: The value of each row and value column (``None``: nothing to show).
        bold: (row, value column) of the best values.
        best_of: ``"row"`` or ``"column"``: what the best value is the best of.
    """

    name: str
    title: str
    label_header: tuple[str, ...]
    value_header: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    values: tuple[tuple[MeanInterval | None, ...], ...]
    bold: frozenset[tuple[int, int]]
    best_of: str

    @property
    def header(self) -> tuple[str, ...]:
        """The label columns' names, then the value columns'."""
        return (*self.label_header, *self.value_header)


def _best(values: Sequence[MeanInterval | None], lower: bool) -> list[int]:
    # As shown: means that print alike are equally good.
    means = [(i, round(v.mean, DIGITS)) for i, v in enumerate(values) if v is not None]
    if not means:
        return []
    target = (min if lower else max)(m for _, m in means)
    return [i for i, m in means if m == target]


def _pivot_paper(table: PivotTable, best_of: str) -> PaperTable:
    values = tuple(
        tuple(
            None if (e := table.entry(row, column)) is None else e.value for column in table.columns
        )
        for row in table.rows
    )
    lower = table.metric == "loss"
    if best_of == "row":
        bold = {(r, c) for r, line in enumerate(values) for c in _best(line, lower)}
    else:
        columns = [[line[c] for line in values] for c in range(len(table.columns))]
        bold = {(r, c) for c, column in enumerate(columns) for r in _best(column, lower)}
    return PaperTable(
        name=table.name,
        title=table.title,
        label_header=(table.row_header,),
        value_header=table.columns,
        labels=tuple((row,) for row in table.rows),
        values=values,
        bold=frozenset(bold),
        best_of=best_of,
    )


def paper_tables(report: Report) -> list[PaperTable]:
    """The ablation, freeze (when present) and model tables of ``report`` as paper tables."""
    tables = []
    if report.ablation is not None:
        tables.append(_pivot_paper(report.ablation, "row"))
    if report.freeze is not None:
        tables.append(_pivot_paper(report.freeze, "column"))
    records = report.models.rows
    values = tuple(tuple(r.metrics.get(name) for _, name in _MODEL_METRICS) for r in records)
    bold = {
        (r, c)
        for c, (_, name) in enumerate(_MODEL_METRICS)
        for r in _best([line[c] for line in values], name == "loss")
    }
    tables.append(
        PaperTable(
            name="models",
            title="Test metrics per configuration",
            label_header=("model", "scenario", "freeze"),
            value_header=tuple(label for label, _ in _MODEL_METRICS),
            labels=tuple((r.model, r.scenario, r.freeze) for r in records),
            values=values,
            bold=frozenset(bold),
            best_of="column",
        )
    )
    return tables


def _value_text(value: MeanInterval | None, bold: bool, *, latex: bool) -> str:
    if value is None:
        return "---" if latex else "—"
    pm = r" \pm " if latex else " ± "
    number = f"{value.mean:.{DIGITS}f}"
    if value.half_width is not None:
        number += f"{pm}{value.half_width:.{DIGITS}f}"
    if latex:
        shown = f"$\\mathbf{{{number}}}$" if bold else f"${number}$"
        return f"{shown} ($n={value.n}$)"
    return f"{f'**{number}**' if bold else number} (n={value.n})"


def _cells(table: PaperTable, *, latex: bool) -> list[list[str]]:
    return [
        [
            *(latex_escape(label) if latex else label for label in labels),
            *(
                _value_text(value, (r, c) in table.bold, latex=latex)
                for c, value in enumerate(line)
            ),
        ]
        for r, (labels, line) in enumerate(zip(table.labels, table.values, strict=True))
    ]


def _best_note(table: PaperTable) -> str:
    return f"Best of each {table.best_of} in bold."


def markdown_tables(report: Report) -> str:
    """The paper tables as one Markdown document (pipe tables)."""
    parts = [
        f"# Paper tables · {report.out_dir.name or report.out_dir}",
        f"{report.summary}. {VALUES_NOTE}",
    ]
    for table in paper_tables(report):
        align = [":---"] * len(table.label_header) + ["---:"] * len(table.value_header)
        lines = ["| " + " | ".join(_md(h) for h in table.header) + " |", f"|{'|'.join(align)}|"]
        lines += [
            "| " + " | ".join(_md(c) for c in row) + " |" for row in _cells(table, latex=False)
        ]
        parts += [f"## {table.title}", "\n".join(lines), f"*{_best_note(table)}*"]
    return "\n\n".join(parts) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "—": "---",
    "α": r"$\alpha$",
}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX text: special characters escaped, ``×``, ``·``, ``α`` as math."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_tables(report: Report) -> str:
    """The paper tables as LaTeX ``table`` environments (``booktabs`` rules), one per table."""
    parts = [
        f"% resablate paper tables · {report.out_dir.name or report.out_dir} · {report.summary}",
        f"% {VALUES_NOTE}",
        "% Needs \\usepackage{booktabs}.",
    ]
    for table in paper_tables(report):
        spec = "l" * len(table.label_header) + "r" * len(table.value_header)
        caption = f"{latex_escape(table.title)}. {_best_note(table)}"
        body = [" & ".join(row) + r" \\" for row in _cells(table, latex=True)]
        parts += [
            "",
            r"\begin{table}[htbp]",
            r"  \centering",
            f"  \\caption{{{caption}}}",
            f"  \\label{{tab:resablate-{table.name}}}",
            f"  \\begin{{tabular}}{{{spec}}}",
            r"    \toprule",
            "    " + " & ".join(latex_escape(h) for h in table.header) + r" \\",
            r"    \midrule",
            *(f"    {line}" for line in body),
            r"    \bottomrule",
            r"  \end{tabular}",
            r"\end{table}",
        ]
    return "\n".join(parts) + "\n"
