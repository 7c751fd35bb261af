"""Render report blocks as one self-contained HTML page.

Figures are embedded as base64 ``data:`` URIs and the style sheet is inline, so the file needs
nothing else to be viewed: no network, no neighbouring files, no script.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from resablate.report import document as doc

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 78rem; color: #1b1f24;
       padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .85rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; font-weight: 600; }
ul.notes { font-size: .8rem; color: #57606a; }
figure { display: inline-block; vertical-align: top; max-width: calc(50% - 1.5rem);
         margin: .5rem 1rem .5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: .8rem; color: #57606a; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
"""


def _cell(text: str) -> str:
    return "<br>".join(escape(line) for line in text.split("\n"))


def html_table(block: doc.TableBlock) -> str:
    """A ``<table>`` with a caption, then its notes as a list."""
    head = "".join(f"<th>{_cell(h)}</th>" for h in block.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in block.rows
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in block.notes)
    html = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return html + (f'<ul class="notes">{notes}</ul>' if notes else "")


def _figure(block: doc.FigureBlock) -> str:
    data = base64.b64encode(block.figure.path.read_bytes()).decode("ascii")
    title = escape(block.figure.title)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{title}" '
        f'width="{block.figure.width}" height="{block.figure.height}">'
        f"<figcaption>{title}</figcaption></figure>"
    )


def render_html(blocks: Sequence[doc.Block]) -> str:
    """The document as one HTML5 page with inline CSS and embedded PNG figures."""
    title = next((b.text for b in blocks if isinstance(b, doc.Heading) and b.level == 1), "report")
    parts = []
    for block in blocks:
        if isinstance(block, doc.Heading):
            parts.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, doc.Paragraph):
            parts.append(f"<p>{escape(block.text)}</p>")
        elif isinstance(block, doc.TableBlock):
            parts.append(html_table(block))
        elif isinstance(block, doc.FigureBlock):
            parts.append(_figure(block))
        elif isinstance(block, doc.CodeBlock):
            parts.append(f"<pre><code>{escape(block.text)}</code></pre>")
        elif isinstance(block, doc.ListBlock):
            parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in block.items) + "</ul>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
