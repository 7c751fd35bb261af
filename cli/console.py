"""Consoles shared by the commands: results to stdout, errors and progress to stderr."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Print one JSON object on stdout, nothing else (for ``--json`` flags)."""
    out.file.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    out.file.flush()
