"""Consoles shared by the commands: results to stdout, errors and progress to stderr."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

out = Console(highlight=False, soft_wrap=False)
# soft_wrap: an error stays one line however narrow the terminal (a user greps it, tests read it).
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Print one JSON object on stdout, nothing else (for ``--json`` flags)."""
    out.file.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    out.file.flush()
