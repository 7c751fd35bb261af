"""cli/options.py: the shared options follow the library's constants; flags word library fields."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command

from resablate.choices import BN_POLICIES, LESION_METRICS, METRICS, METRICS_SHOWN, SOURCES
from resablate.errors import ConfigError
from resablate.grid.spec import OVERRIDE_FIELDS
from resablate_cli.app import app
from resablate_cli.options import BnPolicy, LesionMetric, Metric, Source, flag, split_values


def test_choices_are_the_library_constants() -> None:
    assert tuple(Source) == SOURCES
    assert tuple(BnPolicy) == BN_POLICIES
    assert tuple(LesionMetric) == LESION_METRICS
    assert tuple(Metric) == METRICS_SHOWN == ("f1", "accuracy", "precision", "recall", "loss")
    assert sorted(METRICS_SHOWN) == sorted(METRICS)


def test_grid_exposes_every_override_field_as_an_option() -> None:
    grid = get_command(app).commands["grid"]  # type: ignore[attr-defined]
    options = {p.name for p in grid.params}
    assert set(OVERRIDE_FIELDS) <= options


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("depths", "--depths"),
        ("residual_alpha", "--residual-alpha"),
        ("resume", "--no-resume"),
        ("out_dir", "--out"),
        ("storage_size", "--storage-size"),
    ],
)
def test_flag_of_a_library_field(field: str, expected: str) -> None:
    assert flag(field) == expected


def test_grid_words_some_fields_its_own_way() -> None:
    assert flag("weights", "grid") == "--pretrained" and flag("weights", "lesion") == "--weights"
    assert flag("family", "grid") == "--arch"
    assert flag("storage_size", "grid") == "--set storage_size=N"
    assert flag("out_dir", "grid") == "--out"


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
