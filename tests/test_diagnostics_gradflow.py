"""Gradient flow: norms against torch.autograd, the engine hook, and the ResNet-152 picture."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from resablate.diagnostics.gradflow import (
    GradFlowStudy,
    block_grad_norms,
    gradient_flow,
    plot_gradient_flow,
    residual_gradient_flow,
    stage_grad_norms,
)
from resablate.errors import ConfigError

STAGES = ("conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "fc")
# Module prefixes of each stage's parameters in a torchvision ResNet.
PREFIXES = {
    "conv1": ("conv1.", "bn1."),
    "conv2_x": ("layer1.",),
    "conv3_x": ("layer2.",),
    "conv4_x": ("layer3.",),
    "conv5_x": ("layer4.",),
    "fc": ("fc.",),
}


def _tiny() -> ResNet:
    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=2)


def _batch(n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=generator), torch.arange(n) % 2


def _autograd_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Reference: torch.autograd.grad of the loss w.r.t. each stage's parameters, one norm each."""
    named = list(model.named_parameters())
    loss = nn.functional.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, [p for _, p in named])
    norms = {}
    for stage, prefixes in PREFIXES.items():
        pairs = zip(named, grads, strict=True)
        flat = torch.cat([g.reshape(-1) for (n, _), g in pairs if n.startswith(prefixes)])
        norms[stage] = float(flat.double().norm())
    return norms, grads, float(loss.detach())


def test_norms_match_autograd_at_init_and_after_one_step() -> None:
    model = _tiny().train()
    images, labels = _batch()
    lr = 0.05
    result = gradient_flow(model, images, labels, steps=1, lr=lr, label="tiny")

    reference = _tiny().train()
    expected0, grads, loss0 = _autograd_norms(reference, images, labels)
    # SGD with momentum: the first step is p -= lr * g (the momentum buffer starts at g).
    with torch.no_grad():
        for param, grad in zip(reference.parameters(), grads, strict=True):
            param -= lr * grad
    expected1, _, loss1 = _autograd_norms(reference, images, labels)

    assert [r.step for r in result.records] == [0, 1]
    assert tuple(s for s, _ in result.initial.stages) == STAGES
    for stage in STAGES:
        assert result.stage_norm(stage, 0) == pytest.approx(expected0[stage], rel=1e-5)
        assert result.stage_norm(stage, 1) == pytest.approx(expected1[stage], rel=1e-4)
    assert result.initial.loss == pytest.approx(loss0, rel=1e-6)
    assert result.final.loss == pytest.approx(loss1, rel=1e-5)
    assert result.final.loss != result.initial.loss
    # Blocks: the stem, one residual block per stage here, the head; same totals per stage.
    blocks = dict(result.initial.blocks)
    assert tuple(blocks) == ("conv1", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc")
    assert blocks["layer3.0"] == pytest.approx(expected0["conv4_x"], rel=1e-5)


def test_gradient_flow_leaves_the_model_untouched() -> None:
    model = _tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_flow(model, *_batch(), steps=2, lr=0.1)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_stage_grad_norms_as_a_training_hook() -> None:
    model = _tiny()
    for param in model.layer1.parameters():
        param.requires_grad_(False)
    images, labels = _batch()
    nn.functional.cross_entropy(model(images), labels).backward()
    norms = stage_grad_norms(model)
    # Frozen stages have no gradient and are left out.
    assert tuple(norms) == ("conv1", "conv3_x", "conv4_x", "conv5_x", "fc")
    expected = math.sqrt(sum(float(p.grad.double().square().sum()) for p in model.fc.parameters()))
    assert norms["fc"] == pytest.approx(expected, rel=1e-12)
    assert tuple(block_grad_norms(model)) == ("conv1", "layer2.0", "layer3.0", "layer4.0", "fc")
    assert stage_grad_norms(_tiny()) == {}


def test_bad_arguments_are_one_line_errors() -> None:
    model = _tiny()
    images, labels = _batch()
    with pytest.raises(ConfigError, match="BatchNorm mode 'test' is not valid; use train or eval"):
        gradient_flow(model, images, labels, bn_mode="test")
    with pytest.raises(ConfigError, match="steps=-1 must be a non-negative integer"):
        gradient_flow(model, images, labels, steps=-1)
    with pytest.raises(ConfigError, match=r"labels \[n\]; got \[4, 3, 16, 16\] and \[3\]"):
        gradient_flow(model, images, labels[:3])
    with pytest.raises(ConfigError, match="arms \\['on', 'on'\\] are not valid"):
        residual_gradient_flow(model, images, labels, arms=("on", "on"))
    with pytest.raises(ConfigError, match="alexnet has no residual connections"):
        residual_gradient_flow(torchvision.models.alexnet(), images, labels, arms=("off",))


def test_divergence_stops_training_and_renders(tmp_path) -> None:
    from rich.console import Console

    model = _tiny()
    images, labels = _batch()
    study = residual_gradient_flow(model, images, labels, steps=2, lr=1e12, arch="tiny")
    on, off = study.results
    assert (on.label, off.label) == ("residual on", "residual off")
    assert on.diverged_at_step is not None
    assert len(on.records) == on.diverged_at_step + 1
    assert not math.isfinite(on.final.loss)
    assert on.to_dict()["records"][-1]["loss"] == "nan"
    console = Console(width=160, record=True)
    console.print(study)
    text = console.export_text()
    assert "gradient norm per stage of tiny: batch 4 × 16², BatchNorm train mode" in text
    assert f"(diverged at step {on.diverged_at_step})" in text
    path = plot_gradient_flow(study, tmp_path / "gradflow.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_resnet152_without_residuals_at_init_gradients_explode_or_vanish() -> None:
    """The stem's gradient norm, residual off ÷ on, same weights and batch (32×32, batch 4, seed 0).

    Measured: train-mode BatchNorm 1.98e9 (explodes, Yang et al. 2019); eval-mode 1.9e-13
    (vanishes). Pinned with margins of several orders of magnitude.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet152(num_classes=2)
    images, labels = _batch(4, 32)
    train = residual_gradient_flow(model, images, labels, bn_mode="train")
    evaluation = residual_gradient_flow(model, images, labels, bn_mode="eval")
    assert isinstance(train, GradFlowStudy)
    assert train.ratio("conv1") > 1e6
    assert evaluation.ratio("conv1") < 1e-8
    # The head sees comparable gradients: the difference builds up with depth.
    assert 0.1 < train.ratio("fc") < 10


def test_grad_norm_logger_as_engine_hook(tmp_path) -> None:
    import json

    from resablate.diagnostics.gradflow import GradNormLogger
    from resablate.engine import StepInfo

    model = _tiny()
    images, labels = _batch()
    path = tmp_path / "gradflow.jsonl"
    logger = GradNormLogger(path, every=2, flush_every=2)
    for step in range(1, 5):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        logger(StepInfo(model=model, step=step, epoch=0, loss=loss.detach()))
    # Steps 2 and 4 recorded; the file was rewritten after the second record.
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    assert tuple(lines[1]["norms"]) == STAGES
    # The gradients of step 4 are still in place.
    assert lines[1]["norms"] == stage_grad_norms(model)
    assert lines[1]["loss"] == pytest.approx(float(loss.detach()), rel=1e-7)
    # A resumed run that repeats step 4 replaces it; flush writes what is pending.
    resumed = GradNormLogger(path, every=2, blocks=True)
    resumed(StepInfo(model=model, step=4, epoch=1, loss=torch.tensor(0.5)))
    resumed.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in lines] == [(2, 0), (4, 1)]
    assert lines[1]["loss"] == 0.5
    blocks = ("conv1", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc")
    assert tuple(lines[1]["norms"]) == blocks
