"""The ``resablate`` application: the root options and the list of commands."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from resablate import __version__
from resablate_cli.errors import DEBUG, EXIT_CODES_HELP, ResablateGroup, closed_pipe

app = typer.Typer(
    cls=ResablateGroup,
    name="resablate",
    help="Ablation studies of CNN architectures: does this part of the network matter?",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"resablate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            DEBUG, help="Show full tracebacks instead of one-line errors (also after the command)."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Ablation studies of CNN architectures: does this part of the network matter?"""
    ctx.obj = {"debug": debug}


# One module per command (or command group), each with ``register(app)``; listed in the order
# ``--help`` shows them.
_COMMAND_MODULES: tuple[str, ...] = (
    "surgery",
    "count",
    "weights",
    "data",
    "train",
    "demo_weights",
    "grid",
    "report",
    "lesion",
    "gradflow",
    "compare_features",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"resablate_cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    from rich.console import Console

    Console.on_broken_pipe = closed_pipe  # type: ignore[method-assign]
    app()
