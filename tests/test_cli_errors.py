"""The CLI's error contract: one line, a non-zero exit, a traceback only with --debug."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from resablate.errors import DataNotFoundError
from resablate_cli.app import app
from resablate_cli.errors import ResablateGroup

runner = CliRunner()


def _app() -> typer.Typer:
    demo = typer.Typer(cls=ResablateGroup, pretty_exceptions_enable=False)

    @demo.callback()
    def root(ctx: typer.Context, debug: Annotated[bool, typer.Option("--debug")] = False) -> None:
        ctx.obj = {"debug": debug}

    @demo.command()
    def bad_input() -> None:
        raise DataNotFoundError("dataset path /nowhere does not exist")

    @demo.command()
    def bug() -> None:
        raise KeyError("oops")

    @demo.command()
    def brackets() -> None:
        raise DataNotFoundError("needs pip install 'resablate[hf]' and [bold]x[/bold]")

    return demo


def test_user_error_is_one_line_exit_2_without_traceback() -> None:
    result = runner.invoke(_app(), ["bad-input"])
    assert result.exit_code == 2
    assert result.stderr == "error: dataset path /nowhere does not exist\n"
    assert "Traceback" not in result.output


def test_error_text_is_not_markup() -> None:
    result = runner.invoke(_app(), ["brackets"])
    assert result.stderr == "error: needs pip install 'resablate[hf]' and [bold]x[/bold]\n"


def test_unexpected_error_names_type_and_points_to_debug() -> None:
    result = runner.invoke(_app(), ["bug"])
    assert result.exit_code == 1
    assert result.stderr == (
        "internal error: KeyError: 'oops' (rerun with --debug for the traceback)\n"
    )


def test_debug_reraises_with_the_traceback() -> None:
    result = runner.invoke(_app(), ["--debug", "bad-input"])
    assert result.exit_code == 1
    assert isinstance(result.exception, DataNotFoundError)


def test_long_error_stays_on_one_line() -> None:
    result = runner.invoke(app, ["surgery", "--no-residual", "resnet77"], terminal_width=40)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown architecture 'resnet77'; ResNet depths: 18, 34, 50")


def test_bad_option_value_is_a_usage_error_not_an_internal_one() -> None:
    result = runner.invoke(app, ["surgery", "resnet18", "--input-size", "abc"])
    assert result.exit_code == 2
    assert "internal error" not in result.output
    assert "Invalid value" in result.output


@pytest.mark.parametrize(
    "command", ["surgery", "count", "weights", "data", "train", "grid", "report", "lesion"]
)
def test_help_of_every_command_exits_0_and_shows_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "resablate " + command in result.output
