"""The Hugging Face ResNets (source "hf"): built offline, stage map, surgery, ImageNet weights."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from surgery_helpers import assert_compiles_to_the_same_output
from torch import Tensor, nn
from transformers import ResNetConfig
from transformers.models.resnet.modeling_resnet import (
    ResNetBasicLayer,
    ResNetBottleNeckLayer,
    ResNetConvLayer,
    ResNetForImageClassification,
    ResNetShortCut,
)

from resablate.counting import count
from resablate.errors import WeightsUnavailableError
from resablate.families import family_of, get_family, head_of, list_architectures, stage_map
from resablate.freezing import freeze
from resablate.hf import ResNetLogits, config
from resablate.surgery import drop_residual, residual_blocks, restore_residual, scale_residual
from resablate.weights import build_model, save_state_dict_file

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))

# The architecture fields of microsoft/resnet-N's config.json.
MICROSOFT = {
    18: ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    34: ("basic", [3, 4, 6, 3], [64, 128, 256, 512]),
    50: ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
    101: ("bottleneck", [3, 4, 23, 3], [256, 512, 1024, 2048]),
    152: ("bottleneck", [3, 8, 36, 3], [256, 512, 1024, 2048]),
}
# torchvision's (and the papers') parameter counts with a 1000-class head.
PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize("depth", sorted(MICROSOFT))
def test_every_depth_is_the_microsoft_checkpoint_built_offline(depth: int) -> None:
    family = get_family(f"resnet{depth}", "hf")
    assert (family.depth, family.imagenet, family.head) == (
        depth,
        f"microsoft/resnet-{depth}",
        "classifier.1",
    )
    cfg = config(depth)
    layer_type, depths, hidden_sizes = MICROSOFT[depth]
    assert (cfg.layer_type, list(cfg.depths), list(cfg.hidden_sizes)) == (
        layer_type,
        depths,
        hidden_sizes,
    )
    assert (cfg.embedding_size, cfg.hidden_act, cfg.num_labels) == (64, "relu", 1000)
    assert (cfg.downsample_in_first_stage, cfg.downsample_in_bottleneck) == (False, False)
    with torch.device("meta"):
        model = family.builder()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[depth]
    assert family_of(model) is family
    blocks = residual_blocks(model)
    assert len(blocks) == sum(depths)
    assert blocks[0][0] == "resnet.encoder.stages.0.layers.0"


def test_registry_and_stage_map() -> None:
    assert list_architectures("hf") == [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
    ]
    with torch.device("meta"):
        raw = ResNetForImageClassification(config(18))  # built by the user, not by resablate
    assert family_of(raw) is get_family("resnet18", "hf")
    assert head_of(raw) == "classifier.1"
    assert dict(stage_map(raw)) == {
        "conv1": ("resnet.embedder",),
        "conv2_x": ("resnet.encoder.stages.0",),
        "conv3_x": ("resnet.encoder.stages.1",),
        "conv4_x": ("resnet.encoder.stages.2",),
        "conv5_x": ("resnet.encoder.stages.3",),
    }


def small(layer_type: str) -> ResNetLogits:
    """A compact HF ResNet of the given layer type (two blocks in conv3_x) with random BN stats."""
    torch.manual_seed(0)
    widths = [16, 32, 64, 128] if layer_type == "basic" else [32, 64, 128, 256]
    cfg = ResNetConfig(
        embedding_size=16, hidden_sizes=widths, depths=[1, 2, 1, 1], layer_type=layer_type
    )
    model = ResNetLogits(cfg).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def conv_layer(layer: ResNetConvLayer, x: Tensor) -> Tensor:
    return layer.activation(layer.normalization(layer.convolution(x)))


def reference_block(block: nn.Module, x: Tensor, alpha: float) -> Tensor:
    """HF's basic/bottleneck layer from its own conv layers, the shortcut weighted by alpha."""
    assert isinstance(block, ResNetBasicLayer | ResNetBottleNeckLayer)
    out = x
    for layer in block.layer:
        out = conv_layer(layer, out)
    shortcut = block.shortcut
    if isinstance(shortcut, ResNetShortCut):
        skip = shortcut.normalization(shortcut.convolution(x))
    else:
        assert isinstance(shortcut, nn.Identity)
        skip = x
    if alpha != 0.0:
        out = out + alpha * skip
    return block.activation(out)


def reference(model: ResNetLogits, x: Tensor, alphas: dict[str, float]) -> Tensor:
    embedder = model.resnet.embedder
    x = embedder.pooler(conv_layer(embedder.embedder, x))
    for s, stage in enumerate(model.resnet.encoder.stages):
        for i, block in enumerate(stage.layers):
            x = reference_block(block, x, alphas.get(f"resnet.encoder.stages.{s}.layers.{i}", 1.0))
    return model.classifier(model.resnet.pooler(x))


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_surgery_equals_the_reference_and_restores_exactly(layer_type: str) -> None:
    model = small(layer_type)
    names = [n for n, _ in residual_blocks(model)]
    assert names == [
        "resnet.encoder.stages.0.layers.0",
        "resnet.encoder.stages.1.layers.0",
        "resnet.encoder.stages.1.layers.1",
        "resnet.encoder.stages.2.layers.0",
        "resnet.encoder.stages.3.layers.0",
    ]
    keys = list(model.state_dict())
    shortcuts = sum(p.numel() for n, p in model.named_parameters() if ".shortcut." in n)
    with torch.no_grad():
        untouched = model(X)
        assert torch.equal(reference(model, X, {}), untouched)
        report = drop_residual(model, stages=["conv3_x", "layer3"])
        assert report.blocks_rewired == tuple(names[1:4])
        assert torch.equal(model(X), reference(model, X, dict.fromkeys(names[1:4], 0.0)))
        report = drop_residual(model)
        assert report.inactive_params == shortcuts
        counts = count(model, (3, 32, 32))
        assert counts.params - counts.active_params == report.inactive_params
        scale_residual(model, 0.5, blocks="conv3_x.1")
        expected = reference(model, X, {**dict.fromkeys(names, 0.0), names[2]: 0.5})
        assert torch.equal(model(X), expected)
        assert list(model.state_dict()) == keys
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(X), expected)
        restore_residual(model)
        assert type(model.resnet.encoder.stages[1].layers[1]).__name__ == type(
            model.resnet.encoder.stages[0].layers[0]
        ).__name__.removeprefix("Rewired")
        assert torch.equal(model(X), untouched)


def test_freeze_by_paper_stage_names() -> None:
    model = small("basic")
    report = freeze(model, "conv1-2")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("resnet.embedder.", "resnet.encoder.stages.0."))
    }
    assert report.plan == "conv1-2"


def test_build_model_replaces_the_head_and_returns_logits() -> None:
    torch.manual_seed(1)
    model = build_model("resnet18", source="hf", num_classes=2).eval()
    assert isinstance(model, ResNetLogits)
    assert model.classifier[1].out_features == 2
    assert model(X).shape == (2, 2)


def test_imagenet_weights_from_the_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("resnet18", source="hf", weights="imagenet")  # HF_HUB_OFFLINE=1
    message = str(info.value)
    assert message.startswith(
        f"ImageNet weights microsoft/resnet-18 for resnet18 are not cached at {tmp_path}/"
        "models--microsoft--resnet-18/snapshots/<revision>/model.safetensors and could not be "
        "downloaded ("
    )
    assert "run `resablate weights fetch resnet18` (model source hf) on a connected" in message
    torch.manual_seed(8)
    official = build_model("resnet18", source="hf", num_classes=1000).state_dict()
    published = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    repo = tmp_path / "models--microsoft--resnet-18"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    save_state_dict_file(published, repo / "snapshots" / "0123abc" / "model.safetensors")
    model = build_model("resnet18", source="hf", weights="imagenet", num_classes=1000)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in published.items())


@pytest.mark.slow
def test_torch_compile_after_surgery() -> None:
    model = small("bottleneck")
    drop_residual(model, stages="conv4_x")
    assert_compiles_to_the_same_output(model, X)


def test_cli_surgery_on_the_hugging_face_resnet50() -> None:
    import json

    from typer.testing import CliRunner

    from resablate_cli.app import app

    result = CliRunner().invoke(
        app, ["surgery", "--no-residual", "resnet50", "--source", "hf", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["source"], data["blocks_total"], data["blocks_rewired"]) == ("hf", 16, 16)
    assert (data["params"], data["inactive_params"]) == (25_557_032, 2_776_576)
    assert data["active_params"] == 25_557_032 - 2_776_576
    assert data["stages"] == ["conv2_x", "conv3_x", "conv4_x", "conv5_x"]
