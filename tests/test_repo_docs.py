"""Nothing in the repository points at documents outside it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Spelled in pieces so that this file does not match itself.
OUTSIDE = ("DESIGN" + ".md", "../" + "shared/")


def test_no_file_cites_a_document_outside_the_repository() -> None:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    for folder in ("resablate", "cli", "docs", "tests", "benchmarks"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")]
    citing = sorted(
        str(p.relative_to(ROOT)) for p in files if any(s in p.read_text() for s in OUTSIDE)
    )
    assert citing == []
