"""Surgery on users' own residual blocks: found by tracing, inside wrappers, or declared by hand."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from surgery_helpers import assert_compiles_to_the_same_output
from torch import Tensor, nn

from resablate import register_block
from resablate.counting import count
from resablate.errors import ConfigError
from resablate.freezing import freeze
from resablate.surgery import (
    drop_residual,
    residual_blocks,
    restore_residual,
    scale_residual,
)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


class CifarBlock(nn.Module):
    """The classic CIFAR ResNet block (kuangliu/pytorch-cifar): ``out += self.shortcut(x)``."""

    def __init__(self, planes_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(planes_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or planes_in != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(planes_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """A CIFAR ResNet with four stages of one block each (widths 8, 16, 32, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        widths = (8, 16, 32, 64)
        for i, width in enumerate(widths):
            planes_in = widths[max(i - 1, 0)]
            stage = nn.Sequential(CifarBlock(planes_in, width, 1 if i == 0 else 2))
            setattr(self, f"layer{i + 1}", stage)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def cifar() -> CifarResNet:
    torch.manual_seed(0)
    model = CifarResNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def reference(model: CifarResNet, x: Tensor, alpha: float) -> Tensor:
    """The CIFAR ResNet's forward written from its layers, every shortcut weighted by alpha."""
    out = F.relu(model.bn1(model.conv1(x)))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        block = stage[0]
        main = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(out)))))
        shortcut = block.shortcut[1](block.shortcut[0](out)) if len(block.shortcut) else out
        out = F.relu(main if alpha == 0.0 else main + alpha * shortcut)
    return model.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def shortcut_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".shortcut." in n)


def test_a_user_block_is_found_without_registration() -> None:
    model = cifar()
    assert [n for n, _ in residual_blocks(model)] == [
        "layer1.0",
        "layer2.0",
        "layer3.0",
        "layer4.0",
    ]
    with torch.no_grad():
        untouched = model(X)
        assert torch.equal(reference(model, X, 1.0), untouched)
        keys = list(model.state_dict())
        report = drop_residual(model)
        assert report.inactive_params == shortcut_params(model) == 2_912
        assert [s.stage for s in report.stages] == ["conv2_x", "conv3_x", "conv4_x", "conv5_x"]
        assert torch.equal(model(X), reference(model, X, 0.0))
        assert list(model.state_dict()) == keys
        # the same definition as count(): parameters the rewired forward no longer reaches
        counts = count(model, (3, 32, 32))
        assert counts.params - counts.active_params == report.inactive_params
        scale_residual(model, 0.5)
        assert torch.equal(model(X), reference(model, X, 0.5))
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(X), reference(model, X, 0.5))
        restore_residual(model)
        assert type(model.layer2[0]) is CifarBlock
        assert not {"residual_alpha", "lesioned"} & set(model.layer2[0].__dict__)
        assert torch.equal(model(X), untouched)


def test_the_dropped_shortcut_is_not_run() -> None:
    model = cifar()
    calls: list[str] = []
    for name, module in model.named_modules():
        if name.endswith("shortcut"):
            module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    drop_residual(model, stages="conv3_x")
    model(X)
    assert calls == ["layer1.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]


class Net(nn.Module):
    """A user module holding a backbone."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(10, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


@pytest.mark.parametrize(
    ("wrap", "prefix"),
    [
        (lambda m: Net(m), "backbone."),
        (lambda m: nn.Sequential(m, nn.Linear(10, 2)), "0."),
        (lambda m: nn.DataParallel(m), "module."),
    ],
    ids=["user-module", "sequential", "data-parallel"],
)
def test_blocks_are_found_inside_wrappers(wrap, prefix: str) -> None:  # type: ignore[no-untyped-def]
    model = cifar()
    wrapped = wrap(model)
    with torch.no_grad():
        report = drop_residual(wrapped, stages=["conv4_x", f"{prefix}layer4"])
        assert report.blocks_rewired == (f"{prefix}layer3.0", f"{prefix}layer4.0")
        assert [s.stage for s in report.stages] == ["conv2_x", "conv3_x", "conv4_x", "conv5_x"]
        dropped = model(X)
        restore_residual(wrapped, blocks=[f"{prefix}layer3.0", "conv5_x.0"])
        assert torch.equal(model(X), reference(model, X, 1.0))
        assert not torch.equal(dropped, model(X))
    freeze(wrapped, "conv1-2")
    frozen = {n for n, p in wrapped.named_parameters() if not p.requires_grad}
    assert frozen == {
        f"{prefix}{n}"
        for n, _ in model.named_parameters()
        if n.startswith(("conv1", "bn1", "layer1"))
    }


def test_stages_by_module_path_and_errors() -> None:
    model = cifar()
    report = drop_residual(model, stages="layer2.0")
    assert report.blocks_rewired == ("layer2.0",)
    with pytest.raises(ConfigError) as info:
        drop_residual(model, stages="conv9_x")
    assert str(info.value) == (
        "unknown stage 'conv9_x'; stages: conv1, conv2_x, conv3_x, conv4_x, conv5_x, "
        "or a module path of the model"
    )
    with pytest.raises(ConfigError, match=r"^stage 'fc' has no residual blocks; residual stages: "):
        drop_residual(model, stages="fc")


class Gated(nn.Module):
    """A residual block torch.fx cannot trace (it branches on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.proj = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if out.abs().sum() >= 0:
            out = out + self.proj(x)
        return torch.relu(out)


def test_a_declared_block_is_rewired_through_its_declaration() -> None:
    adapter = register_block(
        Gated,
        main=lambda block, x: block.conv(x),
        shortcut=lambda block, x: block.proj(x),
        act=lambda block, x: torch.relu(x),
        shortcut_modules=("proj",),
    )
    assert adapter.block_type is Gated
    with pytest.raises(ConfigError, match=r"block type test_surgery_user_blocks.Gated is already"):
        register_block(Gated, main=adapter.main)
    torch.manual_seed(0)
    model = nn.Sequential(Gated(), Gated())
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        untouched = model(x)
        report = scale_residual(model, 0.5, blocks="1")
        assert report.blocks_rewired == ("1",)
        middle = model[0](x)
        assert torch.equal(
            model(x), torch.relu(model[1].conv(middle) + 0.5 * model[1].proj(middle))
        )
        assert drop_residual(model).inactive_params == 2 * (16 + 4)
        restore_residual(model)
        assert torch.equal(model(x), untouched)


def test_a_non_residual_model_is_told_so() -> None:
    with torch.device("meta"):
        vgg11 = torchvision.models.vgg11()
    with pytest.raises(ConfigError) as info:
        drop_residual(vgg11)
    assert str(info.value).startswith("vgg has no residual connections; residual surgery applies")


@pytest.mark.slow
def test_torch_compile_after_surgery_on_a_user_block() -> None:
    model = cifar()
    scale_residual(model, 0.5, stages=["conv3_x", "conv4_x"])
    assert_compiles_to_the_same_output(model, X)
