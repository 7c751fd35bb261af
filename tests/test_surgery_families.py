"""Surgery on the residual families beyond ResNet, against references from each block's layers.

Each case names the upstream block class, which of its instances have a skip, and a reference:
the block's forward written out from its own layers with each shortcut weighted by alpha. The
model-level reference is the untouched model with every selected block's output replaced (by a
forward hook) with the reference block's, so it needs no copy of the model's own forward.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import timm
import torch
import torchvision
from surgery_helpers import assert_compiles_to_the_same_output
from timm.models import _efficientnet_blocks as timm_effnet
from timm.models import convnext as timm_convnext
from timm.models import regnet as timm_regnet
from timm.models import resnetv2 as timm_resnetv2
from timm.models import vision_transformer as timm_vit
from torch import Tensor, nn
from torchvision.models import convnext as tv_convnext
from torchvision.models import efficientnet as tv_effnet
from torchvision.models import mobilenetv2 as tv_mnv2
from torchvision.models import mobilenetv3 as tv_mnv3
from torchvision.models import regnet as tv_regnet
from torchvision.models import vision_transformer as tv_vit

from resablate.counting import count
from resablate.errors import ConfigError
from resablate.families import get_family
from resablate.surgery import (
    drop_residual,
    residual_blocks,
    residual_state,
    restore_residual,
    scale_residual,
)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
Alphas = tuple[float, ...]  # one per site of the block, in forward order


def _resnetv2(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    pre = b.norm1(x)
    shortcut = x if b.downsample is None else b.downsample(pre)
    main = b.drop_path(b.conv3(b.norm3(b.conv2(b.norm2(b.conv1(pre))))))
    return main + a[0] * shortcut


def _timm_regnet(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    main = b.drop_path(b.conv3(b.se(b.conv2(b.conv1(x)))))
    return b.act3(main + a[0] * b.downsample(x))


def _timm_convnext(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    if b.use_conv_mlp:  # convnext_atto: norm and MLP in NCHW
        y = b.mlp(b.norm(b.conv_dw(x)))
    else:
        y = b.mlp(b.norm(b.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    y = y.mul(b.gamma.reshape(1, -1, 1, 1))
    return b.drop_path(y) + a[0] * b.shortcut(x)


def _timm_inverted(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    assert b.conv_s2d is None
    y = b.bn2(b.conv_dw(b.bn1(b.conv_pw(x))))
    y = b.bn3(b.conv_pwl(b.se(b.aa(y))))
    return b.drop_path(y) + a[0] * x


def _timm_depthwise(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    assert b.conv_s2d is None
    y = b.bn2(b.conv_pw(b.se(b.aa(b.bn1(b.conv_dw(x))))))
    return b.drop_path(y) + a[0] * x


def _timm_vit(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    x = a[0] * x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
    return a[1] * x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


def _tv_regnet(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    shortcut = x if b.proj is None else b.proj(x)
    return b.activation(b.f(x) + a[0] * shortcut)


def _tv_convnext(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    return b.stochastic_depth(b.layer_scale * b.block(x)) + a[0] * x


def _tv_mnv2(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    return a[0] * x + b.conv(x)


def _tv_block_skip(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    return b.stochastic_depth(b.block(x)) + a[0] * x


def _tv_mnv3(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    return b.block(x) + a[0] * x


def _tv_vit(b: nn.Module, x: Tensor, a: Alphas) -> Tensor:
    y = b.ln_1(x)
    y, _ = b.self_attention(y, y, y, need_weights=False)
    x = b.dropout(y) + a[0] * x
    return a[1] * x + b.mlp(b.ln_2(x))


@dataclass(frozen=True)
class Case:
    """A model, its residual block classes with their skip test, the reference and site names."""

    build: Callable[[], nn.Module]
    blocks: dict[type, tuple[Callable[[nn.Module], bool], Callable[..., Tensor]]]
    sites: tuple[str, ...] = ("",)


def _always(block: nn.Module) -> bool:
    return True


CASES = {
    "timm-resnetv2_50": Case(
        lambda: timm.create_model("resnetv2_50"),
        {timm_resnetv2.PreActBottleneck: (_always, _resnetv2)},
    ),
    "timm-regnety_002": Case(
        lambda: timm.create_model("regnety_002"),
        {timm_regnet.Bottleneck: (lambda b: b.downsample is not None, _timm_regnet)},
    ),
    "timm-convnext_atto": Case(
        lambda: timm.create_model("convnext_atto"),
        {timm_convnext.ConvNeXtBlock: (_always, _timm_convnext)},
    ),
    "timm-mobilenetv3_small_050": Case(
        lambda: timm.create_model("mobilenetv3_small_050"),
        {
            timm_effnet.InvertedResidual: (lambda b: b.has_skip, _timm_inverted),
            timm_effnet.DepthwiseSeparableConv: (lambda b: b.has_skip, _timm_depthwise),
        },
    ),
    "timm-efficientnet_b0": Case(
        lambda: timm.create_model("efficientnet_b0"),
        {
            timm_effnet.InvertedResidual: (lambda b: b.has_skip, _timm_inverted),
            timm_effnet.DepthwiseSeparableConv: (lambda b: b.has_skip, _timm_depthwise),
        },
    ),
    "timm-vit_tiny": Case(
        lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3),
        {timm_vit.Block: (_always, _timm_vit)},
        ("attn", "mlp"),
    ),
    "torchvision-regnet_y_400mf": Case(
        torchvision.models.regnet_y_400mf,
        {tv_regnet.ResBottleneckBlock: (_always, _tv_regnet)},
    ),
    "torchvision-convnext": Case(
        lambda: tv_convnext.ConvNeXt(
            [tv_convnext.CNBlockConfig(16, 32, 2), tv_convnext.CNBlockConfig(32, None, 1)]
        ),
        {tv_convnext.CNBlock: (_always, _tv_convnext)},
    ),
    "torchvision-mobilenet_v2": Case(
        torchvision.models.mobilenet_v2,
        {tv_mnv2.InvertedResidual: (lambda b: b.use_res_connect, _tv_mnv2)},
    ),
    "torchvision-mobilenet_v3_small": Case(
        torchvision.models.mobilenet_v3_small,
        {tv_mnv3.InvertedResidual: (lambda b: b.use_res_connect, _tv_mnv3)},
    ),
    "torchvision-efficientnet_b0": Case(
        torchvision.models.efficientnet_b0,
        {tv_effnet.MBConv: (lambda b: b.use_res_connect, _tv_block_skip)},
    ),
    "torchvision-vit": Case(
        lambda: tv_vit.VisionTransformer(
            image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64
        ),
        {tv_vit.EncoderBlock: (_always, _tv_vit)},
        ("self_attention", "mlp"),
    ),
}
_BUILT: dict[str, nn.Module] = {}


def pristine(name: str) -> nn.Module:
    """A deep copy of one eval-mode model per case, with non-trivial normalisation statistics."""
    if name not in _BUILT:
        torch.manual_seed(0)
        model = CASES[name].build().eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        _BUILT[name] = model
    return copy.deepcopy(_BUILT[name])


def expected_blocks(case: Case, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks with a skip, found from the upstream classes (not by the library)."""
    found = []
    for path, module in model.named_modules():
        entry = case.blocks.get(type(module))
        if entry is not None and entry[0](module):
            found.append((path, module))
    return found


def reference(case: Case, model: nn.Module, alphas: dict[str, Alphas]) -> Tensor:
    """The untouched ``model`` with each listed block computed by its reference."""
    handles = []
    for path, block in expected_blocks(case, model):
        if path in alphas:
            ref = case.blocks[type(block)][1]

            def hook(m: nn.Module, args: tuple, out: Tensor, ref=ref, a=alphas[path]) -> Tensor:
                return ref(m, args[0], a)

            handles.append(block.register_forward_hook(hook))
    try:
        return model(X)
    finally:
        for handle in handles:
            handle.remove()


def site_names(case: Case, paths: list[str]) -> list[str]:
    return [f"{p}.{s}" if s else p for p in paths for s in case.sites]


@pytest.mark.parametrize("name", sorted(CASES))
def test_drop_scale_restore_against_the_reference(name: str) -> None:
    case = CASES[name]
    model, untouched_model = pristine(name), pristine(name)
    paths = [p for p, _ in expected_blocks(case, untouched_model)]
    assert paths, "the case has residual blocks"
    assert [n for n, _ in residual_blocks(model)] == site_names(case, paths)
    keys = list(model.state_dict())
    ones = (1.0,) * len(case.sites)
    with torch.no_grad():
        untouched = model(X)
        assert torch.equal(reference(case, untouched_model, dict.fromkeys(paths, ones)), untouched)
        report = drop_residual(model)
        assert report.blocks_total == len(paths) * len(case.sites)
        zeros = (0.0,) * len(case.sites)
        dropped = reference(case, untouched_model, dict.fromkeys(paths, zeros))
        assert torch.equal(model(X), dropped)
        counts = count(model, (3, 32, 32))
        assert counts.params - counts.active_params == report.inactive_params
        half = paths[len(paths) // 2 :]
        restore_residual(model)
        scale_residual(model, 0.5, blocks=half)
        halves = (0.5,) * len(case.sites)
        expected = reference(case, untouched_model, dict.fromkeys(half, halves))
        assert torch.equal(model(X), expected)
        assert list(model.state_dict()) == keys
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(X), expected)
        restore_residual(model)
        assert [type(m) for m in model.modules()] == [type(m) for m in untouched_model.modules()]
        assert torch.equal(model(X), untouched)


@pytest.mark.parametrize("name", ["timm-vit_tiny", "torchvision-vit"])
def test_attention_and_mlp_residuals_are_selected_separately(name: str) -> None:
    case = CASES[name]
    model, untouched_model = pristine(name), pristine(name)
    paths = [p for p, _ in expected_blocks(case, untouched_model)]
    attention, mlp = case.sites
    report = drop_residual(model, blocks=[f"{p}.{attention}" for p in paths])
    assert report.blocks_rewired == tuple(f"{p}.{attention}" for p in paths)
    assert report.inactive_params == 0  # the attention shortcut is the identity
    with torch.no_grad():
        assert torch.equal(
            model(X), reference(case, untouched_model, dict.fromkeys(paths, (0.0, 1.0)))
        )
        scale_residual(model, 0.5, blocks=f"{paths[1]}.{mlp}")
        alphas = {**dict.fromkeys(paths, (0.0, 1.0)), paths[1]: (0.0, 0.5)}
        assert torch.equal(model(X), reference(case, untouched_model, alphas))
    state = residual_state(model)
    assert state[f"{paths[1]}.{mlp}"] == {"alpha": 0.5, "lesioned": False}
    assert state[f"{paths[0]}.{mlp}"] == {"alpha": 1.0, "lesioned": False}


def test_a_dropped_projection_is_inactive_and_not_run() -> None:
    model = pristine("torchvision-regnet_y_400mf")
    projections = [m for m in model.modules() if isinstance(m, tv_regnet.ResBottleneckBlock)]
    calls: list[int] = []
    for block in projections:
        if block.proj is not None:
            block.proj.register_forward_hook(lambda m, i, o: calls.append(1))
    report = drop_residual(model)
    model(X)
    assert calls == []
    idle = sum(p.numel() for b in projections if b.proj is not None for p in b.proj.parameters())
    assert report.inactive_params == idle == 121_280


@pytest.mark.slow
def test_torch_compile_after_surgery_on_a_vit() -> None:
    model = pristine("timm-vit_tiny")
    drop_residual(model, blocks="blocks.1.mlp")
    assert_compiles_to_the_same_output(model, X)


@pytest.mark.parametrize(
    ("source", "arch", "stage", "blocks", "sites"),
    [
        ("timm", "resnetv2_50", "conv3_x", [f"stages.1.blocks.{i}" for i in range(4)], ("",)),
        # features.4 strides and widens: no skip
        ("torchvision", "mobilenet_v3_large", "conv4", ["features.5", "features.6"], ("",)),
        ("torchvision", "mobilenet_v3_small", "conv5", ["features.8"], ("",)),
        ("timm", "vit_tiny_patch16_224", "block2", ["blocks.1"], ("attn", "mlp")),
        (
            "torchvision",
            "vit_b_16",
            "BLOCK2",
            ["encoder.layers.encoder_layer_1"],
            CASES["torchvision-vit"].sites,
        ),
    ],
)
def test_surgery_by_stage_name_on_the_registered_families(
    source: str, arch: str, stage: str, blocks: list[str], sites: tuple[str, ...]
) -> None:
    with torch.device("meta"):
        model = get_family(arch, source).builder()
    report = drop_residual(model, stages=stage)
    # both residuals of a ViT block by default; each one alone by its site name
    assert report.blocks_rewired == tuple(f"{b}.{s}" if s else b for b in blocks for s in sites)
    assert [s.stage for s in report.stages if s.blocks_rewired] == [stage.lower()]
    restore_residual(model)
    if len(sites) == 2:
        report = scale_residual(model, 0.5, blocks=f"{blocks[0]}.{sites[1]}")
        assert report.blocks_rewired == (f"{blocks[0]}.{sites[1]}",)
    with pytest.raises(ConfigError, match="has no residual blocks"):
        drop_residual(model, stages=next(iter(get_family(arch, source).stages)))
