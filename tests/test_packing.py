"""Packed models: fuse K ResNets into one, unfuse back to K standalone state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resablate.errors import ConfigError
from resablate.freezing import freeze
from resablate.packing import (
    fuse,
    hold_groups,
    idle_groups,
    pack_inputs,
    pack_size,
    split_outputs,
    unfuse,
)
from resablate.surgery import drop_residual, lesion_blocks, scale_residual
from resablate.weights import build_model

# In float32 oneDNN may pick other convolution algorithms for grouped convolutions than for the
# standalone ones (float re-association); in float64 the packed model is bit-exact.
RTOL, ATOL = 1e-4, 1e-4


def ablate(model: nn.Module, residual: str, plan: str) -> nn.Module:
    """``residual``: "on", "off" (layer2 and layer4 dropped) or "half" (layer2 and layer3 scaled
    by 0.5); then the freeze ``plan``. In place; returns the model."""
    if residual == "off":
        drop_residual(model, ["layer2", "layer4"])
    elif residual == "half":
        scale_residual(model, 0.5, ["layer2", "layer3"])
    freeze(model, plan)
    return model


def _model(arch: str, seed: int, residual: str, *, plan: str = "none") -> nn.Module:
    torch.manual_seed(seed)
    return ablate(build_model(arch, num_classes=2), residual, plan)


def _trio(arch: str = "resnet18", plan: str = "none") -> list[nn.Module]:
    return [
        _model(arch, seed, residual, plan=plan)
        for seed, residual in ((0, "on"), (1, "off"), (2, "half"))
    ]


def _images(seed: int, k: int, batch: int = 4, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=generator) for _ in range(k)]


def test_unfuse_gives_each_model_exactly_back() -> None:
    models = _trio(plan="conv1-2")
    packed = fuse(models)
    assert pack_size(packed) == 3
    groups = unfuse(packed)
    for model, state in zip(models, groups, strict=True):
        reference = model.state_dict()
        assert list(state) == list(reference)
        for key, tensor in reference.items():
            assert state[key].shape == tensor.shape, key
            assert state[key].dtype == tensor.dtype, key
            assert torch.equal(state[key], tensor), key


def test_fuse_keeps_frozen_parts_and_residual_wiring() -> None:
    packed = fuse(_trio(plan="conv1-2"))
    frozen = sorted(n for n, p in packed.named_parameters() if not p.requires_grad)
    assert frozen[:3] == ["bn1.bias", "bn1.weight", "conv1.weight"]
    assert all(n.startswith(("bn1", "conv1", "layer1")) for n in frozen)
    assert type(packed.bn1).__name__ == "PackedHeldBatchNorm2d"
    assert type(packed.layer2[0].bn1).__name__ == "PackedBatchNorm2d"
    assert packed.layer1[0].pack_alphas == (1.0, 1.0, 1.0)
    assert packed.layer2[0].pack_alphas == (1.0, 0.0, 0.5)
    assert packed.layer4[1].pack_alphas == (1.0, 0.0, 1.0)
    assert packed.conv1.weight.shape == (192, 3, 7, 7)
    assert packed.conv1.groups == 3
    assert packed.fc.weight.shape == (6, 512)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_packed_model_in_float64_computes_exactly_what_each_model_does(arch: str) -> None:
    models = [m.double() for m in _trio(arch)]
    packed = fuse(models)
    images = [x.double() for x in _images(0, 3)]
    for mode in (True, False):
        logits = split_outputs(packed.train(mode)(pack_inputs(images)), 3)
        assert logits.shape == (3, 4, 2)
        for k, model in enumerate(models):
            assert torch.equal(logits[k], model.train(mode)(images[k])), (k, mode)
    for model, state in zip(models, unfuse(packed), strict=True):
        for key, tensor in model.state_dict().items():
            assert torch.equal(state[key], tensor), key


def test_packed_model_in_float32_agrees_to_float_reassociation() -> None:
    models = _trio()
    packed = fuse(models).train()
    images = _images(0, 3, batch=8)
    logits = split_outputs(packed(pack_inputs(images)), 3)
    for k, model in enumerate(models):
        torch.testing.assert_close(logits[k], model.train()(images[k]), rtol=RTOL, atol=ATOL)


def test_dropped_group_holds_its_projection_statistics() -> None:
    models = _trio()
    before = [m.layer2[0].downsample[1].running_mean.clone() for m in models]
    packed = fuse(models).train()
    packed(pack_inputs(_images(1, 3)))
    state = unfuse(packed)
    key = "layer2.0.downsample.1"
    assert torch.equal(state[1][f"{key}.running_mean"], before[1])
    assert not torch.equal(state[0][f"{key}.running_mean"], before[0])
    assert [int(s[f"{key}.num_batches_tracked"]) for s in state] == [1, 0, 1]
    assert [int(s["bn1.num_batches_tracked"]) for s in state] == [1, 1, 1]


def test_idle_groups_names_the_projections_a_dropped_group_skips() -> None:
    idle = idle_groups(fuse(_trio()))
    assert sorted(idle) == [
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "layer2.0.downsample.1.weight",
        "layer4.0.downsample.0.weight",
        "layer4.0.downsample.1.bias",
        "layer4.0.downsample.1.weight",
    ]
    assert idle["layer2.0.downsample.0.weight"].tolist() == [False, True, False]
    assert idle["layer4.0.downsample.1.bias"].tolist() == [False, True, False]


def test_a_non_finite_group_leaves_the_others_alone() -> None:
    models = _trio()
    packed = fuse(models).train()
    with torch.no_grad():
        packed.conv1.weight[64:128] = float("nan")
    hold_groups(packed, torch.tensor([False, True, False]))
    logits = split_outputs(packed(pack_inputs(_images(2, 3))), 3)
    assert torch.isnan(logits[1]).all()
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[2]).all()
    state = unfuse(packed)
    assert torch.equal(state[1]["bn1.running_mean"], models[1].bn1.running_mean)
    assert int(state[1]["bn1.num_batches_tracked"]) == 0
    assert torch.isfinite(state[0]["bn1.running_mean"]).all()


def test_fuse_refuses_what_it_cannot_pack() -> None:
    with pytest.raises(ConfigError, match="cannot pack an empty list of models"):
        fuse([])
    alexnet = build_model("alexnet", num_classes=2)
    with pytest.raises(ConfigError, match=r"cannot pack model 0: torchvision\.models\.alexnet"):
        fuse([alexnet])
    lesioned = build_model("resnet18", num_classes=2)
    lesion_blocks(lesioned, ["layer3.1"])
    with pytest.raises(ConfigError, match=r"cannot pack model 1: block layer3\.1 is lesioned"):
        fuse([build_model("resnet18", num_classes=2), lesioned])
    with pytest.raises(ConfigError, match="cannot pack model 1 with model 0: their layers differ"):
        fuse([build_model("resnet18", num_classes=2), build_model("resnet34", num_classes=2)])
    frozen = build_model("resnet18", num_classes=2)
    freeze(frozen, "conv1", bn="train")
    with pytest.raises(ConfigError, match="frozen parts differ"):
        fuse([build_model("resnet18", num_classes=2), frozen])
    with pytest.raises(ConfigError, match="is not a packed model"):
        pack_size(alexnet)
