"""GridSpec: defaults, expansion order, demo substitution, alpha axis, baselines, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from resablate.errors import ConfigError, DataNotFoundError
from resablate.grid.cell import Cell
from resablate.grid.results import final_rows
from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore
from resablate.grid.table import results_table


def _axes(cells: list[Cell]) -> list[tuple[str, str, float, str]]:
    return [(c.arch, c.residual.text, c.residual.alpha, c.weights.text) for c in cells]


def test_defaults_are_the_cifake_study_on_demo_data() -> None:
    spec = GridSpec()
    cells = spec.cells()
    assert len(cells) == 16
    assert _axes(cells)[:4] == [
        ("resnet18", "on", 1.0, "demo"),
        ("resnet18", "on", 1.0, "none"),
        ("resnet18", "off", 0.0, "demo"),
        ("resnet18", "off", 0.0, "none"),
    ]
    assert [c.arch for c in cells[::4]] == ["resnet18", "resnet50", "resnet101", "resnet152"]
    assert {c.recipe for c in cells} == {"demo"}
    assert spec.notes == (
        "demo data: the pretrained axis uses the demo weights instead of ImageNet's, so the "
        "whole grid runs offline",
    )
    assert [c.cell_id for c in GridSpec().cells()] == [c.cell_id for c in cells]


def test_real_data_keeps_imagenet_and_uses_the_cifake_recipe(tmp_path: Path) -> None:
    spec = GridSpec(depths=(50,), data=str(tmp_path))
    assert [c.weights.text for c in spec.cells()] == ["imagenet", "none", "imagenet", "none"]
    assert spec.recipe == "cifake" and spec.notes == ()
    assert spec.cells()[0].data == str(tmp_path.resolve())


def test_alpha_axis_replaces_off_and_stage_sets() -> None:
    spec = GridSpec(
        depths=(18,),
        residual=("on", "off:conv5_x"),
        residual_alpha=(1, 0.5, 0),
        weights=("none",),
        seeds=(0, 1),
    )
    assert [(c.residual.text, c.residual.alpha, c.seed) for c in spec.cells()] == [
        ("on", 1.0, 0),
        ("on", 1.0, 1),
        ("off:layer4", 0.5, 0),
        ("off:layer4", 0.5, 1),
        ("off:layer4", 0.0, 0),
        ("off:layer4", 0.0, 1),
    ]


def test_baselines_skip_the_residual_axis() -> None:
    spec = GridSpec(depths=(18,), baselines=("vgg16",), weights=("none",), freeze=("none", "conv1"))
    assert [(c.arch, c.residual.text, c.freeze) for c in spec.cells()] == [
        ("resnet18", "on", "none"),
        ("resnet18", "on", "conv1"),
        ("resnet18", "off", "none"),
        ("resnet18", "off", "conv1"),
        ("vgg16", "on", "none"),
        ("vgg16", "on", "conv1"),
    ]


def test_architectures_named_in_full_follow_the_depths() -> None:
    spec = GridSpec(depths=(18,), archs=("resnet50", "vgg16"), weights=("none",))
    assert [(c.arch, c.residual.text) for c in spec.cells()] == [
        ("resnet18", "on"),
        ("resnet18", "off"),
        ("resnet50", "on"),
        ("resnet50", "off"),
        ("vgg16", "on"),
    ]
    assert spec.notes == ("the residual axis skips vgg16 (no residual blocks): trained as built",)
    one = GridSpec(depths=(), archs=("resnet18",), residual=("on",), weights=("none",))
    assert [c.arch for c in one.cells()] == ["resnet18"] and one.notes == ()
    assert GridSpec.from_dict(one.to_dict()) == one


def test_round_trip_and_unknown_keys() -> None:
    spec = GridSpec(depths=(18, 50), overrides=(("max_steps", 3), ("image_size", 32)))
    assert GridSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["overrides"] == {"image_size": 32, "max_steps": 3}
    legal = r"keys: archs, baselines, bn, data, depths, family, "
    with pytest.raises(ConfigError, match=r"^unknown grid spec key\(s\): depth; " + legal):
        GridSpec.from_dict({"depth": [18]})


@pytest.mark.parametrize(
    ("kwargs", "message", "field"),
    [
        (
            {"depths": (77,)},
            "depth 77: unknown architecture 'resnet77'; ResNet depths: 18, 34, 50, 101, 152",
            "depths",
        ),
        (
            {"baselines": ("vgg99",)},
            "baseline vgg99: unknown architecture 'vgg99'",
            "baselines",
        ),
        (
            {"freeze": ("conv1-9",)},
            "unknown freeze plan 'conv1-9'; plans: none, conv1, conv1-2, conv1-3, conv1-4, all",
            "freeze",
        ),
        (
            {"weights": ("/no/such/weights.pth",)},
            "weights file /no/such/weights.pth does not exist; use none, "
            "imagenet, demo or a path to a .pth/.pt/.safetensors file",
            "weights",
        ),
        (
            {"residual": ("off:conv9_x",)},
            "unknown stage 'conv9_x'; stages: conv1, conv2_x",
            "residual",
        ),
        ({"archs": ("resnet77",), "depths": ()}, "unknown architecture 'resnet77'", "archs"),
        ({"seeds": (-1,)}, "seed -1 is not a non-negative integer", "seeds"),
        (
            {"depths": ()},
            "the grid names no architecture; give depths or architectures",
            None,
        ),
        ({"residual_alpha": (2.0,)}, "residual alpha 2 is outside [0, 1]", "residual_alpha"),
        ({"seeds": ()}, "grid axis seeds is empty; give at least one value", None),
        (
            {"overrides": (("epoch", 1),)},
            "unknown recipe field(s): epoch; known fields: name",
            None,
        ),
        ({"recipe": "nope"}, "unknown recipe 'nope'; known recipes: cifake, food, demo", None),
    ],
)
def test_invalid_axis_values_fail_in_one_line(
    kwargs: dict, message: str, field: str | None
) -> None:
    with pytest.raises(ConfigError) as info:
        GridSpec(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "--" not in str(info.value)  # the library names fields; the CLI words its flags
    assert info.value.field == field


def test_missing_dataset_folder() -> None:
    with pytest.raises(DataNotFoundError, match=r"^dataset folder /no/data does not exist"):
        GridSpec(data="/no/data")


def test_results_table_has_the_papers_shape(tmp_path: Path) -> None:
    spec = GridSpec(depths=(18, 50), weights=("none", "imagenet"), seeds=(0, 1))
    cells = spec.cells()
    with ResultStore(tmp_path) as store:
        store.sync_cells(cells, run_dirs={c.cell_id: str(tmp_path) for c in cells})
        for index, cell in enumerate(cells):
            if cell.arch == "resnet50" and cell.residual.text == "off":
                store.record_result(cell.cell_id, "diverged", reason="nan")
                continue
            store.record_result(
                cell.cell_id,
                "done",
                metrics={"f1": index / 100},
                values={"params": 11_689_512 if cell.arch == "resnet18" else 25_557_032},
            )
        table = results_table(final_rows(store.cells()), "f1")
    assert [c.label for c in table.columns] == [
        "residual on · weights none",
        "residual on · weights demo",
        "residual off · weights none",
        "residual off · weights demo",
    ]
    assert table.records() == [
        {
            "label": "ResNet-18",
            "arch": "resnet18",
            "depth": 18,
            "freeze": "none",
            "params": 11_689_512,
            "flops": None,
            "residual on · weights none": pytest.approx(0.005),
            "residual on · weights demo": pytest.approx(0.025),
            "residual off · weights none": pytest.approx(0.045),
            "residual off · weights demo": pytest.approx(0.065),
        },
        {
            "label": "ResNet-50",
            "arch": "resnet50",
            "depth": 50,
            "freeze": "none",
            "params": 25_557_032,
            "flops": None,
            "residual on · weights none": pytest.approx(0.085),
            "residual on · weights demo": pytest.approx(0.105),
            "residual off · weights none": None,
            "residual off · weights demo": None,
        },
    ]
    assert table.rows[1].entries[2].status == "diverged"
    with pytest.raises(ConfigError, match="unknown metric 'auc'; metrics: accuracy, precision"):
        results_table([], "auc")


def test_specs_written_before_the_rename_are_read() -> None:
    old = GridSpec(depths=(18,), weights=("none",)).to_dict()
    old["arch"], old["pretrained"] = old.pop("family"), old.pop("weights")
    assert GridSpec.from_dict(old) == GridSpec(depths=(18,), weights=("none",))
