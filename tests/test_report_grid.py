"""A report from a tiny grid that really trained: every figure, including feature maps rebuilt
from the cells' run directories."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report_figures import png_size

from resablate.report import figures as F
from resablate.report.build import build_report
from resablate.report.figure_data import FEATURE_STAGES, cell_recipe, stage_activations
from resablate.report.output import write_report
from resablate.run_dir import RunDir
from resablate.trained import rebuild_model
from resablate.weights import load_state_dict_file

pytestmark = pytest.mark.slow


def _tiny_data(root: Path) -> Path:
    """CIFAKE-style 32×32 PNGs: 4 train and 2 test images per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for name, base in (("FAKE", 60), ("REAL", 180)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(base, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18, residual on/off, one seed, one optimiser step each (shared by the tests)."""
    from resablate.grid.runner import run_grid
    from resablate.grid.spec import GridSpec

    root = tmp_path_factory.mktemp("tiny-grid")
    spec = GridSpec(
        depths=(18,),
        residual=("on", "off"),
        weights=("none",),
        data=str(_tiny_data(root / "data")),
        recipe="demo",
        overrides=(("max_steps", 1), ("batch_size", 8), ("epochs", 1)),
    )
    summary = run_grid(spec, root / "grid", device="cpu")
    assert summary.counts["done"] == 2, summary.counts
    return root / "grid"


def test_every_figure_from_a_trained_grid(tiny_grid: Path, tmp_path: Path) -> None:
    report = build_report(tiny_grid)
    written = write_report(report, "md", tmp_path)
    names = sorted(re.sub(r"-[0-9a-f]{12}|-\d+", "", p.name) for p in written.files[1:])
    assert names == [
        "confusion.png",
        "confusion.png",
        "curves.png",
        "curves.png",
        "features.png",
        "lr.png",
        "misclassified.png",
        "misclassified.png",
    ]
    sizes = {
        "confusion": F.CONFUSION_SIZE,
        "curves": F.CURVES_SIZE,
        "features": F.FEATURES_SIZE,
        "lr": F.LR_SIZE,
        "misclassified": F.GALLERY_SIZE,
    }
    for path in written.files[1:]:
        kind = path.name.split("-")[0]
        width, height = sizes[kind]
        assert png_size(path) == (round(width * F.DPI), round(height * F.DPI)), path.name
    text = written.path.read_text()
    assert "## Feature maps" in text and "## Learning-rate schedule" in text


def test_rebuilt_model_has_the_cells_residual_plan(tiny_grid: Path) -> None:
    import torch

    from resablate.surgery import residual_state

    report = build_report(tiny_grid)
    on, off = sorted(report.cells, key=lambda r: r.cell.residual.text != "on")
    assert (on.cell.residual.text, off.cell.residual.text) == ("on", "off")
    model_on = rebuild_model(RunDir(str(on.run_dir)))
    model_off = rebuild_model(RunDir(str(off.run_dir)))
    assert not model_on.training and model_on.fc.out_features == 2
    alphas_off = {b["alpha"] for b in residual_state(model_off).values()}
    assert alphas_off == {0.0}
    assert {b["alpha"] for b in residual_state(model_on).values()} == {1.0}
    # The rebuilt model holds exactly the weights the cell saved.
    saved = load_state_dict_file(RunDir(str(on.run_dir)).weights_file)
    assert all(torch.equal(v, saved[k]) for k, v in model_on.state_dict().items())
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    maps = stage_activations(model_off, image, cell_recipe(off))
    assert tuple(maps) == FEATURE_STAGES
    assert maps["conv1"].shape == (64, 8, 8) and maps["conv3_x"].shape == (128, 4, 4)
