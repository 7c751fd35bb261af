"""Consoles shared by the commands: results to stdout, errors and progress to stderr."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader left (``| head``): rich would exit 1 (an internal error's code); the root
        group ends quietly with the code of a closed pipe instead."""
        self.quiet = True
        raise BrokenPipeError


out = _Console(highlight=False, soft_wrap=False)
# soft_wrap: an error stays one line however narrow the terminal (a user greps it, tests read it).
err = _Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Print one JSON object on stdout, nothing else (for ``--json`` flags)."""
    out.file.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    out.file.flush()
