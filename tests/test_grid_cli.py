"""``resablate grid``: help, axis parsing, one-line validation errors, dry run, executor hints."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from grid_helpers import demo_weight_standins, one_thread, tiny_grid_args, write_tiny_dataset
from test_grid_runner import Recorder
from typer.testing import CliRunner

from resablate.errors import ConfigError, WeightsUnavailableError
from resablate.grid.executors import RayExecutor
from resablate.grid.runner import run_grid
from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore
from resablate.grid.summary import GridSummary
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


# Issue 22: each bad input is one line naming what (and the flag), exit 2, before anything is
# written: no store, no lock, no folder, in a run and in a dry run alike.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "lr=abc"], "error: recipe field lr='abc' must be a number"),
        (["--set", "lr=null"], "error: recipe field lr=None must be a number"),
        (["--set", "betas=5"], "error: recipe field betas=5 must be a list of 2 numbers"),
        (["--set", "betas=[1]"], "error: recipe field betas=[1] must be a list of 2 numbers"),
        (["--set", "mean=1e309"], "error: recipe field mean=inf must be a list of 3 numbers"),
        (["--set", "mean=abc"], "error: recipe field mean='abc' must be a list of 3 numbers"),
        (
            ["--set", "crop_scale=[0.5]"],
            "error: recipe field crop_scale=[0.5] must be a list of 2 numbers",
        ),
        (
            ["--set", "name=zzz"],
            "error: recipe field name='zzz' cannot be overridden; choose a recipe by name "
            "instead (cifake, food, demo, cifar_demo) (--recipe)",
        ),
        (["--set", "hflip=7"], "error: recipe field hflip=7 must be true or false"),
        (
            ["--set", "positive=9"],
            "error: recipe field positive=9 is not a class of the dataset (2 classes: 0..1)",
        ),
        (
            ["--seeds", "18446744073709551617"],
            "error: seed 18446744073709551617 is larger than 9223372036854775807 (--seeds)",
        ),
        *(
            (
                ["--pack", pack],
                f"error: pack '{pack}' is not valid; use auto, off or a number of cells (2, 4) "
                "(--pack)",
            )
            for pack in ("x", "-2", "0")
        ),
        *(
            (
                ["--workers", workers],
                f"error: workers {workers} must be a positive integer (--workers)",
            )
            for workers in ("0", "-1")
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_bad_values_are_one_line_exit_2_and_write_nothing(
    args: list[str], message: str, dry_run: bool, tmp_path: Path
) -> None:
    data = write_tiny_dataset(tmp_path / "data", per_class=2)
    out = tmp_path / "out"
    grid = [*tiny_grid_args(data, out), *args, *(["--dry-run"] if dry_run else [])]
    result = CliRunner().invoke(app, grid, env={"COLUMNS": "200"})
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (2, message)
    assert "Traceback" not in result.output
    assert not out.exists()


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
def test_dry_run_lists_pending_cells_with_counts_and_writes_nothing(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = [*tiny_grid_args(data, out), "--dry-run"]
    with one_thread():
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        as_json = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert "2 cells (dry run: nothing trained)" in text
    assert "resnet18 · residual off · weights none · seed 0" in text
    assert "estimated training time on cpu:" in text
    cells = json.loads(as_json.stdout)["cells"]
    assert [(c["status"], c["params"]) for c in cells] == [("pending", 11_177_538)] * 2
    assert cells[1]["flops"] < cells[0]["flops"]
    assert not out.exists()  # no store, no lock, no folder


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


def _summary_of(tmp_path: Path, behaviour: dict[tuple[str, str], Any]) -> GridSummary:
    spec = GridSpec(depths=(18, 34), residual=("on", "off"), weights=("none",))
    return run_grid(spec, tmp_path / "ran", job_runner=Recorder(behaviour), device="cpu")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_exit_code_is_0_when_every_cell_is_done_and_3_naming_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    summary = _summary_of(
        tmp_path,
        {
            ("resnet18", "off"): ValueError("bad thing"),
            ("resnet34", "on"): WeightsUnavailableError("weights file x.pth is missing"),
            ("resnet34", "off"): "diverged",
        },
    )
    ids = [row.cell_id for row in summary.cells]
    monkeypatch.setattr("resablate.grid.runner.run_grid", lambda *a, **k: summary)
    args = ["grid", "--out", str(tmp_path / "ran"), *(["--json"] if as_json else [])]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 3, result.output
    if as_json:
        assert json.loads(result.stdout)["counts"]["failed"] == 1
    else:
        assert result.stdout.splitlines()[-1] == (
            f"4 cells: 1 done, 1 failed ({ids[1]}), 1 diverged ({ids[3]}), 1 skipped "
            f"({ids[2]}) · ran 4 now · {tmp_path / 'ran'}"
        )
        assert f"failed: {ids[1]} resnet18 · residual off · weights none · seed 0: " in (
            result.stdout
        )
    all_done = _summary_of(tmp_path / "again", {})
    monkeypatch.setattr("resablate.grid.runner.run_grid", lambda *a, **k: all_done)
    assert CliRunner().invoke(app, args).exit_code == 0


def test_exit_codes_are_in_the_help() -> None:
    for args in (["--help"], ["grid", "--help"]):
        text = _flat(CliRunner().invoke(app, args, env={"COLUMNS": "200"}).output)
        assert "Exit codes: 0 success (a grid: every cell done); 1 internal error" in text
        assert "3 a grid ran but some cells failed, diverged or were skipped" in text


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100], ids=["empty", "junk"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_an_empty_or_foreign_store_is_refused_and_results_csv_kept(
    tmp_path: Path, content: bytes, dry_run: bool
) -> None:
    data = write_tiny_dataset(tmp_path / "data", per_class=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "store.sqlite").write_bytes(content)
    (out / "results.csv").write_text("cell_id,status\nabc,done\n")
    args = [*tiny_grid_args(data, out), *(["--dry-run"] if dry_run else [])]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    store = out / "store.sqlite"
    expected = (
        f"error: {store} is empty (0 bytes), not a results store; restore it from a copy, or "
        "remove it to start the grid afresh (--out)"
        if not content
        else f"error: {store} is not a usable results store: file is not a database"
    )
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (2, expected)
    assert (out / "results.csv").read_text() == "cell_id,status\nabc,done\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "store.sqlite"]


@pytest.mark.slow
def test_a_skipped_unreadable_checkpoint_is_named_in_the_output_result_and_store(
    tmp_path: Path,
) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = [*tiny_grid_args(data, out, max_steps=2), "--keep-checkpoints"]
    args.remove("off")  # one cell: residual on
    with one_thread():
        assert CliRunner().invoke(app, args).exit_code == 0
        with ResultStore(out) as store:  # as if the driver died while the cell trained
            (row,) = store.cells()
            store.set_status(row.cell_id, "running")
        bad = out / "cells" / row.cell_id / "checkpoints" / "step-00000009.pt"
        bad.write_bytes(b"cut short by a full disk")
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if "checkpoint skipped" in line)
    assert warning.startswith(f"warning: {row.cell_id} checkpoint skipped: {bad}: does not load")
    skipped = warning.removeprefix(f"warning: {row.cell_id} checkpoint skipped: ")
    saved = json.loads((out / "cells" / row.cell_id / "result.json").read_text())
    assert saved["skipped_checkpoints"] == [skipped]
    assert saved["resumed_from_step"] == 2
    with ResultStore.open(out) as store:
        assert store.cell(row.cell_id).skipped_checkpoints == (skipped,)
