"""``resablate grid``: help, axis parsing, one-line validation errors, dry run, executor hints."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from grid_helpers import demo_weight_standins, one_thread, tiny_grid_args, write_tiny_dataset
from typer.testing import CliRunner

from resablate.errors import ConfigError
from resablate.grid.executors import RayExecutor
from resablate.grid.store import ResultStore
from resablate_cli.app import app
from resablate_cli.cells import parse_settings
from resablate_cli.vocabulary import expand_multi_values


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_help_shows_the_axes_with_examples() -> None:
    result = CliRunner().invoke(app, ["grid", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = _flat(result.output)
    for piece in (
        "--depths",
        "Depths of the family: 18 34 50 101 152 (resnet), 20 32 44 56 (cifar_resnet).",
        "--family",
        "Residual family the depths belong to: resnet, or cifar_resnet (He et al. 2016's CIFAR "
        "ResNets, three stages).",
        "Architectures, e.g. resnet18 resnet50 vgg16 (several values or repeated). After the "
        "depths'.",
        "--weights",
        "[default: imagenet none]",
        "--residual-alpha",
        "off:conv4_x,conv5_x",
        "--freeze",
        "--baselines",
        "resablate grid --depths 18 50 --data demo --out runs/demo",
        "resablate grid --family cifar_resnet --depths 20 32 44 56 --residual on off --weights "
        "none \\ --seeds 0 1 2 --recipe cifar_demo --data demo --pack 6 --out runs/demo",
        "--retry-failed",
        "--dry-run",
    ):
        assert piece in text


def test_several_values_after_one_flag() -> None:
    args = ["--depths", "18", "50", "--residual", "on", "off:conv4_x,conv5_x", "--data", "x"]
    assert expand_multi_values(args) == [
        "--depths",
        "18",
        "--depths",
        "50",
        "--residual",
        "on",
        "--residual",
        "off:conv4_x,conv5_x",
        "--data",
        "x",
    ]
    assert expand_multi_values(["--seeds=0,1", "--residual-alpha", "1", "0.5"]) == [
        "--seeds",
        "0",
        "--seeds",
        "1",
        "--residual-alpha",
        "1",
        "--residual-alpha",
        "0.5",
    ]
    assert parse_settings(["checkpoint_every=1", "amp=none", "lr=0.5"]) == {
        "checkpoint_every": 1,
        "amp": "none",
        "lr": 0.5,
    }


@pytest.mark.parametrize(
    ("args", "message", "end"),
    [
        (
            ["--depths", "18", "77"],
            "error: depth 77: unknown architecture 'resnet77';",
            "(--depths)",
        ),
        (
            ["--freeze", "conv1-9"],
            "error: unknown freeze plan 'conv1-9'; plans: none, conv1, conv1-2, "
            "conv1-3, conv1-4, all (--freeze)",
            "(--freeze)",
        ),
        (
            ["--weights", "/no/such.pth"],
            "error: weights file /no/such.pth does not exist;",
            ".pth/.pt/.safetensors file (--weights)",
        ),
        (
            ["--residual", "off:conv7_x"],
            "error: unknown stage 'conv7_x'; stages: conv1,",
            "layer3, layer4 (--residual)",
        ),
        (
            ["--arch", "resnet18", "resnet77"],
            "error: unknown architecture 'resnet77';",
            "(--arch)",
        ),
        (
            ["--data", "/no/such/data"],
            "error: dataset folder /no/such/data does not exist (--data)",
            "(--data)",
        ),
        (
            ["--residual-alpha", "2"],
            "error: residual alpha 2 is outside [0, 1] (--residual-alpha)",
            "(--residual-alpha)",
        ),
    ],
)
def test_invalid_axis_values_fail_before_training(
    args: list[str], message: str, end: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["grid", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert _flat(result.output).startswith(message)
    assert _flat(result.output).strip().endswith(end)
    assert not (tmp_path / "out").exists()


def test_old_spellings_warn_and_mean_the_new_flags(tmp_path: Path) -> None:
    args = ["grid", "--arch", "resnet", "--depths", "77", "--pretrained", "none"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        "warning: --pretrained is deprecated; use --weights (the old spelling goes in the next "
        "release)",
        "warning: --arch resnet (a family) is deprecated; use --family resnet (the old spelling "
        "goes in the next release)",
    ]
    assert lines[2].startswith("error: depth 77: unknown architecture 'resnet77';")
    assert len(lines) == 3 and not (tmp_path / "out").exists()


def test_debug_after_the_command(tmp_path: Path) -> None:
    args = ["grid", "--depths", "77", "--out", str(tmp_path / "out"), "--debug"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ConfigError) and result.exception.field == "depths"


@pytest.mark.slow
def test_dry_run_stores_pending_cells_with_counts_and_trains_nothing(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = [*tiny_grid_args(data, out), "--dry-run"]
    with one_thread():
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert "2 cells (dry run: nothing trained)" in text
    assert "resnet18 · residual off · weights none · seed 0" in text
    assert "estimated training time on cpu:" in text
    with ResultStore.open(out) as store:
        rows = store.cells()
    assert [(r.status, r.params) for r in rows] == [("pending", 11_177_538)] * 2
    assert rows[0].flops is not None and rows[1].flops is not None and rows[1].flops < rows[0].flops
    assert not (out / "cells").exists()


def test_ray_missing_is_a_one_line_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError) as info:
        RayExecutor(lambda *a, **k: None)
    assert str(info.value) == (
        "the ray executor needs Ray, which is not installed: pip install 'resablate[ray]'"
    )


def test_interrupt_exits_130_and_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("resablate.grid.runner.run_grid", interrupted)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["grid", "--depths", "18", "--out", str(out)])
    assert result.exit_code == 130
    assert _flat(result.output) == (
        f"the store in {out} is saved; rerun the same command to resume interrupted"
    )


@pytest.mark.slow
def test_grid_on_the_hugging_face_resnets_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The exact command of issue 13, with stand-ins for the two demo-pretrained weights files
    # (pre-training them would take most of the test's time), in a cache of its own.
    monkeypatch.setenv("RESABLATE_CACHE", str(tmp_path / "cache"))
    demo_weight_standins(("resnet18", "resnet50"), "hf")
    monkeypatch.chdir(tmp_path)
    args = ["grid", "--depths", "18", "50", "--source", "hf", "--data", "demo", "--max-steps", "4"]
    with one_thread():
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert "8 cells: 8 done · ran 8 now · runs/grid" in text
    for model, params, gflops in (
        ("ResNet-18 (hf)", "11.2", "0.0371"),
        ("ResNet-50 (hf)", "23.5", "0.0839"),
    ):
        assert re.search(
            rf"│ {re.escape(model)} ( *│ *\d\.\d+ ){{4}}│ +{params} │ +{gflops} │", result.stdout
        )
    with ResultStore.open(tmp_path / "runs" / "grid") as store:
        rows = store.cells()
    assert {(r.cell.arch, r.cell.source, r.status) for r in rows} == {
        ("resnet18", "hf", "done"),
        ("resnet50", "hf", "done"),
    }
    # the cells record the source, so their ids are not the torchvision cells' (pinned in
    # tests/test_residual_plan.py, unchanged)
    assert sorted(r.cell_id for r in rows) == [
        "22073adf913b", "283292f2ff81", "34c06566712a", "450fd1cb7f7c",
        "48f5d7d9971a", "bab15f62522f", "dedf55ad9e5f", "eb645e7d9b79",
    ]  # fmt: skip
