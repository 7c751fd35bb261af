"""He et al. 2016's CIFAR ResNets: golden counts, surgery per stage, freezing and packing."""

from __future__ import annotations

import pytest
import torch
from test_counting import fvcore_flops

from resablate.counting import count
from resablate.errors import ConfigError
from resablate.families import CIFAR_DEPTHS, family_of, get_family
from resablate.freezing import freeze
from resablate.packing import fuse, pack_inputs, split_outputs, unpackable_reason
from resablate.surgery import drop_residual, residual_blocks, restore_residual
from resablate.weights import build_model

# Parameters with a 10-class head (the paper's Table 6: 0.27, 0.46, 0.66, 0.85 M with option A;
# option B's two projections add 2,752), and fvcore's FlopCountAnalysis at 32×32, batch 1
# (one multiply-add = one flop), residual on and every residual connection dropped.
GOLDEN = {
    20: (272_474, 41_218_688, 40_931_968),
    32: (466_906, 69_759_616, 69_472_896),
    44: (661_338, 98_300_544, 98_013_824),
    56: (855_770, 126_841_472, 126_554_752),
}
PROJECTIONS = 2_752  # 16->32 and 32->64 1×1 convolutions (512 + 2,048) and their BN (64 + 128)


def test_golden_numbers_cover_the_registered_depths() -> None:
    assert tuple(GOLDEN) == CIFAR_DEPTHS


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_golden_params_and_flops(depth: int) -> None:
    params, flops_on, flops_off = GOLDEN[depth]
    with torch.device("meta"):
        model = build_model(f"cifar_resnet{depth}", num_classes=10)
    counts = count(model, (3, 32, 32))
    assert counts.params == counts.active_params == params
    assert counts.flops == flops_on
    assert [s.stage for s in counts.stages] == ["conv1", "conv2_x", "conv3_x", "conv4_x", "head"]
    report = drop_residual(model)
    assert report.inactive_params == PROJECTIONS
    assert count(model, (3, 32, 32)).flops == flops_off


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_flops_equal_live_fvcore() -> None:
    model = build_model("cifar_resnet20", num_classes=10).eval()
    assert fvcore_flops(model, 32) == GOLDEN[20][1]
    drop_residual(model)
    assert fvcore_flops(model, 32) == GOLDEN[20][2]


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_layout_is_the_papers(depth: int) -> None:
    n = (depth - 2) // 6
    with torch.device("meta"):
        model = build_model(f"cifar_resnet{depth}", num_classes=10)
    assert family_of(model) is get_family(f"cifar_resnet{depth}")
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.out_channels) == (
        (3, 3),
        (1, 1),
        16,
    )
    for stage, width, stride in (("layer1", 16, 1), ("layer2", 32, 2), ("layer3", 64, 2)):
        blocks = model.get_submodule(stage)
        assert len(blocks) == n
        assert blocks[0].conv1.stride == (stride, stride)
        assert blocks[-1].bn2.num_features == width
        assert (blocks[0].downsample is None) == (stride == 1)
    assert len(residual_blocks(model)) == 3 * n
    # 6n + 2 weighted layers: the stem, two convolutions per block, the head
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len([c for c in convs if "downsample" not in c]) + 1 == depth


def test_surgery_drops_every_stage_and_restores_the_model() -> None:
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    before = model(images)
    for stage, code in (("conv2_x", "layer1"), ("conv3_x", "layer2"), ("layer3", "layer3")):
        report = drop_residual(model, stages=stage)
        assert report.blocks_rewired == tuple(f"{code}.{i}" for i in range(3))
    assert not torch.equal(model(images), before)
    restore_residual(model)
    assert torch.equal(model(images), before)
    with pytest.raises(ConfigError, match=r"unknown stage 'conv5_x'; stages: conv1, conv2_x"):
        drop_residual(model, stages="conv5_x")


def test_freeze_sweep() -> None:
    with torch.device("meta"):
        model = build_model("cifar_resnet20", num_classes=10)
    trainable = {}
    for plan in ("none", "conv1", "conv1-2", "conv1-3", "conv1-4", "all"):
        freeze(model, plan)
        trainable[plan] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == {
        "none": 272_474,
        "conv1": 272_474 - 464,
        "conv1-2": 272_474 - 464 - 14_016,
        "conv1-3": 272_474 - 464 - 14_016 - 51_648,
        "conv1-4": 650,
        "all": 650,
    }


def test_packed_pair_computes_what_each_model_computes_alone() -> None:
    models = []
    for seed, residual in ((0, "on"), (1, "off")):
        torch.manual_seed(seed)
        model = build_model("cifar_resnet20", num_classes=2).double()
        if residual == "off":
            drop_residual(model)
        models.append(model)
    assert unpackable_reason(models[1]) is None
    packed = fuse(models)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(4, 3, 32, 32, generator=generator).double() for _ in range(2)]
    for mode in (True, False):
        logits = split_outputs(packed.train(mode)(pack_inputs(images)), 2)
        for k, model in enumerate(models):
            assert torch.equal(logits[k], model.train(mode)(images[k])), (k, mode)
