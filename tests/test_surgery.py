"""Residual surgery: an independent reference forward, exact restore, errors before changes."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
import torchvision
from surgery_helpers import assert_compiles_to_the_same_output
from torch import Tensor, nn

from resablate.errors import ConfigError, UnsupportedBlockError
from resablate.families import get_family
from resablate.surgery import (
    apply_residual_state,
    drop_residual,
    lesion_blocks,
    residual_blocks,
    residual_state,
    restore_residual,
    scale_residual,
    surgery_counts,
)

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
# "bottleneck" is a compact Bottleneck ResNet (layers 1, 2, 1, 1) of the same upstream classes as
# ResNet-50..152: the same code paths at a fifth of the cost.
CASES = [
    ("torchvision", "resnet18"),
    ("torchvision", "bottleneck"),
    ("timm", "resnet18"),
    ("timm", "bottleneck"),
]
_CACHE: dict[tuple[str, str], nn.Module] = {}


def build(source: str, arch: str) -> nn.Module:
    if arch != "bottleneck":
        return get_family(arch, source).builder()
    if source == "torchvision":
        from torchvision.models.resnet import Bottleneck, ResNet

        return ResNet(Bottleneck, [1, 2, 1, 1])
    from timm.models.resnet import Bottleneck as TimmBottleneck
    from timm.models.resnet import ResNet as TimmResNet

    return TimmResNet(block=TimmBottleneck, layers=(1, 2, 1, 1))


def meta_resnet50() -> nn.Module:
    with torch.device("meta"):
        return get_family("resnet50").builder()


def fresh(source: str, arch: str) -> nn.Module:
    """A deep copy of one randomly initialised eval-mode model per (source, arch)."""
    if (source, arch) not in _CACHE:
        torch.manual_seed(0)
        model = build(source, arch).eval()
        # Non-trivial BatchNorm statistics so that every layer matters.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
        _CACHE[(source, arch)] = model
    return copy.deepcopy(_CACHE[(source, arch)])


# --- the reference: written from the blocks' own layers, without the library -------------------


def reference_block(block: nn.Module, x: Tensor, source: str, alpha: float) -> Tensor:
    """One block as He et al. (2016) describe it, with the shortcut weighted by ``alpha``."""
    bottleneck = hasattr(block, "conv3")
    if source == "torchvision":
        act1 = act2 = block.relu
        out_act = block.relu
    else:
        # The default timm ResNets have no drop-block, anti-aliasing, SE or drop-path.
        assert isinstance(block.drop_block, nn.Identity) and isinstance(block.aa, nn.Identity)
        assert block.se is None and block.drop_path is None
        act1 = block.act1
        act2 = block.act2 if bottleneck else None
        out_act = block.act3 if bottleneck else block.act2
    out = act1(block.bn1(block.conv1(x)))
    if bottleneck:
        out = act2(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    if alpha != 0.0:
        shortcut = x if block.downsample is None else block.downsample(x)
        out = out + alpha * shortcut
    return out_act(out)


def reference_forward(model: nn.Module, x: Tensor, source: str, alphas: dict[str, float]) -> Tensor:
    stem_act = model.relu if source == "torchvision" else model.act1
    x = model.maxpool(stem_act(model.bn1(model.conv1(x))))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            x = reference_block(block, x, source, alphas.get(f"{stage}.{index}", 1.0))
    pooled = torch.flatten(model.avgpool(x), 1) if source == "torchvision" else model.global_pool(x)
    return model.fc(pooled)


def block_names(model: nn.Module, stage: str | None = None) -> list[str]:
    return [n for n, _ in residual_blocks(model) if stage is None or n.startswith(stage + ".")]


@pytest.mark.parametrize(("source", "arch"), CASES)
@pytest.mark.parametrize("stages", [["conv4_x"], None])
def test_dropped_model_equals_the_reference_forward(
    source: str, arch: str, stages: list[str] | None
) -> None:
    model = fresh(source, arch)
    untouched = model(X)
    report = drop_residual(model, stages=stages)
    dropped = block_names(model, "layer3" if stages else None)
    assert list(report.blocks_rewired) == dropped
    with torch.no_grad():
        expected = reference_forward(model, X, source, dict.fromkeys(dropped, 0.0))
        assert torch.equal(model(X), expected)
        # the reference itself is sound: with every shortcut it reproduces the upstream model
        assert torch.equal(reference_forward(model, X, source, {}), untouched)
    assert not torch.equal(model(X), untouched)


@pytest.mark.parametrize(("source", "arch"), CASES)
def test_restore_gives_exactly_the_untouched_model(source: str, arch: str) -> None:
    model = fresh(source, arch)
    pristine = fresh(source, arch)
    classes = [type(m) for m in model.modules()]
    drop_residual(model)
    restore_residual(model)
    assert [type(m) for m in model.modules()] == classes
    assert all(
        "residual_alpha" not in b.__dict__ and "lesioned" not in b.__dict__
        for _, b in residual_blocks(model)
    )
    assert torch.equal(model(X), pristine(X))


def test_scale_residual_one_is_untouched_and_zero_is_drop() -> None:
    model = fresh("torchvision", "resnet18")
    untouched = model(X)
    report = scale_residual(model, 1.0)
    assert type(model.layer1[0]) is torchvision.models.resnet.BasicBlock
    assert report.active_params_after == report.params
    assert torch.equal(model(X), untouched)
    dropped = fresh("torchvision", "resnet18")
    drop_residual(dropped)
    scale_residual(model, 0.0)
    assert torch.equal(model(X), dropped(X))


@pytest.mark.parametrize(("source", "arch"), [CASES[1], CASES[2]])
def test_scaled_shortcut_equals_the_reference(source: str, arch: str) -> None:
    model = fresh(source, arch)
    report = scale_residual(model, 0.5, stages=["layer2", "CONV5_X"])
    assert report.operation == "scale" and report.alpha == 0.5
    assert report.inactive_params == 0
    names = block_names(model, "layer2") + block_names(model, "layer4")
    with torch.no_grad():
        expected = reference_forward(model, X, source, dict.fromkeys(names, 0.5))
        assert torch.equal(model(X), expected)


def test_single_blocks_by_code_or_paper_name() -> None:
    model = fresh("torchvision", "resnet18")
    report = drop_residual(model, blocks=["layer3.1", "conv5_x.0"], stages=["conv2_x"])
    assert report.blocks_rewired == ("layer1.0", "layer1.1", "layer3.1", "layer4.0")
    with torch.no_grad():
        expected = reference_forward(
            model, X, "torchvision", dict.fromkeys(report.blocks_rewired, 0.0)
        )
        assert torch.equal(model(X), expected)


def test_dropped_projection_shortcut_is_not_run() -> None:
    model = fresh("torchvision", "bottleneck")
    calls: list[str] = []
    for name, module in model.named_modules():
        if name.endswith("downsample"):
            module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    drop_residual(model, stages=["conv3_x"])
    model(X)
    assert calls == ["layer1.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]


def test_report_counts() -> None:
    model = meta_resnet50()
    downsample = sum(p.numel() for n, p in model.named_parameters() if "downsample" in n)
    report = drop_residual(model)
    assert report.blocks_total == 16
    assert len(report.blocks_rewired) == 16
    assert report.params == 25_557_032
    assert report.inactive_params == downsample == 2_776_576
    assert report.active_params_before == 25_557_032
    assert report.active_params_after == 25_557_032 - downsample
    assert [s.stage for s in report.stages] == ["conv2_x", "conv3_x", "conv4_x", "conv5_x"]
    assert [s.blocks for s in report.stages] == [3, 4, 6, 3]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["blocks_rewired"][0] == "layer1.0"
    assert [s["inactive_params"] for s in data["stages"]] == [16_896, 132_096, 526_336, 2_101_248]
    again = restore_residual(model)
    assert again.active_params_before == 25_557_032 - downsample
    assert again.active_params_after == 25_557_032


def test_state_dict_keys_and_values_unchanged_by_surgery() -> None:
    model = fresh("timm", "bottleneck")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drop_residual(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    clean = fresh("timm", "bottleneck")
    clean.load_state_dict(after)  # a surgered checkpoint loads into an untouched model


def test_pickle_deepcopy_and_device_move_keep_the_surgery() -> None:
    model = fresh("torchvision", "resnet18")
    drop_residual(model, stages="conv3_x")
    expected = model(X)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), model.to("cpu")):
        assert type(clone.layer2[0]).__name__ == "RewiredBasicBlock"
        assert torch.equal(clone(X), expected)
    double = copy.deepcopy(model).to(torch.float64)
    assert torch.allclose(double(X.double()).float(), expected, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_of_a_surgered_model() -> None:
    model = fresh("torchvision", "resnet18")
    drop_residual(model, stages=["conv4_x", "conv5_x"])
    assert_compiles_to_the_same_output(model, X)


def test_lesion_and_state_round_trip() -> None:
    model = fresh("torchvision", "bottleneck")
    untouched = model(X)
    drop_residual(model, stages="conv2_x")
    saved = residual_state(model)
    assert saved["layer1.0"] == {"alpha": 0.0, "lesioned": False}
    assert saved["layer2.0"] == {"alpha": 1.0, "lesioned": False}
    surgered = model(X)
    report = lesion_blocks(model, "layer2.1")
    block = model.layer2[1]
    assert report.blocks_rewired == ("layer2.1",)
    assert report.inactive_params == (
        sum(p.numel() for p in block.parameters()) + report.stages[0].inactive_params
    )
    # the lesioned block passes its (identity) shortcut through the final ReLU
    x = torch.relu(torch.randn(1, 512, 2, 2))
    assert torch.equal(block(x), torch.relu(x))
    assert not torch.equal(model(X), surgered)
    apply_residual_state(model, saved)
    assert residual_state(model) == saved
    assert torch.equal(model(X), surgered)
    restore_residual(model)
    assert torch.equal(model(X), untouched)


def test_any_resnet_instance_works() -> None:
    with torch.device("meta"):
        model = torchvision.models.resnet34(num_classes=3)
    report = drop_residual(model, stages=["layer4"])
    assert report.blocks_total == 16
    assert report.blocks_rewired == ("layer4.0", "layer4.1", "layer4.2")


def test_errors_name_legal_values_and_change_nothing() -> None:
    model = fresh("torchvision", "resnet18")
    with pytest.raises(ConfigError, match=r"unknown stage 'conv6_x'; stages: conv1, conv2_x"):
        drop_residual(model, stages=["conv4_x", "conv6_x"])
    with pytest.raises(ConfigError, match=r"unknown block 'layer3.7'; blocks: layer1.0..layer1.1"):
        drop_residual(model, blocks=["layer3.0", "layer3.7"])
    with pytest.raises(ConfigError, match="stage 'conv1' has no residual blocks"):
        drop_residual(model, stages="conv1")
    with pytest.raises(ConfigError, match="finite"):
        scale_residual(model, float("nan"))
    with pytest.raises(ConfigError, match=r"unknown block 'layer9\.0' in residual state"):
        apply_residual_state(model, {"layer1.0": {"alpha": 0.0}, "layer9.0": {"alpha": 0.0}})
    assert all(type(b).__name__ == "BasicBlock" for _, b in residual_blocks(model))


def test_models_without_residual_connections_are_refused() -> None:
    with torch.device("meta"):
        alexnet = get_family("alexnet").builder()
    assert residual_blocks(alexnet) == []
    with pytest.raises(ConfigError) as info:
        drop_residual(alexnet)
    message = str(info.value)
    assert message.startswith("alexnet has no residual connections; residual surgery applies to:")
    assert "resnet18, resnet34, resnet50, resnet101, resnet152" in message


class Untraceable(nn.Module):
    """A residual block whose forward branches on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(512, 512, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return x + self.conv(x)
        return x


def test_an_untraceable_block_is_named_with_the_public_api_before_anything_changes() -> None:
    model = fresh("torchvision", "resnet18")
    model.layer4.append(Untraceable())
    with pytest.raises(UnsupportedBlockError) as info:
        drop_residual(model)
    assert str(info.value).startswith(
        "cannot tell whether test_surgery.Untraceable at layer4.2 is a residual block: "
        "torch.fx cannot trace its forward ("
    )
    assert str(info.value).endswith(
        "if it is one, declare it with resablate.register_block(Untraceable, main=..., "
        "shortcut=..., act=...) (docs/surgery.md)"
    )
    assert type(model.layer1[0]).__name__ == "BasicBlock"


def test_a_module_that_adds_no_shortcut_is_not_a_block() -> None:
    model = fresh("torchvision", "resnet18")
    model.layer4.append(nn.Identity())
    model.layer4.append(nn.Sequential(nn.ReLU()))
    assert [n for n, _ in residual_blocks(model)][-1] == "layer4.1"


def test_the_report_says_the_call_was_in_place() -> None:
    model = fresh("torchvision", "resnet18")
    model = drop_residual(model)  # the mistake: the report replaces the model
    message = (
        "surgery changes the model in place and returns this report, so write "
        "`report = drop_residual(model)` and keep using `model`"
    )
    with pytest.raises(TypeError) as info:
        model(X)
    assert str(info.value) == "a SurgeryReport was called like a model: " + message
    with pytest.raises(AttributeError, match="SurgeryReport has no attribute 'eval'; a Surgery"):
        model.eval()
    assert copy.deepcopy(model) == model
    assert pickle.loads(pickle.dumps(model)) == model


def test_surgery_counts_for_the_cli() -> None:
    result = surgery_counts("resnet50", stages=["conv4_x", "conv5_x"], source="timm")
    data = result.to_dict()
    assert data["stages"] == ["conv4_x", "conv5_x"]
    assert (data["blocks_total"], data["blocks_rewired"]) == (16, 9)
    assert data["params"] == 25_557_032
    assert data["flops_before"] == 4_111_512_576 > data["flops_after"]
    assert data["active_params"] == 25_557_032 - result.report.inactive_params


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("tf32", "tolerance"),
    # TF32 keeps 10 mantissa bits (float32: 23): the training policy (recipe tf32=True) needs a
    # tolerance about ten times wider than exact float32 convolutions.
    [(False, 1e-3), (True, 2e-2)],
)
def test_surgered_model_moves_to_the_gpu_and_back(tf32: bool, tolerance: float) -> None:
    from resablate.counting import count

    model = fresh("torchvision", "resnet18")
    drop_residual(model, stages=["conv3_x", "conv4_x"])
    expected = model(X)
    on_gpu = copy.deepcopy(model).to("cuda")
    assert type(on_gpu.layer2[0]).__name__ == "RewiredBasicBlock"
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [flag.allow_tf32 for flag in flags]
    try:
        for flag in flags:
            flag.allow_tf32 = tf32
        with torch.no_grad():
            got = on_gpu(X.cuda()).cpu()
    finally:
        for flag, value in zip(flags, saved, strict=True):
            flag.allow_tf32 = value
    assert torch.allclose(got, expected, rtol=tolerance, atol=tolerance / 10)
    assert count(on_gpu, (3, 32, 32)) == count(model, (3, 32, 32))
    assert all(p.is_cuda for p in on_gpu.parameters())
    back = on_gpu.to("cpu")
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.state_dict().values(), model.state_dict().values(), strict=True)
    )
