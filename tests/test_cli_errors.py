"""The CLI's error contract: one line, a non-zero exit, a traceback only with --debug."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from resablate.errors import DataNotFoundError
from resablate_cli.app import app
from resablate_cli.errors import EXIT_PIPE_CLOSED, ResablateGroup

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
    def full_disk() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/results.csv")

    @demo.command()
    def other_os_error() -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/dev/sdz")

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


def test_a_full_disk_is_one_line_naming_the_file_and_other_os_errors_are_internal() -> None:
    result = runner.invoke(_app(), ["full-disk"])
    assert (result.exit_code, result.stderr) == (
        2,
        "error: no space left on device: /runs/x/results.csv\n",
    )
    result = runner.invoke(_app(), ["other-os-error"])
    assert (result.exit_code, result.stderr) == (
        1,
        "internal error: OSError: [Errno 5] Input/output error: '/dev/sdz' (rerun with --debug "
        "for the traceback)\n",
    )


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_a_closed_output_pipe_ends_quietly_as_unix_tools_do(json_flag: list[str]) -> None:
    # `resablate count ... | head`, the reader gone before the first write.
    command = [sys.executable, "-m", "resablate_cli", "count", "resnet18", *json_flag]
    closed = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert closed.stdout is not None and closed.stderr is not None
    closed.stdout.close()
    assert (closed.wait(timeout=120), closed.stderr.read()) == (EXIT_PIPE_CLOSED, b"")


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


_BROKEN_FACTORIES = {
    "fails_at_import": 'raise RuntimeError("no GPU driver")\n',
    "bad_syntax": "def make(:\n    pass\n",
    "exits_at_import": "import sys\nsys.exit(0)\n",
    "no_image_model": "from torch import nn\ndef make():\n    return nn.Linear(3, 2)\n",
    "exits_in_factory": "import sys\ndef make():\n    sys.exit(3)\n",
}


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (
            "fails_at_import",
            "error: cannot import module 'fails_at_import' of model factory fails_at_import:make: "
            "RuntimeError: no GPU driver",
        ),
        (
            "bad_syntax",
            "error: cannot import module 'bad_syntax' of model factory bad_syntax:make: "
            "SyntaxError: invalid syntax (bad_syntax.py, line 1)",
        ),
        (
            "exits_at_import",
            "error: cannot import module 'exits_at_import' of model factory exits_at_import:make: "
            "it called sys.exit(0)",
        ),
        (
            "no_image_model",
            "error: model factory no_image_model:make built a Linear whose forward fails on a "
            "1×3×32×32 image batch: RuntimeError: ",
        ),
        (
            "exits_in_factory",
            "error: model factory exits_in_factory:make failed: it called sys.exit(3)",
        ),
    ],
)
def test_a_broken_model_factory_is_one_line_exit_2(
    module: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{module}.py").write_text(_BROKEN_FACTORIES[module])
    monkeypatch.syspath_prepend(str(tmp_path))
    result = runner.invoke(app, ["count", f"{module}:make", "--input-size", "32"])
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output


def test_help_into_a_closed_pipe_ends_quietly_with_141() -> None:
    import subprocess
    import sys

    reader, writer = os.pipe()
    os.close(reader)  # the reader has left before the help is written (`| head` done)
    done = subprocess.run(
        [sys.executable, "-m", "resablate_cli", "grid", "--help"],
        stdout=writer,
        stderr=subprocess.PIPE,
        check=False,
    )
    os.close(writer)
    assert (done.returncode, done.stderr) == (141, b"")
