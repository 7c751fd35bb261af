"""RunDir: the one owner of a run directory's file names, writers, readers and model rebuild."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import resablate
from resablate.errors import ConfigError
from resablate.grid.cell import Cell
from resablate.recipes import get_recipe
from resablate.run_dir import (
    CELL_FILE,
    CKA_PREFIX,
    GRADFLOW_FILE,
    HISTORY_FILE,
    LESION_FIGURE,
    LESION_FILE,
    PREDICTIONS_FILE,
    RECIPE_FILE,
    RESULT_FILE,
    TRAIN_FILE,
    WEIGHTS_FILE,
    RunDir,
)
from resablate.surgery import residual_state
from resablate.trained import rebuild_model
from resablate.weights import build_model

RUN_FILES = (
    CELL_FILE,
    RECIPE_FILE,
    HISTORY_FILE,
    PREDICTIONS_FILE,
    WEIGHTS_FILE,
    TRAIN_FILE,
    RESULT_FILE,
    GRADFLOW_FILE,
    LESION_FILE,
    LESION_FIGURE,
)


def test_each_run_file_name_is_spelled_in_one_module() -> None:
    package = Path(resablate.__file__).parent
    cli = package.parent / "cli"
    sources = [*package.rglob("*.py"), *cli.rglob("*.py")]
    for name in (*RUN_FILES, CKA_PREFIX):
        spelled = sorted(
            str(p.relative_to(package.parent))
            for p in sources
            if re.search(rf"[\"']{re.escape(name)}", p.read_text())
        )
        # Same names, other folders: the Hugging Face hub's file, the report's figure folder.
        elsewhere = {
            WEIGHTS_FILE: ["resablate/weights.py"],
            LESION_FIGURE: ["resablate/report/figure_data.py"],
            CKA_PREFIX: ["resablate/report/figure_data.py"],
        }
        assert spelled == sorted(["resablate/run_dir.py", *elsewhere.get(name, [])]), name


def test_writers_and_readers_round_trip(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    cell = Cell.from_dict(
        dict(arch="resnet18", residual="off:conv5_x", recipe="demo", overrides=(("lr", 0.5),))
    )
    run.write_cell(cell.to_dict())
    assert Cell.from_dict(run.read_cell()) == cell
    assert run.read_recipe() == get_recipe("demo", lr=0.5)  # no recipe.json: from the cell
    run.write_recipe(get_recipe("cifake"))
    assert run.read_recipe().name == "cifake"  # the saved recipe wins
    run.write_history([{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}])
    assert run.read_history() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    run.write_predictions([0, 1], [1, 1], [0.75, 0.1234567], ["a.png", "b.png"])
    assert run.predictions_file.read_text().splitlines() == [
        "index,path,label,pred,prob_positive",
        "0,a.png,0,1,0.75",
        "1,b.png,1,1,0.123457",
    ]
    assert run.read_predictions()[1] == {
        "index": 1,
        "path": "b.png",
        "label": 1,
        "pred": 1,
        "prob": 0.123457,
    }
    assert run.read_result() is None
    run.write_result({"status": "done"})
    assert run.read_result() == {"status": "done"}
    run.write_lesion({"by_k": []})
    assert run.read_lesion() == {"by_k": []}
    target = run.write_cka(tmp_path / "other", {"rows": ["conv1"]})
    assert target.name == "cka-other.json"
    assert run.read_cka() == [{"rows": ["conv1"]}]
    assert RunDir(tmp_path / "none").read_history() == []
    assert RunDir(tmp_path / "none").read_cka() == []


def test_rebuild_model_has_the_weights_and_the_ablation(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    cell = Cell.from_dict(dict(arch="resnet18", residual="off:conv5_x", residual_alpha=0.5))
    run.write_cell(cell.to_dict())
    with pytest.raises(ConfigError, match=f"has no {WEIGHTS_FILE}: it has not finished"):
        rebuild_model(run)
    torch.manual_seed(0)
    trained = build_model("resnet18", num_classes=3)
    run.write_weights(trained)
    model = rebuild_model(run)
    assert not model.training and model.fc.out_features == 3
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    state = residual_state(model)
    assert state["layer4.0"]["alpha"] == 0.5 and state["layer3.1"]["alpha"] == 1.0


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"is not a run directory: it has no {CELL_FILE}"):
        rebuild_model(RunDir(tmp_path))
    (tmp_path / CELL_FILE).write_text("{oops")
    with pytest.raises(ConfigError, match="is not a valid cell"):
        RunDir(tmp_path).read_cell()
