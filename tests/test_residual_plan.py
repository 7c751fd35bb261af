"""ResidualPlan: the one parser, label and surgery dispatch of the residual mini-language."""

from __future__ import annotations

import pytest
import torch

from resablate.errors import ConfigError
from resablate.grid.cell import Cell
from resablate.grid.spec import GridSpec
from resablate.residual_plan import ResidualPlan, split_plans
from resablate.surgery import residual_state
from resablate.weights import build_model


@pytest.mark.parametrize(
    ("text", "alpha", "canonical", "stages", "plan_alpha"),
    [
        ("on", 0.0, "on", (), 1.0),
        (" ON ", 0.5, "on", (), 1.0),
        ("off", 0.0, "off", None, 0.0),
        ("off", 1.0, "on", (), 1.0),
        ("OFF:layer4,conv4_x", 0.0, "off:layer3,layer4", ("layer3", "layer4"), 0.0),
        ("off:conv2_x,conv3_x,conv4_x,conv5_x", 0.0, "off", None, 0.0),
        ("off:conv5_x", 0.25, "off:layer4", ("layer4",), 0.25),
    ],
)
def test_parse_normalises(
    text: str, alpha: float, canonical: str, stages: tuple[str, ...] | None, plan_alpha: float
) -> None:
    plan = ResidualPlan.parse(text, alpha)
    assert (plan.text, plan.stages, plan.alpha) == (canonical, stages, plan_alpha)
    assert ResidualPlan.parse(plan.text, plan.alpha) == plan
    assert plan.to_dict() == {"residual": canonical, "residual_alpha": plan_alpha}


@pytest.mark.parametrize(
    ("text", "alpha", "message"),
    [
        (
            "partly",
            0.0,
            "residual plan 'partly' is not valid; use 'on', 'off' or 'off:STAGE[,STAGE...]' "
            "(e.g. 'off:conv4_x,conv5_x')",
        ),
        ("off:", 0.0, "residual plan 'off:' is not valid;"),
        (
            "off:conv1",
            0.0,
            "residual plan 'off:conv1': stage 'conv1' has no residual blocks; legal stages: "
            "layer1, layer2, layer3, layer4 (or conv2_x..conv5_x)",
        ),
        ("off:conv9_x", 0.0, "unknown stage 'conv9_x'; stages: conv1, conv2_x"),
        ("off", 1.5, "residual alpha 1.5 is outside [0, 1]"),
    ],
)
def test_bad_plans_name_the_legal_values(text: str, alpha: float, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ResidualPlan.parse(text, alpha)
    assert str(caught.value).startswith(message)


def test_labels() -> None:
    off = ResidualPlan.parse("off")
    scaled = ResidualPlan.parse("off:conv5_x", 0.5)
    on = ResidualPlan.parse("on")
    assert (on.label, off.label, scaled.label) == ("on", "off", "×0.5 layer4")
    assert ResidualPlan.parse("off", 0.5).label == "×0.5"
    assert (on.title, off.title, scaled.title) == (
        "residual on",
        "residual off",
        "residual off:layer4 (α = 0.5)",
    )
    assert (on.suffix, off.suffix, scaled.suffix) == (
        "",
        "residual off",
        "residual off:layer4 ×0.5",
    )
    assert ResidualPlan.off(["conv5_x", "conv4_x"]).text == "off:layer3,layer4"
    assert ResidualPlan.off([]).text == "off"


def test_split_plans_keeps_a_stage_list_whole() -> None:
    assert split_plans("on,off") == ["on", "off"]
    assert split_plans("off:conv4_x,conv5_x") == ["off:conv4_x,conv5_x"]
    assert split_plans("on,") == ["on"]


def test_apply_is_the_one_surgery_dispatch() -> None:
    model = build_model("resnet18", num_classes=2)
    assert ResidualPlan.parse("on").apply(model) is None
    assert all(s == {"alpha": 1.0, "lesioned": False} for s in residual_state(model).values())
    report = ResidualPlan.parse("off:conv5_x").apply(model)
    assert report is not None and report.operation == "drop"
    assert report.blocks_rewired == ("layer4.0", "layer4.1")
    scaled = build_model("resnet18", num_classes=2)
    report = ResidualPlan.parse("off", 0.5).apply(scaled)
    assert report is not None and report.operation == "scale" and len(report.blocks_rewired) == 8
    assert residual_state(scaled)["layer1.0"] == {"alpha": 0.5, "lesioned": False}
    assert torch.is_tensor(next(scaled.parameters()))


# Cell ids are the hash of the canonical config: they must never change (a rerun finds its work).
PINNED_CELL_IDS = [
    ({"arch": "resnet18"}, "70f191ce2194"),
    ({"arch": "resnet50", "residual": "off", "weights": "demo", "recipe": "demo"}, "58745b0dfc03"),
    (
        {
            "arch": "resnet50",
            "residual": "off:conv4_x,conv5_x",
            "residual_alpha": 0.5,
            "freeze": "conv1-2",
            "seed": 2,
        },
        "be5c352ddc48",
    ),
    ({"arch": "resnet18", "residual": "OFF:layer4,conv4_x"}, "1617468e5ce7"),
    ({"arch": "resnet18", "residual": "off:conv2_x,conv3_x,conv4_x,conv5_x"}, "86a71d9d198a"),
    ({"arch": "resnet18", "residual": "off", "residual_alpha": 1.0}, "70f191ce2194"),
    ({"arch": "vgg16", "bn": "train", "overrides": (("max_steps", 3),)}, "cfe8f1e5ac4b"),
]


@pytest.mark.parametrize(("config", "cell_id"), PINNED_CELL_IDS)
def test_cell_ids_are_pinned(config: dict, cell_id: str) -> None:
    assert Cell.from_dict(config).cell_id == cell_id


def test_demo_grid_cell_ids_are_pinned() -> None:
    assert [c.cell_id for c in GridSpec(depths=(18, 50), data="demo").cells()] == [
        "0f22908d3e9d",
        "40661bb91317",
        "3802032d3e08",
        "e1d1ac6f98f4",
        "724218bda73d",
        "3d9d24838ab8",
        "58745b0dfc03",
        "4765344ac05d",
    ]
