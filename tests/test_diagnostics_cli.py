"""The diagnostic commands: lesion, gradflow, compare-features (CliRunner, tiny inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resablate.grid.cell import Cell
from resablate.surgery import drop_residual
from resablate.weights import build_model, save_state_dict_file
from resablate_cli.app import app

runner = CliRunner()


def _text(result) -> str:
    """The output with rich's line wrapping undone (whitespace runs collapsed)."""
    return " ".join(result.output.split())


def _make_images(root: Path) -> Path:
    """A tiny CIFAKE-style dataset: 32×32 PNGs, 4 per class and split, two colours per class."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for label, name in enumerate(("FAKE", "REAL")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                noise = torch.randint(0, 60, (32, 32, 3), generator=generator)
                pixels = (noise + 150 * label).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _make_run(folder: Path, data: Path, *, residual: str) -> Path:
    """A finished run directory as run_cell writes it (cell.json + model.safetensors)."""
    cell = Cell.from_dict(dict(arch="resnet18", residual=residual, recipe="demo", data=str(data)))
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2)
    if residual == "off":
        drop_residual(model)
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps(cell.to_dict()))
    save_state_dict_file(model.state_dict(), folder / "model.safetensors")
    if residual == "off":
        # A run trained on another version of the dataset.
        environment = {"dataset_fingerprint": "0" * 64}
        (folder / "result.json").write_text(json.dumps({"environment": environment}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diag")
    data = _make_images(root / "data")
    return _make_run(root / "on", data, residual="on"), _make_run(
        root / "off", data, residual="off"
    )


def test_lesion_on_a_run_directory(runs: tuple[Path, Path], tmp_path: Path) -> None:
    figure = tmp_path / "lesion.png"
    result = runner.invoke(
        app, ["lesion", str(runs[0]), "--blocks", "layer1.0,layer4.1", "--out", str(figure)]
    )
    assert result.exit_code == 0, result.output
    assert "lesion study of resnet18 · weights none · seed 0: 8 images" in _text(result)
    assert "layer4.1" in _text(result)
    assert "layer2.0" not in _text(result)
    assert f"wrote {figure}" in _text(result)
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert "warning" not in result.stderr
    # Kept beside the run (the report shows it); --no-save leaves the run dir alone.
    saved = json.loads((runs[0] / "lesion.json").read_text())
    assert saved["label"] == "resnet18 · weights none · seed 0"
    assert [e["blocks"] for e in saved["singles"]] == [["layer1.0"], ["layer4.1"]]
    assert (runs[0] / "lesion.png").read_bytes()[:4] == b"\x89PNG"
    assert f"saved {runs[0] / 'lesion.json'} and lesion.png" in _text(result)
    (runs[0] / "lesion.json").unlink()
    again = runner.invoke(app, ["lesion", str(runs[0]), "--blocks", "layer1.0", "--no-save"])
    assert again.exit_code == 0, again.output
    assert not (runs[0] / "lesion.json").exists()


def test_lesion_json_with_random_draws(runs: tuple[Path, Path]) -> None:
    result = runner.invoke(
        app, ["lesion", str(runs[1]), "--k-random", "2", "--draws", "2", "--limit", "6", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_images"] == 6
    assert "warning: dataset" in result.stderr
    assert "differs from the one run" in " ".join(result.stderr.split())
    assert data["label"] == "resnet18 · residual off · weights none · seed 0"
    assert len(data["singles"]) == 8
    assert [len(e["blocks"]) for e in data["random"]] == [1, 1, 2, 2]


def test_lesion_errors_are_one_line(runs: tuple[Path, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["lesion", str(tmp_path)])
    assert result.exit_code == 2
    assert f"error: {tmp_path} is not a run directory: it has no cell.json" in _text(result)
    result = runner.invoke(app, ["lesion"])
    assert result.exit_code == 2
    assert "error: give either a run directory or an architecture, not both (--arch)" in _text(
        result
    )
    data = str(runs[0].parent / "data")
    result = runner.invoke(app, ["lesion", "--arch", "alexnet", "--data", data])
    assert result.exit_code == 2
    assert "alexnet has no residual connections" in _text(result)


def _make_grid(folder: Path, runs: tuple[Path, ...]) -> Path:
    """A grid directory (what ``resablate train`` writes) whose cells are copies of ``runs``."""
    import shutil

    from resablate.grid.runner import cell_run_dir
    from resablate.grid.store import ResultStore

    cells = [Cell.from_dict(json.loads((run / "cell.json").read_text())) for run in runs]
    dirs = {cell.cell_id: str(cell_run_dir(folder, cell.cell_id)) for cell in cells}
    with ResultStore(folder) as store:
        store.sync_cells(cells, run_dirs=dirs)
    for cell, run in zip(cells, runs, strict=True):
        shutil.copytree(run, dirs[cell.cell_id])
    return folder


def test_diagnostics_take_a_one_cell_grid_directory(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    on = _make_grid(tmp_path / "on", runs[:1])
    (cell,) = (on / "cells").iterdir()
    result = runner.invoke(app, ["lesion", str(on), "--blocks", "layer4.1"])
    assert result.exit_code == 0, result.output
    assert "lesion study of resnet18 · weights none · seed 0: 8 images" in _text(result)
    assert (cell / "lesion.json").is_file()  # kept in the cell's run directory
    result = runner.invoke(app, ["compare-features", str(on), str(on), "--images", "4"])
    assert result.exit_code == 0, result.output
    assert (cell / f"cka-{cell.name}.json").is_file()
    both = _make_grid(tmp_path / "both", runs)
    result = runner.invoke(app, ["lesion", str(both)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {both} is a grid directory of 2 cells, not one run; name one cell's run "
        f"directory, {both / 'cells'}/<cell id>\n"
    )


def test_compare_features(runs: tuple[Path, Path], tmp_path: Path) -> None:
    figure = tmp_path / "cka.png"
    result = runner.invoke(
        app,
        [
            "compare-features",
            str(runs[0]),
            str(runs[0]),
            "--images",
            "4",
            "--stages",
            "conv1,layer4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rows"] == ["conv1", "conv5_x"]
    assert data["notes"] == []
    assert data["n_images"] == 4
    assert data["matrix"][0][0] == pytest.approx(1.0, abs=1e-9)
    assert data["matrix"][1][1] == pytest.approx(1.0, abs=1e-9)
    result = runner.invoke(
        app, ["compare-features", str(runs[0]), str(runs[1]), "--out", str(figure)]
    )
    assert result.exit_code == 0, result.output
    assert "linear CKA on 8 images" in _text(result)
    assert "differs from the one run" in " ".join(result.stderr.split())
    assert "conv5_x" in _text(result)
    assert figure.read_bytes()[:4] == b"\x89PNG"
    # Kept in RUN_A, named after RUN_B's folder; the JSON rebuilds the result exactly.
    from resablate.diagnostics.cka import CKAResult

    saved = json.loads((runs[0] / "cka-off.json").read_text())
    assert saved["label_b"] == "resnet18 · residual off · weights none · seed 0"
    assert CKAResult.from_dict(saved).to_dict() == saved
    assert (runs[0] / "cka-off.png").read_bytes()[:4] == b"\x89PNG"
    assert f"saved {runs[0] / 'cka-off.json'} and cka-off.png" in _text(result)
    result = runner.invoke(app, ["compare-features", str(runs[0]), str(runs[1]), "--stages", "x"])
    assert result.exit_code == 2
    assert "has no stage or module 'x'" in _text(result)


def test_gradflow_table_and_figure(tmp_path: Path) -> None:
    figure = tmp_path / "gradflow.png"
    result = runner.invoke(
        app,
        [
            "gradflow",
            "--arch",
            "resnet18",
            "--no-residual",
            "--batch",
            "2",
            "--image-size",
            "32",
            "--steps",
            "1",
            "--out",
            str(figure),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "gradient norm per stage of resnet18: batch 2 × 32², BatchNorm train mode" in _text(
        result
    )
    for text in ("residual on", "residual off", "conv1", "conv5_x", "step 1"):
        assert text in _text(result)
    assert figure.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(
        app,
        [
            "gradflow",
            "--arch",
            "resnet18",
            "--batch",
            "2",
            "--image-size",
            "16",
            "--bn",
            "eval",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["label"] for r in data["results"]] == ["residual on"]
    assert data["results"][0]["bn_mode"] == "eval"
    result = runner.invoke(app, ["gradflow", "--arch", "resnet7"])
    assert result.exit_code == 2
    assert "unknown architecture 'resnet7'" in _text(result)
