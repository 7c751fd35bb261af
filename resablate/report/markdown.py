"""Render report blocks as GitHub-flavoured Markdown (figures as relative links)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from resablate.report import document as doc


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown_table(block: doc.TableBlock) -> str:
    """A pipe table; line breaks inside a cell become ``<br>`` and ``|`` is escaped."""
    lines = [
        "| " + " | ".join(_cell(h) for h in block.header) + " |",
        "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(block.header))) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
    if not block.rows:
        lines.append("| " + " | ".join("" for _ in block.header) + " |")
    text = "\n".join(lines)
    if block.notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in block.notes)
    return text


def render_markdown(blocks: Sequence[doc.Block], relative_to: Path) -> str:
    """The document as Markdown; figure links are relative to ``relative_to`` (report's folder)."""
    parts = []
    for block in blocks:
        if isinstance(block, doc.Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, doc.Paragraph):
            parts.append(block.text)
        elif isinstance(block, doc.TableBlock):
            parts.append(markdown_table(block))
        elif isinstance(block, doc.FigureBlock):
            link = Path(os.path.relpath(block.figure.path, relative_to)).as_posix()
            parts.append(f"![{block.figure.title}]({link})\n\n*{block.figure.title}*")
        elif isinstance(block, doc.CodeBlock):
            parts.append(f"```{block.language}\n{block.text}\n```")
        elif isinstance(block, doc.ListBlock):
            parts.append("\n".join(f"- {item}" for item in block.items))
    return "\n\n".join(parts) + "\n"
