"""Model names: registered, any torchvision/timm model, with a source prefix, user factories."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from resablate.counting import count
from resablate.errors import ConfigError
from resablate.families import get_family
from resablate.model_spec import parse_model


def test_registered_names_resolve_to_their_family_with_or_without_a_prefix() -> None:
    assert parse_model("resnet50").family is get_family("resnet50")
    timm = parse_model(" TIMM:ResNet50 ")
    assert (timm.arch, timm.source, timm.family) == (
        "resnet50",
        "timm",
        get_family("resnet50", "timm"),
    )
    assert parse_model("resnet50", "timm").family is timm.family
    assert parse_model("torchvision:resnet50", "timm").family is get_family("resnet50")


def test_library_models_beyond_the_registry() -> None:
    vit = parse_model("vit_b_32")
    assert (vit.arch, vit.source, vit.family) == ("vit_b_32", "torchvision", None)
    assert parse_model("vit_b_16").family is get_family("vit_b_16")
    convnext = parse_model("timm:convnext_small")
    assert (convnext.arch, convnext.source, convnext.family) == ("convnext_small", "timm", None)
    model = convnext.build_on_meta()
    assert next(model.parameters()).device.type == "meta"
    assert count(model).params == 50_223_688


def test_builders_that_compute_while_building_fall_back_to_the_cpu() -> None:
    # torchvision's RegNet derives its widths from tensors, which the meta device cannot give
    model = parse_model("torchvision:regnet_x_400mf").build_on_meta()
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vit_b_1", "unknown architecture 'vit_b_1'"),
        ("vit_b_1", "(nor a torchvision model; close torchvision models: vit_b_16, vit_l_16"),
        ("timm:convnext_tinyy", "nor a timm model; close timm models: convnext_tiny"),
        ("torchvision:nothing_like_it", "(nor a torchvision model)"),
    ],
)
def test_unknown_names_say_what_is_close(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_model(text)
    assert message in str(info.value)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "usernets_for_spec.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(3, 2)

                def forward(self, x):
                    return self.fc(x.mean((2, 3)))

                @classmethod
                def build(cls):
                    return cls()

            def make():
                return Net()

            def not_a_model():
                return 3

            def needs_width(width):
                return nn.Linear(width, 2)

            SIZE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "usernets_for_spec"


def test_user_factories(user_module: str) -> None:
    spec = parse_model(f"{user_module}:make", "timm")
    assert (spec.arch, spec.source, spec.family) == (f"{user_module}:make", "factory", None)
    counts = count(spec.build_on_meta(), (3, 8, 8))
    assert (counts.params, counts.flops) == (8, 6)
    assert isinstance(parse_model(f"{user_module}:Net.build").build(), nn.Module)


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("missing", "model factory usernets_for_spec:missing: usernets_for_spec has no attribute"),
        ("SIZE", "model factory usernets_for_spec:SIZE is a int, not callable"),
        ("", "model factory 'usernets_for_spec:' must read package.module:callable"),
    ],
)
def test_bad_factories_are_config_errors(user_module: str, attribute: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_model(f"{user_module}:{attribute}")


def test_factories_that_do_not_import_or_return_no_model(user_module: str) -> None:
    with pytest.raises(
        ConfigError, match=re.escape("cannot import module 'no_such_pkg.nets' of model factory")
    ):
        parse_model("no_such_pkg.nets:make")
    spec = parse_model(f"{user_module}:not_a_model")
    with pytest.raises(ConfigError, match=re.escape("returned int, not an nn.Module")):
        spec.build_on_meta()
    failing = parse_model(f"{user_module}:needs_width")
    with pytest.raises(ConfigError) as info:
        failing.build_on_meta()
    assert str(info.value) == (
        f"model factory {user_module}:needs_width failed: TypeError: needs_width() missing 1 "
        "required positional argument: 'width'"
    )
    assert isinstance(info.value.__cause__, TypeError)
    assert torch.get_default_device().type == "cpu"
