"""How the CLI reports failures: one line, a non-zero exit, a traceback only with ``--debug``."""

from __future__ import annotations

import os
from typing import Any

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from resablate.errors import ResablateError
from resablate_cli.console import err
from resablate_cli.options import flag

DEBUG = "--debug"
# Exceptions the command-line framework handles itself (usage errors, --help, exits). Typer 0.29
# vendors its own click, so its exceptions are not click's: both families pass through.
_FRAMEWORK_EXCEPTIONS: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    typer.exceptions.TyperException,
    click.exceptions.Exit,
    click.ClickException,
    click.Abort,
)


def debug_enabled(ctx: Any) -> bool:
    """True when ``--debug`` was given (or ``RESABLATE_DEBUG=1`` is set)."""
    if os.environ.get("RESABLATE_DEBUG") == "1":
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


class ResablateGroup(TyperGroup):
    """The root group: turns exceptions into one line on stderr and an exit code.

    ``ResablateError`` (bad input) exits with its ``exit_code`` (2); anything else is a bug and
    exits 1 with its type and message; Ctrl-C exits 130. ``--debug`` (before or after the
    command) re-raises instead.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # ``--debug`` is a root option; given after the command (``resablate grid ... --debug``)
        # it moves in front of it. Words after ``--`` are left alone.
        end = args.index("--") if "--" in args else len(args)
        debug = [arg for arg in args[:end] if arg == DEBUG]
        rest = [arg for arg in args[:end] if arg != DEBUG]
        return super().parse_args(ctx, debug[:1] + rest + args[end:])

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _FRAMEWORK_EXCEPTIONS:
            raise
        except ResablateError as exc:
            if debug_enabled(ctx):
                raise
            where = f" ({flag(exc.field)})" if exc.field else ""
            # The message is text, not markup: "resablate[mlflow]" keeps its brackets.
            err.print(
                f"[bold red]error:[/] {escape(str(exc))}{where}", markup=True, highlight=False
            )
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if debug_enabled(ctx):
                raise
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if debug_enabled(ctx):
                raise
            message = " ".join(str(exc).split())
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(message)} "
                "(rerun with --debug for the traceback)",
                markup=True,
                highlight=False,
            )
            raise typer.Exit(1) from None
