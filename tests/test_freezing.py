"""freeze(): pinned trainable counts per plan, BatchNorm policy, fingerprints, errors."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from resablate.errors import ConfigError
from resablate.families import get_family
from resablate.freezing import (
    FREEZE_PLANS,
    freeze,
    freeze_plans,
    frozen_fingerprint,
    trainable_parameters,
    unfreeze,
)
from resablate.weights import build_model

# trainable parameters with a 2-class head, per plan (torchvision's freeze sweep, pinned)
TRAINABLE = {
    "resnet18": (11_177_538, 11_168_002, 11_020_034, 10_494_466, 8_394_754, 1_026),
    "alexnet": (57_012_034, 56_988_738, 56_681_346, 56_017_410, 55_132_418, 54_542_338),
}


def meta_build(arch: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch, num_classes=2)


@pytest.mark.parametrize("arch", sorted(TRAINABLE))
def test_freeze_sweep_pins_trainable_params(arch: str) -> None:
    model = meta_build(arch)
    total = sum(p.numel() for p in model.parameters())
    for plan, expected in zip(FREEZE_PLANS, TRAINABLE[arch], strict=True):
        report = freeze(model, plan)
        assert report.trainable_after == expected, plan
        assert sum(p.numel() for p in trainable_parameters(model)) == expected
        assert report.params_frozen == total - expected
    head = model.get_submodule(get_family(arch).head)
    assert all(p.requires_grad for p in head.parameters())  # "all" keeps the head trainable
    assert report.frozen_stages == tuple(get_family(arch).stages)


def test_report_names_stages_and_renders() -> None:
    from rich.console import Console

    model = meta_build("resnet18")
    report = freeze(model, "CONV1-3")
    assert report.plan == "conv1-3"
    assert report.frozen_stages == ("conv1", "conv2_x", "conv3_x")
    assert report.bn_layers_held == 1 + 4 + 5  # stem, layer1 (2 blocks × 2), layer2 (+downsample)
    assert report.trainable_before == 11_177_538
    assert report.to_dict()["frozen_stages"] == ["conv1", "conv2_x", "conv3_x"]
    console = Console(record=True, width=100)
    console.print(report)
    assert "10,494,466" in console.export_text()


def train_step(model: nn.Module) -> None:
    model.train()
    optimiser = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimiser.step()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_batchnorm_stats_stay_while_unfrozen_ones_move() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2)
    freeze(model, "conv1-2")
    fingerprint = frozen_fingerprint(model)
    assert "bn1.running_mean" in fingerprint and "layer1.0.conv1.weight" in fingerprint
    stem, layer1, layer3 = snapshot(model.bn1), snapshot(model.layer1), snapshot(model.layer3)
    train_step(model)
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer3[0].bn1.training
    assert same(snapshot(model.bn1), stem)
    assert same(snapshot(model.layer1), layer1)
    assert not torch.equal(model.layer3[0].bn1.running_mean, layer3["0.bn1.running_mean"])
    assert not torch.equal(model.layer3[0].conv1.weight, layer3["0.conv1.weight"])
    assert frozen_fingerprint(model) == fingerprint


def test_bn_train_policy_lets_frozen_stages_update_their_statistics() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2)
    report = freeze(model, "conv1", bn="train")
    assert report.bn_layers_held == 0
    weight, mean = model.conv1.weight.clone(), model.bn1.running_mean.clone()
    train_step(model)
    assert torch.equal(model.conv1.weight, weight)
    assert not torch.equal(model.bn1.running_mean, mean)


def test_held_batchnorm_survives_pickle_deepcopy_and_unfreeze() -> None:
    model = meta_build("resnet18")
    freeze(model, "conv1")
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model.to_empty(device="cpu")))):
        clone.train()
        assert not clone.bn1.training and clone.layer1[0].bn1.training
        assert not clone.conv1.weight.requires_grad
    report = unfreeze(model)
    assert report.trainable_after == report.params == 11_177_538
    assert type(model.bn1) is nn.BatchNorm2d
    model.train()
    assert model.bn1.training


def test_freeze_replaces_a_previous_freeze() -> None:
    model = meta_build("resnet18")
    freeze(model, "all")
    report = freeze(model, "conv1")
    assert report.trainable_before == 1_026
    assert report.trainable_after == 11_168_002
    assert type(model.layer4[0].bn1) is nn.BatchNorm2d


def test_plans_generalise_to_the_stage_count() -> None:
    assert freeze_plans(meta_build("resnet18")) == (
        "none",
        "conv1",
        "conv1-2",
        "conv1-3",
        "conv1-4",
        "conv1-5",
        "all",
    )
    efficientnet = meta_build("efficientnet_b3")
    assert freeze_plans(efficientnet)[-2:] == ("conv1-9", "all")
    assert freeze(efficientnet, "conv1-9").trainable_after == 1536 * 2 + 2


def test_plans_on_resnetv2_mobilenet_v3_and_vit() -> None:
    with torch.device("meta"):
        vit = build_model("vit_b_16", num_classes=2)
        resnetv2 = build_model("resnetv2_50", num_classes=2, source="timm")
        mobilenet = build_model("mobilenet_v3_small", num_classes=2)
    assert freeze_plans(vit)[-3:] == ("conv1-12", "conv1-13", "all")
    # the stem is the patch embedding, the class token (a root parameter) and the position
    # embedding (a parameter of the encoder)
    total = sum(p.numel() for p in vit.parameters())
    assert freeze(vit, "conv1").trainable_after == total - (
        768 * 3 * 16 * 16 + 768 + 768 + 197 * 768
    )
    assert not vit.class_token.requires_grad and not vit.encoder.pos_embedding.requires_grad
    assert all(p.requires_grad for p in vit.encoder.layers.encoder_layer_0.parameters())
    assert freeze(vit, "all").trainable_after == 768 * 2 + 2
    # ResNetV2's head is a 1x1 convolution, rebuilt for two classes
    assert isinstance(resnetv2.head.fc, nn.Conv2d) and resnetv2.head.fc.out_channels == 2
    assert freeze_plans(resnetv2)[-2:] == ("conv1-5", "all")
    assert freeze(resnetv2, "all").trainable_after == 2048 * 2 + 2
    assert freeze_plans(mobilenet)[-2:] == ("conv1-7", "all")
    assert freeze(mobilenet, "all").trainable_after == (576 + 1) * 1024 + (1024 + 1) * 2


def test_errors_list_the_legal_values_and_change_nothing() -> None:
    model = meta_build("resnet18")
    with pytest.raises(ConfigError) as info:
        freeze(model, "conv1-9")
    assert str(info.value) == (
        "unknown freeze plan 'conv1-9'; plans: none, conv1, conv1-2, conv1-3, conv1-4, conv1-5, all"
    )
    with pytest.raises(
        ConfigError, match="unknown BatchNorm policy 'eval'; policies: frozen, train"
    ):
        freeze(model, "conv1", bn="eval")
    assert all(p.requires_grad for p in model.parameters())


def test_a_user_stage_map() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3))
    stages = {"stem": ["0", "1"], "body": ("3",)}
    assert freeze_plans(model, stages) == ("none", "conv1", "conv1-2", "all")
    report = freeze(model, "conv1", stages=stages)
    assert report.frozen_stages == ("stem",)
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 2
    model.train()
    assert model[1].training is False
    assert pickle.loads(pickle.dumps(model))[1].training is False
    with pytest.raises(
        ConfigError, match=r"^stage 'body': no module or parameter '9' in Sequential$"
    ):
        freeze(model, "all", stages={"body": ["9"]})


def test_timm_batchnorm_act_layers_are_held_too() -> None:
    import timm

    model = timm.create_model("efficientnet_b0")
    report = freeze(model, "conv1-2")
    assert report.frozen_stages == ("conv1", "conv2")
    assert report.bn_layers_held == 3  # bn1, and the first block's two
    model.train()
    held = model.bn1
    assert type(held).__name__ == "HeldBatchNormAct2d" and held.training is False
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        assert type(clone.bn1).__name__ == "HeldBatchNormAct2d" and clone.bn1.training is False
    unfreeze(model)
    assert type(model.bn1).__name__ == "BatchNormAct2d"
