"""Lesion context manager and lesion study: reference forward, exact restoration, seeded draws."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

import resablate
from resablate.diagnostics.lesion import LesionResult, lesion, lesion_study, plot_lesion
from resablate.errors import ConfigError
from resablate.surgery import drop_residual, residual_state, scale_residual

BLOCKS = ("layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer4.0")


def _tiny() -> ResNet:
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 1, 1, 1], num_classes=2)
    # Non-trivial running statistics, so that eval-mode BatchNorm is not the identity.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))
    return model.eval()


def _reference(model: ResNet, x: torch.Tensor, lesioned: set[str]) -> torch.Tensor:
    """torchvision's ResNet forward written out, with lesioned blocks as act(shortcut(x))."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in getattr(model, stage).named_children():
            shortcut = x if block.downsample is None else block.downsample(x)
            if f"{stage}.{index}" in lesioned:
                x = torch.relu(shortcut)
            else:
                out = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
                x = torch.relu(out + shortcut)
    return model.fc(torch.flatten(model.avgpool(x), 1))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_deleting_a_block_matches_the_reference_forward(images: torch.Tensor) -> None:
    model = _tiny()
    with torch.no_grad():
        intact = model(images)
        assert torch.equal(intact, _reference(model, images, set()))
        for chosen in ({"layer1.1"}, {"layer3.0"}, {"layer1.0", "layer4.0"}):
            with lesion(model, sorted(chosen)) as report:
                out = model(images)
            assert report.blocks_rewired == tuple(b for b in BLOCKS if b in chosen)
            assert torch.equal(out, _reference(model, images, chosen))
            assert not torch.equal(out, intact)
    assert resablate.lesion is lesion


def test_exit_restores_a_mixed_surgery_state_exactly(images: torch.Tensor) -> None:
    model = _tiny()
    scale_residual(model, 0.5, stages=["conv3_x"])
    drop_residual(model, blocks=["layer4.0"])
    state = residual_state(model)
    classes = [type(m) for m in model.modules()]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(images)
        with lesion(model, ["layer1.1", "layer2.0", "conv5_x.0"]):
            assert residual_state(model)["layer2.0"] == {"alpha": 0.5, "lesioned": True}
            assert not torch.equal(model(images), before)
        assert residual_state(model) == state
        assert torch.equal(model(images), before)
        with pytest.raises(RuntimeError, match="boom"), lesion(model, "layer1.0"):
            raise RuntimeError("boom")
        assert residual_state(model) == state
        assert torch.equal(model(images), before)
    assert [type(m) for m in model.modules()] == classes
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_bad_block_changes_nothing() -> None:
    model = _tiny()
    state = residual_state(model)
    bad = r"unknown block 'layer3\.7'"
    with pytest.raises(ConfigError, match=bad), lesion(model, ["layer3.7"]):
        pass
    assert residual_state(model) == state
    with (
        pytest.raises(ConfigError, match="has no residual connections"),
        lesion(nn.Sequential(nn.Linear(2, 2)), ["layer1.0"]),
    ):
        pass


def test_lesion_study_is_seeded_and_leaves_the_model_as_it_was(tmp_path) -> None:
    from rich.console import Console

    model = _tiny().train()
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(12) % 2
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = lesion_study(model, (images, labels), k_random=3, draws=2, seed=7, label="tiny")
    again = lesion_study(model, (images, labels), blocks=BLOCKS, k_random=3, draws=2, seed=7)

    assert model.training
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert residual_state(model) == {b: {"alpha": 1.0, "lesioned": False} for b in BLOCKS}
    assert [e.blocks for e in result.singles] == [(b,) for b in BLOCKS]
    assert [len(e.blocks) for e in result.random] == [1, 1, 2, 2, 3, 3]
    assert [e.blocks for e in result.random] == [e.blocks for e in again.random]
    assert result.downsampling == ("layer2.0", "layer3.0", "layer4.0")
    # The single deletions agree with evaluating the reference forward directly.
    model.eval()
    with torch.no_grad():
        logits = _reference(model, images, {"layer2.0"})
    accuracy = int((logits.argmax(1) == labels).sum()) / 12
    loss = float(nn.functional.cross_entropy(logits, labels))
    entry = result.singles[2]
    assert entry.accuracy == accuracy
    assert entry.loss == pytest.approx(loss, rel=1e-6)
    by_k = result.by_k("accuracy")
    assert [(k, n) for k, _, _, n in by_k] == [(0, 1), (1, 7), (2, 2), (3, 2)]
    assert by_k[0][1] == result.baseline.accuracy

    data = result.to_dict()
    assert data["singles"][0]["blocks"] == ["layer1.0"]
    assert data["by_k"][0] == {
        "k": 0,
        "accuracy_mean": result.baseline.accuracy,
        "accuracy_std": 0.0,
        "n": 1,
    }
    console = Console(width=120, record=True)
    console.print(result)
    text = console.export_text()
    assert "lesion study of tiny: 12 images" in text
    assert "layer2.0 (downsampling)" in text
    assert "k random blocks deleted at once (seed 7)" in text
    assert plot_lesion(result, tmp_path / "lesion.png").read_bytes()[:4] == b"\x89PNG"


def test_lesion_study_candidates_and_errors() -> None:
    model = _tiny()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    result = lesion_study(model, (images, labels), blocks=["conv4_x.0", "layer1.1"])
    assert isinstance(result, LesionResult)
    assert [e.blocks for e in result.singles] == [("layer1.1",), ("layer3.0",)]
    assert result.random == ()
    with pytest.raises(ConfigError, match="k_random=3 must be between 0 and 2"):
        lesion_study(model, (images, labels), blocks=["layer1.1", "layer3.0"], k_random=3)
    with pytest.raises(ConfigError, match=r"labels \[n\]; got \[4, 3, 16, 16\] and \[3\]"):
        lesion_study(model, (images, labels[:3]))
    with pytest.raises(ConfigError, match="unknown metric 'f2'"):
        plot_lesion(result, "unused.png", metric="f2")
