"""Linear CKA: its defining properties, a hand computation, and stage-by-stage comparison."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet

from resablate.diagnostics.cka import CKAResult, compare_features, linear_cka, plot_cka
from resablate.errors import ConfigError

# Hand computation (Kornblith et al. 2019, eq. 5). Column means: X (1, 1, 1), Y (1, 1), so
#   Xc = [[0, 1, -1], [-1, 0, 0], [1, -1, 0], [0, 0, 1]],  Yc = [[0, -1], [-1, 1], [0, 0], [1, 0]]
#   Xcᵀ Xc = [[2, -1, 0], [-1, 2, -1], [0, -1, 2]]          ||·||²_F = 16
#   Ycᵀ Yc = [[2, -1], [-1, 2]]                             ||·||²_F = 10
#   Ycᵀ Xc = [[1, 0, 1], [-1, -1, 1]]                       ||·||²_F = 5
#   CKA = 5 / (sqrt(16) · sqrt(10)) = sqrt(10) / 8
X_HAND = [[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 2.0]]
Y_HAND = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 1.0]]


def test_hand_computed_value() -> None:
    value = linear_cka(torch.tensor(X_HAND), torch.tensor(Y_HAND))
    assert value == pytest.approx(math.sqrt(10) / 8, abs=1e-12)
    assert linear_cka(torch.tensor(Y_HAND), torch.tensor(X_HAND)) == pytest.approx(value, abs=1e-15)


def test_cka_with_itself_is_one() -> None:
    x = torch.randn(16, 3, 5, 5)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_rotation_and_isotropic_scaling_leave_cka_at_one() -> None:
    x = torch.randn(20, 12, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    assert not torch.allclose(x @ rotation, x)
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(20, 4, dtype=torch.float64)
    assert linear_cka(3.0 * x, y) == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert linear_cka(x, y) < 0.9


def test_constant_representation_is_nan_and_bad_shapes_are_errors() -> None:
    assert math.isnan(linear_cka(torch.ones(5, 3), torch.randn(5, 3)))
    with pytest.raises(ConfigError, match="same inputs on both sides: 5 vs 4"):
        linear_cka(torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ConfigError, match="at least 2 inputs"):
        linear_cka(torch.randn(1, 3), torch.randn(1, 3))


def _tiny_resnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2)


def test_compare_features_of_a_model_with_itself(tmp_path) -> None:
    model = _tiny_resnet(0).train()
    other = _tiny_resnet(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(8, 3, 16, 16)
    result = compare_features(model, other, images, labels=("seed 0", "seed 1"))
    same = compare_features(model, model, images)
    assert result.rows == ("conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x")
    assert result.columns == result.rows
    assert result.n_images == 8
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in same.diagonal().values())
    assert result.value("conv1", "conv1") < 1.0
    # Eval mode, no gradients: the model's flags and every buffer come back untouched.
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    data = result.to_dict()
    assert data["label_a"] == "seed 0"
    assert data["matrix"][0][0] == result.value("conv1", "conv1")
    path = plot_cka(result, tmp_path / "cka.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_features_accepts_code_names_and_module_paths() -> None:
    model = _tiny_resnet(0)
    images = torch.randn(4, 3, 16, 16)
    result = compare_features(model, model, images, stages=["layer3", "layer3.0"])
    assert result.rows == ("conv4_x", "layer3.0")
    # layer3.0 is the only block of layer3: its output is the stage's output.
    assert result.value("conv4_x", "layer3.0") == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ConfigError, match="no stage or module 'layer9'"):
        compare_features(model, model, images, stages=["layer9"])
    with pytest.raises(ConfigError, match="ran 2 times"):
        compare_features(model, model, images, stages=["layer1.0.relu"])


def test_rich_rendering_shows_values() -> None:
    from rich.console import Console

    result = CKAResult(
        rows=("conv1",), columns=("conv1", "conv2_x"), matrix=((1.0, math.nan),), n_images=4
    )
    console = Console(width=100, record=True)
    console.print(result)
    text = console.export_text()
    assert "linear CKA on 4 images" in text
    assert "1.000" in text
    assert "—" in text
    assert result.to_dict()["matrix"] == [[1.0, None]]
