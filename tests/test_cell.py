"""The cell value (canonical form, pinned ids, round trip) and run_cell: one cell end to end on
the demo data, its run directory and its result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_engine_devices import CPU_EXECUTION

import resablate.demo_weights as demo_weights
from resablate.errors import ConfigError, WeightsError
from resablate.grid.cell import Cell
from resablate.grid.job import CellPrepared, run_cell
from resablate.weights import build_model, save_state_dict_file, weights_sha256

# A handful of steps at 32×32: enough to exercise every stage of a cell, fast on two cores.
FAST = (("max_steps", 2), ("batch_size", 16), ("eval_batch_size", 160))


def _cell(**kw) -> Cell:
    return Cell.from_dict(dict(arch="resnet18", recipe="demo", overrides=FAST, data="demo", **kw))


# Results stores on users' disks are keyed by these ids: the canonical config (and so the id) of
# an existing cell must never change. Recorded before the cell's parts became typed values.
PINNED = [
    ({"arch": "resnet18"}, "70f191ce2194"),
    ({"arch": "resnet50", "residual": "off", "weights": "imagenet", "seed": 3}, "b98c199ec8df"),
    (
        {
            "arch": "resnet50",
            "residual": "off:conv4_x,conv5_x",
            "residual_alpha": 0.5,
            "weights": "DEMO",
            "freeze": "conv1-2",
            "bn": "train",
        },
        "3b6afeb6e0d1",
    ),
    (
        {
            "arch": "resnet34",
            "source": "timm",
            "residual": "on",
            "residual_alpha": 0.25,
            "weights": "/weights/r34.pt",
            "data": "/data/cifake",
            "overrides": {"image_size": 32, "epochs": 2, "lr": 0.01},
        },
        "9d222cc1d8ba",
    ),
    (
        {"arch": "alexnet", "freeze": "all", "seed": 7, "overrides": {"batch_size": 16}},
        "f8b2e19b94c4",
    ),
]


@pytest.mark.parametrize(("config", "cell_id"), PINNED)
def test_cell_ids_are_pinned(config: dict, cell_id: str) -> None:
    assert Cell.from_dict(config).cell_id == cell_id


def test_canonical_config_is_pinned() -> None:
    config, _ = PINNED[3]
    assert json.dumps(Cell.from_dict(config).to_dict(), sort_keys=True) == (
        '{"arch": "resnet34", "bn": "frozen", "data": "/data/cifake", "freeze": "none", '
        '"overrides": {"epochs": 2, "image_size": 32, "lr": 0.01}, "recipe": "cifake", '
        '"residual": "on", "residual_alpha": 1.0, "seed": 0, "source": "timm", '
        '"weights": "/weights/r34.pt"}'
    )


def test_unknown_cell_field_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown cell field"):
        Cell.from_dict({"arch": "resnet18", "depth": 18})


@pytest.mark.slow
def test_run_cell_writes_the_run_directory(tmp_path: Path) -> None:
    events: list[object] = []
    steps: list[int] = []

    def hook_for(run_dir: str) -> object:
        assert run_dir == str(tmp_path)
        return lambda info: steps.append(info.step)

    result = run_cell(_cell(), tmp_path, callback=events.append, step_hooks=[hook_for])
    assert result.status == "done" and result.steps == 2 and result.total_steps == 2
    assert steps == [1, 2]  # the per-step hooks reached the engine
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cell.json",
        "checkpoints",
        "history.jsonl",
        "model.safetensors",
        "predictions.csv",
        "recipe.json",
        "result.json",
        "train.json",
    ]
    assert json.loads((tmp_path / "cell.json").read_text()) == _cell().to_dict()
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["cell_id"] == _cell().cell_id and saved["status"] == "done"
    assert saved["metrics"]["n"] == 320  # the demo test split
    assert saved["environment"]["torch"] == torch.__version__
    assert saved["environment"]["weights_sha256"] is None
    assert len(saved["environment"]["dataset_fingerprint"]) == 64
    assert saved["environment"]["cpu_threads"] == torch.get_num_threads()  # rounding depends on it
    # What ran, as the grid's store and the report's model table read it.
    assert saved["environment"]["execution"] == CPU_EXECUTION
    # ResNet-18 with a 2-class head: 11,177,538 parameters; fvcore FLOPs at the recipe's 32×32.
    assert (result.params, result.active_params, result.trainable_params) == (11_177_538,) * 3
    assert result.flops == 37_114_368
    prepared = [e for e in events if isinstance(e, CellPrepared)]
    assert len(prepared) == 1 and prepared[0].scan.classes == ("FAKE", "REAL")
    assert prepared[0].surgery is None
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 321 and rows[1].split(",")[1].endswith(".png")


@pytest.mark.slow
def test_surgery_and_freezing_reach_the_model(tmp_path: Path) -> None:
    cell = _cell(residual="off:conv4_x,conv5_x", freeze="conv1-3", weights="none")
    result = run_cell(cell, tmp_path)
    assert result.status == "done"
    assert result.active_params < result.params  # idle projection shortcuts of layer3/4
    assert result.trainable_params < result.params
    assert result.frozen_check == "passed"
    assert json.loads((tmp_path / "result.json").read_text())["frozen_check"] == "passed"


@pytest.mark.slow
def test_weights_file_and_its_hash(tmp_path: Path) -> None:
    torch.manual_seed(3)
    weights = tmp_path / "init.safetensors"
    save_state_dict_file(build_model("resnet18", num_classes=2).state_dict(), weights)
    result = run_cell(_cell(weights=str(weights)), tmp_path / "run")
    assert result.environment.weights_sha256 == weights_sha256(weights)


def test_wrong_weights_file_is_a_resablate_error(tmp_path: Path) -> None:
    weights = tmp_path / "resnet34.safetensors"
    save_state_dict_file(build_model("resnet34", num_classes=2).state_dict(), weights)
    with pytest.raises(WeightsError):
        run_cell(_cell(weights=str(weights)), tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.slow
def test_demo_weights_built_once_then_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        demo_weights,
        "PRETRAIN_RECIPE",
        demo_weights.PRETRAIN_RECIPE.replace(max_steps=1, batch_size=8, eval_batch_size=240),
    )
    path = demo_weights.ensure_demo_weights("resnet18")
    assert path.name == "torchvision-resnet18.safetensors" and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert demo_weights.ensure_demo_weights("resnet18") == path
    assert path.stat().st_mtime_ns == mtime  # cached: not trained again
    result = run_cell(_cell(weights="demo"), tmp_path / "run")
    assert result.environment.weights_sha256 == weights_sha256(path)
