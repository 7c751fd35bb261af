"""cli/options.py: the shared options follow the library's constants; flags word library fields."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from typer.main import get_command

from resablate.choices import BN_POLICIES, LESION_METRICS, METRICS, METRICS_SHOWN, SOURCES
from resablate.errors import ConfigError
from resablate_cli.app import app
from resablate_cli.cells import OVERRIDE_FIELDS
from resablate_cli.options import BnPolicy, LesionMetric, Metric, Source, flag, split_values
from resablate_cli.vocabulary import renew_spellings


def test_choices_are_the_library_constants() -> None:
    assert tuple(Source) == SOURCES
    assert tuple(BnPolicy) == BN_POLICIES
    assert tuple(LesionMetric) == LESION_METRICS
    assert tuple(Metric) == METRICS_SHOWN == ("f1", "accuracy", "precision", "recall", "loss")
    assert sorted(METRICS_SHOWN) == sorted(METRICS)


CELL_OPTIONS = {
    "--arch",
    "--residual",
    "--residual-alpha",
    "--weights",
    "--freeze",
    "--bn",
    "--seeds",
    "--source",
    "--recipe",
    "--data",
    "--set",
    "--out",
    "--device",
    "--json",
    "--epochs",
    "--lr",
    "--batch-size",
    "--grad-accum",
    "--max-steps",
    "--image-size",
    "--storage-size",
    "--amp",
    "--compile",
}


def _options(command: str) -> dict[str, Any]:
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {opt: p for p in params for opt in p.opts}


def _help(command: str, option: str) -> Any:
    """The option's line in ``resablate COMMAND --help``: flags, type, help and default."""
    cmd = get_command(app).commands[command]  # type: ignore[attr-defined]
    return _options(command)[option].get_help_record(cmd.context_class(cmd))


@pytest.mark.parametrize("command", ["train", "grid"])
def test_train_and_grid_share_the_cell_options(command: str) -> None:
    options = _options(command)
    assert set(options) >= CELL_OPTIONS
    assert set(OVERRIDE_FIELDS) <= {p.name for p in options.values()}


def test_the_shared_options_are_spelled_and_typed_alike() -> None:
    for name in CELL_OPTIONS - {"--arch", "--residual", "--weights", "--out"}:
        assert _help("train", name) == _help("grid", name), name
    train, grid = _options("train"), _options("grid")
    for name in ("--arch", "--residual", "--weights"):
        assert train[name].multiple and grid[name].multiple


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("depths", "--depths"),
        ("residual_alpha", "--residual-alpha"),
        ("archs", "--arch"),
        ("out_dir", "--out"),
        ("storage_size", "--storage-size"),
        ("weights", "--weights"),
        ("seeds", "--seeds"),
    ],
)
def test_flag_of_a_library_field(field: str, expected: str) -> None:
    assert flag(field) == expected


@pytest.mark.parametrize(
    ("old", "new", "warning"),
    [
        (["--pretrained", "imagenet", "none"], ["--weights", "imagenet", "none"], "--pretrained"),
        (["--seed=3"], ["--seeds=3"], "--seed"),
        (["--alpha", "0.5"], ["--residual-alpha", "0.5"], "--alpha"),
        (["--no-residual"], ["--residual", "off"], "--no-residual"),
        (
            ["--no-residual", "--stages", "conv4_x", "--stages", "conv5_x", "--json"],
            ["--residual", "off:conv4_x,conv5_x", "--json"],
            "--no-residual --stages conv4_x,conv5_x",
        ),
    ],
)
def test_old_spellings_become_the_new_ones_with_one_warning(
    old: list[str], new: list[str], warning: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert renew_spellings(old) == new
    replacement = " ".join(new[:2]) if warning.startswith("--no-residual") else new[0]
    replacement = replacement.partition("=")[0]
    assert capsys.readouterr().err == (
        f"warning: {warning} is deprecated; use {replacement} (the old spelling goes in the next "
        "release)\n"
    )


def test_stages_need_no_residual() -> None:
    with pytest.raises(ConfigError, match=r"^--stages only applies together with --no-residual;"):
        renew_spellings(["--stages", "conv4_x"])


def test_split_values() -> None:
    assert split_values(["a,b", " c ", ",", "d,"]) == ["a", "b", "c", "d"]
    assert split_values(None) == []


def test_field_rides_on_the_error() -> None:
    error = ConfigError("depth 77: unknown", field="depths")
    assert (str(error), error.field) == ("depth 77: unknown", "depths")
    assert ConfigError("x").field is None


def test_cli_import_does_not_import_torch() -> None:
    code = "import sys, resablate_cli.app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
