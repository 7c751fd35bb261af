"""The registry: what is registered, stage names, stage maps that fit the built models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resablate import list_architectures
from resablate.errors import ConfigError
from resablate.families import (
    canonical_stage,
    family_of,
    get_family,
    head_features,
    head_of,
    list_families,
    paper_stage,
    register,
    stage_map,
    stage_member,
)
from resablate.surgery import residual_blocks

TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "alexnet",
    "vgg16",
    "efficientnet_b0",
    "efficientnet_b3",
    "efficientnet_b4",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "convnext_tiny",
    "regnet_y_400mf",
    "vit_b_16",
]


def test_registered_architectures() -> None:
    assert list_architectures("torchvision") == TORCHVISION
    assert list_architectures("timm") == [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnetv2_50",
        "regnety_016",
        "convnext_tiny",
        "efficientnet_b0",
        "mobilenetv3_large_100",
        "vit_tiny_patch16_224",
    ]
    assert list_architectures() == [
        *TORCHVISION,
        "resnetv2_50",
        "regnety_016",
        "mobilenetv3_large_100",
        "vit_tiny_patch16_224",
    ]
    assert [f.arch for f in list_families() if not f.residual] == ["alexnet", "vgg16"]
    assert get_family("ResNet50").depth == 50
    assert get_family("resnext101_64x4d").depth == 101
    assert get_family("resnet50", "timm").imagenet == "resnet50.a1_in1k"


def test_registering_twice_raises() -> None:
    with pytest.raises(ConfigError, match=r"'resnet50' \(timm\) is already registered"):
        register(get_family("resnet50", "timm"))


def test_unknown_architecture_and_source() -> None:
    with pytest.raises(ConfigError) as info:
        get_family("resnet77")
    assert str(info.value).startswith(
        "unknown architecture 'resnet77'; ResNet depths: 18, 34, 50, 101, 152; architectures: "
        "resnet18, resnet34"
    )
    with pytest.raises(ConfigError, match=r"for source timm \(it exists with source torchvision\)"):
        get_family("vgg16", "timm")
    with pytest.raises(ConfigError, match="unknown source 'keras'; sources: torchvision, timm"):
        get_family("resnet50", "keras")


@pytest.mark.parametrize(
    ("name", "code", "paper"),
    [
        ("conv1", "conv1", "conv1"),
        ("STEM", "conv1", "conv1"),
        ("conv2_x", "layer1", "conv2_x"),
        ("Conv4_X", "layer3", "conv4_x"),
        ("LAYER3", "layer3", "conv4_x"),
        ("layer4", "layer4", "conv5_x"),
    ],
)
def test_stage_names(name: str, code: str, paper: str) -> None:
    assert canonical_stage(name) == code
    assert paper_stage(name) == paper


def test_unknown_stage_lists_the_legal_names() -> None:
    with pytest.raises(ConfigError) as info:
        canonical_stage("conv6_x")
    assert str(info.value) == (
        "unknown stage 'conv6_x'; stages: conv1, conv2_x, conv3_x, conv4_x, conv5_x, "
        "layer1, layer2, layer3, layer4"
    )
    alexnet = get_family("alexnet")
    assert canonical_stage("CONV3", alexnet) == "conv3"
    with pytest.raises(ConfigError, match="for alexnet; stages: conv1, conv2, conv3, conv4, conv5"):
        canonical_stage("conv2_x", alexnet)


@pytest.mark.parametrize("family", list_families(), ids=lambda f: f"{f.source}-{f.arch}")
def test_stage_map_and_head_fit_the_built_model(family) -> None:  # type: ignore[no-untyped-def]
    with torch.device("meta"):
        model = family.builder()
    assert family_of(model) is family or family_of(model).stages == family.stages
    paths = [p for group in family.stages.values() for p in group]
    assert len(paths) == len(set(paths))
    for path in paths:
        stage_member(model, path)
    assert sum(p.numel() for p in model.parameters()) == family.params
    head = model.get_submodule(family.head)
    assert head_features(head) is not None
    assert head.weight.shape[0] == 1000
    assert head_of(model) == family.head
    if family.kind == "resnet":
        # He et al. 2016: four stages for ImageNet, three for CIFAR (depth 6n + 2)
        blocks = {18: 8, 34: 16, 50: 16, 101: 33, 152: 50, 20: 9, 32: 15, 44: 21, 56: 27}
        last = "conv4_x" if family.arch.startswith("cifar_") else "conv5_x"
        stages = ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x"]
        assert list(family.stages) == stages[: stages.index(last) + 1]
        names = [name for name, _ in residual_blocks(model)]
        assert len(names) == blocks[family.depth]
        assert names[0].startswith(family.stages["conv2_x"][0] + ".")
        assert names[-1].startswith(family.stages[last][0] + ".")
    else:
        # every conv layer of the feature extractor belongs to exactly one stage
        convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)} - {family.head}
        staged = {n for n in convs if any(n == p or n.startswith(p + ".") for p in paths)}
        assert staged == convs


def test_sequential_stage_maps() -> None:
    alexnet = get_family("alexnet").stages
    assert alexnet["conv1"] == ("features.0", "features.1", "features.2")
    assert alexnet["conv5"] == ("features.10", "features.11", "features.12")
    assert len(get_family("vgg16").stages) == 5
    assert get_family("vgg16").stages["conv3"][0] == "features.10"
    assert list(get_family("efficientnet_b4").stages) == [f"conv{i}" for i in range(1, 10)]


def test_a_model_of_another_layout_is_not_mistaken_for_a_family() -> None:
    import torchvision

    with torch.device("meta"):
        vgg11 = torchvision.models.vgg11()
        resnet = torchvision.models.resnet18()
    assert family_of(vgg11) is None
    with pytest.raises(ConfigError, match="no stage map for VGG"):
        stage_map(vgg11)
    assert stage_map(resnet)["conv1"] == ("conv1", "bn1", "relu", "maxpool")


@pytest.mark.parametrize("arch", ["efficientnet_b0", "efficientnet_b3", "efficientnet_b4"])
def test_efficientnets_are_told_apart_by_structure(arch: str) -> None:
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(num_classes=2)  # any head
    assert family_of(model) is get_family(arch)


def test_stage_maps_of_the_other_residual_families() -> None:
    assert get_family("mobilenet_v2").stages["conv4"] == ("features.4", "features.5", "features.6")
    assert get_family("convnext_tiny").stages["conv3"] == ("features.2", "features.3")
    assert get_family("regnet_y_400mf").stages["conv5"] == ("trunk_output.block4",)
    assert get_family("regnety_016", "timm").stages["conv5"] == ("s4", "final_conv")
    assert list(get_family("mobilenetv3_large_100", "timm").stages) == [
        f"conv{i}" for i in range(1, 10)
    ]


def test_stage_maps_of_resnetv2_mobilenet_v3_and_vit() -> None:
    resnetv2 = get_family("resnetv2_50", "timm")
    assert dict(resnetv2.stages) == {
        "conv1": ("stem",),
        "conv2_x": ("stages.0",),
        "conv3_x": ("stages.1",),
        "conv4_x": ("stages.2",),
        "conv5_x": ("stages.3", "norm"),
    }
    assert canonical_stage("conv3_x", resnetv2) == "conv3_x"
    large, small = get_family("mobilenet_v3_large"), get_family("mobilenet_v3_small")
    assert [len(v) for v in large.stages.values()] == [1, 1, 2, 3, 4, 2, 3, 1]
    assert [len(v) for v in small.stages.values()] == [1, 1, 2, 3, 2, 3, 1]
    timm_vit, tv_vit = get_family("vit_tiny_patch16_224", "timm"), get_family("vit_b_16")
    assert (
        list(timm_vit.stages)
        == list(tv_vit.stages)
        == ["stem"] + [f"block{i}" for i in range(1, 13)]
    )
    assert timm_vit.stages["stem"] == ("patch_embed", "cls_token", "pos_embed", "norm_pre")
    assert tv_vit.stages["stem"] == ("conv_proj", "class_token", "encoder.pos_embedding")
    assert tv_vit.stages["block12"] == ("encoder.layers.encoder_layer_11", "encoder.ln")
    assert canonical_stage("STEM", tv_vit) == "stem"
    with torch.device("meta"):
        timm_model = timm_vit.builder()
    assert isinstance(stage_member(timm_model, "cls_token"), nn.Parameter)
    with pytest.raises(AttributeError):
        stage_member(timm_model, "no_such_token")
