"""Any model everywhere: timm and Hugging Face models outside the registry and a user's factory
in ``grid``, ``train`` and the diagnostics (tiny models the tests build, generated data)."""

from __future__ import annotations

import importlib
import json
import textwrap
from pathlib import Path

import pytest
import torch
from grid_helpers import one_thread, write_tiny_dataset
from typer.testing import CliRunner

from resablate.errors import ConfigError
from resablate.freezing import freeze
from resablate.grid.cell import Cell
from resablate.grid.packs import packable
from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore
from resablate.model_spec import parse_model
from resablate.residual_plan import ResidualPlan
from resablate.weights import build_model
from resablate_cli.app import app

runner = CliRunner()

# A CIFAR ResNet (He et al. 2016, section 4.2: three stages of 16/32/64 filters, here 8/16/32 and
# one block each) with its own block class, and a plain CNN without skips.
CIFAR_NETS = """
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.layer3 = Block(16, 32, 2)
        self.linear = nn.Linear(32, num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def cifar_resnet():
    return CifarResNet()


def plain_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )
"""
MODULE = "usernets_models"
FACTORY = f"{MODULE}:cifar_resnet"
PLAIN = f"{MODULE}:plain_cnn"
TIMM = "timm:test_resnet"  # timm's own tiny test ResNet, not a registered architecture


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the user's module, a tiny HF ResNet saved with
    save_pretrained and a tiny dataset; nothing on PYTHONPATH."""
    from transformers import ResNetConfig

    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(CIFAR_NETS))
    ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
    ).save_pretrained(tmp_path / "tiny-hf")
    write_tiny_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, MODULE, raising=False)
    importlib.invalidate_caches()
    return tmp_path


def _grid(out: Path, *archs: str) -> list[str]:
    """A grid of ``archs`` × residual on/off, random init, 2 steps at 16 px on the CPU (flags
    given later win: ``--weights``)."""
    return [
        "grid",
        *(item for arch in archs for item in ("--arch", arch)),
        *("--residual", "on", "off", "--data", "data", "--recipe", "demo"),
        *("--max-steps", "2", "--image-size", "16", "--batch-size", "4", "--device", "cpu"),
        *("--out", str(out)),
    ]


def test_cells_of_any_model_carry_its_canonical_name(workdir: Path) -> None:
    spec = GridSpec(
        depths=(18,),
        archs=(FACTORY, TIMM, "hf:tiny-hf", "hf:microsoft/resnet-50", PLAIN),
        weights=("none",),
    )
    models = [(c.arch, c.source, c.residual.text) for c in spec.cells()]
    hf_dir = str(workdir / "tiny-hf")
    assert models == [
        ("resnet18", "torchvision", "on"),
        ("resnet18", "torchvision", "off"),
        (FACTORY, "factory", "on"),
        (FACTORY, "factory", "off"),
        ("test_resnet", "timm", "on"),
        ("test_resnet", "timm", "off"),
        (hf_dir, "hf", "on"),
        (hf_dir, "hf", "off"),
        ("resnet50", "hf", "on"),  # the id of a registered architecture is that architecture
        ("resnet50", "hf", "off"),
        (PLAIN, "factory", "on"),  # no skips: residual on only
    ]
    assert spec.notes == (
        f"the residual axis skips {PLAIN} (no residual blocks): trained as built",
    )
    baselines = GridSpec(depths=(), baselines=(TIMM, "vgg16"), source="timm", weights=("none",))
    assert [(c.arch, c.source, c.residual.text) for c in baselines.cells()] == [
        ("test_resnet", "timm", "on"),  # any model; a baseline skips the residual axis
        ("vgg16", "torchvision", "on"),  # the registered baseline, as before
    ]
    # Ids hash the canonical name (the families' ids are pinned in test_cell.py).
    demo = {
        c.label: c.cell_id
        for c in GridSpec(depths=(), archs=(FACTORY, TIMM), weights=("none",)).cells()
    }
    assert demo == {
        f"{FACTORY} (factory) · weights none · seed 0": "6610a3aea618",
        f"{FACTORY} (factory) · residual off · weights none · seed 0": "6650c1897773",
        "test_resnet (timm) · weights none · seed 0": "c2836503e85f",
        "test_resnet (timm) · residual off · weights none · seed 0": "f8823c23eef7",
    }
    assert (
        Cell(arch="resnet18", recipe="demo").cell_id
        == Cell.from_dict(Cell(arch="resnet18", recipe="demo").to_dict()).cell_id
    )


def test_a_grid_trains_any_model(workdir: Path) -> None:
    out = workdir / "out"
    with one_thread():
        result = runner.invoke(
            app,
            [*_grid(out, FACTORY, TIMM, "hf:tiny-hf", PLAIN), "--weights", "none", "--pack", "4"],
        )
    assert result.exit_code == 0, result.output
    assert f"note: the residual axis skips {PLAIN} (no residual blocks)" in result.stderr
    expected = GridSpec(
        depths=(),
        archs=(FACTORY, TIMM, str(workdir / "tiny-hf"), PLAIN),
        source="hf",  # a directory without the hf: prefix reads with source hf
        residual=("on", "off"),
        weights=("none",),
        data="data",
        recipe="demo",
        overrides=(("max_steps", 2), ("image_size", 16), ("batch_size", 4)),
    ).cells()
    with ResultStore.open(out) as store:
        rows = store.cells()
    assert [row.cell_id for row in rows] == [c.cell_id for c in expected]
    assert [(row.cell.arch, row.cell.source, row.cell.residual.text) for row in rows] == [
        (FACTORY, "factory", "on"),
        (FACTORY, "factory", "off"),
        ("test_resnet", "timm", "on"),
        ("test_resnet", "timm", "off"),
        (str(workdir / "tiny-hf"), "hf", "on"),
        (str(workdir / "tiny-hf"), "hf", "off"),
        (PLAIN, "factory", "on"),
    ]
    assert [(row.status, row.steps, row.depth) for row in rows] == [("done", 2, None)] * 7
    # None of them packs (--pack 4): each trained alone.
    assert [row.environment.get("pack") for row in rows] == [None] * 7
    surgered = json.loads((Path(rows[1].run_dir) / "result.json").read_text())
    assert surgered["active_params"] < surgered["params"]  # the projection shortcuts idle


def test_train_and_the_diagnostics_take_any_model(workdir: Path) -> None:
    out = workdir / "one"
    args = ["train", "--arch", FACTORY, "--data", "data", "--recipe", "demo", "--max-steps", "2"]
    args += ["--image-size", "16", "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    with one_thread():
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["lesion", str(out), "--no-save"])
        assert result.exit_code == 0, result.output
        assert f"lesion study of {FACTORY} (factory) · weights none · seed 0" in " ".join(
            result.output.split()
        )
        result = runner.invoke(
            app, ["compare-features", str(out), str(out), "--images", "4", "--no-save", "--json"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["rows"] == ["conv1", "bn1", "layer1", "layer2", "layer3"]
        for arch in (TIMM, "hf:tiny-hf", FACTORY):
            result = runner.invoke(
                app,
                ["gradflow", "--arch", arch, "--batch", "2", "--image-size", "16", "--json"],
            )
            assert result.exit_code == 0, (arch, result.output)
        result = runner.invoke(
            app, ["lesion", "--arch", TIMM, "--data", "data", "--limit", "4", "--json"]
        )
        assert result.exit_code == 0, result.output


def test_models_outside_the_registry_build_alone_and_say_what_they_lack(workdir: Path) -> None:
    model = build_model(FACTORY, num_classes=2)
    assert model.linear.out_features == 2  # the head found: the last Linear
    assert build_model(TIMM, num_classes=3).get_classifier().out_features == 3
    hf = build_model("hf:tiny-hf", num_classes=2)
    assert hf(torch.zeros(2, 3, 16, 16)).shape == (2, 2)
    assert not packable(Cell(arch=FACTORY, source="factory"))
    assert not packable(Cell(arch="test_resnet", source="timm"))
    assert freeze(model, "none").frozen_stages == ()
    with pytest.raises(ConfigError) as info:
        freeze(model, "conv1-2")
    assert str(info.value) == (
        "CifarResNet has no named stages (neither a registered architecture nor ResNet-like): "
        "pass stages={name: module paths, in forward order}, e.g. "
        "stages={'stem': ('conv1', 'bn1'), 'body': ('layer1',)}"
    )
    report = freeze(model, "conv1-2", stages={"stem": ("conv1", "bn1"), "body": ("layer1",)})
    assert report.frozen_stages == ("stem", "body")
    assert ResidualPlan.parse("off").apply(model) is not None


def test_bad_model_names_are_one_line(workdir: Path) -> None:
    (workdir / "empty").mkdir()
    for arch, message in (
        ("hf:empty", f"Hugging Face model directory {workdir / 'empty'} has no config.json"),
        ("hf:not a model", "unknown architecture 'not a model' for source hf"),
        (f"{MODULE}:nothing", f"model factory {MODULE}:nothing: {MODULE} has no attribute"),
    ):
        result = runner.invoke(app, _grid(workdir / "bad", arch))
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1
        assert message in result.stderr
        assert result.stderr.rstrip().endswith("(--arch)")
    inet = workdir / "inet"
    args = [*_grid(inet, FACTORY), "--weights", "imagenet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output  # every cell skipped
    with ResultStore.open(workdir / "inet") as store:
        rows = store.cells()
    assert {row.status for row in rows} == {"skipped"}
    assert rows[0].reason == (
        f"ImageNet weights are declared for the registered architectures only; for {FACTORY} "
        "pass a weights file (a state dict of the model)"
    )


def test_the_working_directory_is_searched_for_factories(workdir: Path) -> None:
    assert parse_model(FACTORY).build().linear.in_features == 32
