"""How the CLI reports failures: one line, a non-zero exit, a traceback only with ``--debug``."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
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


#: Exit statuses of every command (``resablate --help`` and the docs list them).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2  # ResablateError.exit_code
EXIT_CELLS_NOT_DONE = 3
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, the status a shell reports for a Unix tool on `| head`
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    f"Exit codes: {EXIT_OK} success (a grid: every cell done); {EXIT_INTERNAL} internal error "
    f"(a bug: rerun with --debug and report it); {EXIT_BAD_INPUT} bad input or environment "
    f"(one line says what and where); {EXIT_CELLS_NOT_DONE} a grid ran but some cells failed, "
    f"diverged or were skipped (the summary names them); {EXIT_INTERRUPTED} interrupted "
    f"(Ctrl-C, SIGTERM); {EXIT_PIPE_CLOSED} the output pipe closed (`| head`), quietly."
)

# OSErrors about the user's machine rather than resablate: one line naming the file, exit 2.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EROFS, errno.EACCES}
)


def debug_enabled(ctx: Any) -> bool:
    """True when ``--debug`` was given (or ``RESABLATE_DEBUG=1`` is set)."""
    if os.environ.get("RESABLATE_DEBUG") == "1":
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def closed_pipe(console: Any) -> None:
    """What rich does when its output pipe closes (``resablate --help | head``), as the commands
    do: stop quietly with :data:`EXIT_PIPE_CLOSED` (rich's default exits 1). Installed as
    ``rich.console.Console.on_broken_pipe``, the hook rich documents for this."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(EXIT_PIPE_CLOSED)


class ResablateGroup(TyperGroup):
    """The root group: turns exceptions into one line on stderr and an exit code.

    ``ResablateError`` (bad input) exits with its ``exit_code`` (2), and so does an
    ``OSError`` about the machine (a full disk, a name too long, no permission); anything else
    is a bug and exits 1 with its type and message; Ctrl-C exits 130; a closed output pipe
    (``| head``) ends quietly with 141. ``--debug`` (before or after the command) re-raises
    instead.
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
        except (typer.exceptions.TyperException, click.ClickException) as exc:
            # A usage error (a flag's value, an unknown command: exit code 2, the framework's
            # and click's alike) is one line too; the framework handles the rest.
            if debug_enabled(ctx) or getattr(exc, "exit_code", None) != EXIT_BAD_INPUT:
                raise
            where = getattr(exc, "ctx", None)
            command = (where or ctx).command_path
            err.print(
                f"[bold red]error:[/] {escape(exc.format_message())} (see: {command} --help)",
                markup=True,
                highlight=False,
            )
            raise typer.Exit(EXIT_BAD_INPUT) from None
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
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # The reader left (`| head`): stop quietly, and keep Python's final flush of the
            # unwritten output from failing again on the closed pipe.
            with contextlib.suppress(OSError, ValueError):  # no real stdout (tests)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_PIPE_CLOSED) from None
        except Exception as exc:
            if debug_enabled(ctx):
                raise
            if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
                where = f": {exc.filename}" if exc.filename else ""
                message = (exc.strerror or str(exc)).lower()
                err.print(f"[bold red]error:[/] {message}{where}", markup=True, highlight=False)
                raise typer.Exit(EXIT_BAD_INPUT) from None
            message = " ".join(str(exc).split())
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(message)} "
                "(rerun with --debug for the traceback)",
                markup=True,
                highlight=False,
            )
            raise typer.Exit(EXIT_INTERNAL) from None
