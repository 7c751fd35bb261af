"""One session for K >= 1 groups: what a pack costs beyond its cells (issue 23's defects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sync_census import SyncCensus
from test_engine import TinySource
from test_engine_packed import RECIPE, TEST, TRAIN, _resnet10
from test_packing import ablate

from resablate.data import BatchTransform
from resablate.engine import loop
from resablate.engine.checkpoint import CHECKPOINT_DIR
from resablate.engine.evaluate import evaluate_groups
from resablate.engine.groups import OneModel, replicate
from resablate.packing import PackedBatchNorm2d, PackedGroups, fuse, idle_groups


def _pack(*residuals: str) -> torch.nn.Module:
    models = []
    for seed, residual in enumerate(residuals):
        torch.manual_seed(seed)
        models.append(ablate(_resnet10(), residual, "none"))
    return fuse(models)


def test_k_generators_augment_each_chunk_as_alone() -> None:
    transform = BatchTransform(output_size=12, train=True, crop="random_resized_crop")
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    seeds = (3, 4, 5)
    together = transform(images, [torch.Generator().manual_seed(s) for s in seeds])
    alone = [
        transform(chunk, torch.Generator().manual_seed(s))
        for chunk, s in zip(images.chunk(3), seeds, strict=True)
    ]
    assert torch.equal(together, torch.cat(alone))


def test_packed_groups_join_what_pack_inputs_would() -> None:
    packed = _pack("on", "off")
    groups = PackedGroups(packed)
    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert torch.equal(groups.join(torch.cat([a, b])), torch.cat([a, b], dim=1))
    assert torch.equal(replicate(groups, a), torch.cat([a, a], dim=1))
    assert torch.equal(replicate(OneModel(packed), a), a)


def test_held_batchnorm_masks_live_on_the_layers_device_and_cost_no_copy() -> None:
    packed = _pack("on", "off")  # layer2's and layer4's shortcut BN hold group 1
    norm = packed.layer2[0].downsample[1]
    assert isinstance(norm, PackedBatchNorm2d) and norm.held is not None
    assert norm.held.tolist() == [False, True]
    packed.to(torch.float64)
    assert norm.held.dtype == torch.bool and norm._held_channels.dtype == torch.bool
    assert norm._held_channels.shape == (norm.num_features,)
    with SyncCensus() as census:
        packed(torch.randn(2, 6, 16, 16, dtype=torch.float64))
    assert dict(census.calls) == {}
    packed.to("meta")
    assert norm.held.device.type == "meta" and norm._held_channels.device.type == "meta"


def test_a_packed_block_keeps_bf16_outputs_bf16() -> None:
    packed = _pack("on", "half")  # layer2 and layer3 scale the shortcut of group 1 by 0.5
    block = packed.layer2[0]
    assert block.pack_scale.shape == (1, 2 * 128, 1, 1)
    assert block.pack_scale.view(2, -1)[:, 0].tolist() == [1.0, 0.5]
    x = torch.randn(2, 2 * 64, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(x).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("residuals", "copied"),
    [(("on", "on"), None), (("on", "off"), "idle")],
    ids=["nothing-idle", "idle-shortcuts"],
)
def test_a_pack_copies_only_the_slices_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, residuals: tuple[str, ...], copied: str | None
) -> None:
    held: list[set[str]] = []
    real = loop.masked_update

    def recording(optimizer, update, masks):  # type: ignore[no-untyped-def]
        names = {id(p): n for n, p in packed.named_parameters()}
        held.append({names[id(p)] for p in masks})
        real(optimizer, update, masks)

    monkeypatch.setattr(loop, "masked_update", recording)
    packed = _pack(*residuals)
    loop.train_groups(
        packed,
        PackedGroups(packed),
        TRAIN,
        TEST,
        RECIPE,
        checkpoint_dir=tmp_path / CHECKPOINT_DIR,
        run_dirs=[tmp_path / "a", tmp_path / "b"],
        seeds=[0, 1],
    )
    if copied is None:
        assert held == []
    else:
        assert held == [set(idle_groups(packed))] * RECIPE.max_steps


def test_evaluation_copies_nothing_per_batch() -> None:
    model = _resnet10().eval()
    calls = []
    for n in (8, 24):  # one batch, three batches
        with SyncCensus() as census:
            evaluate_groups(
                model,
                OneModel(model),
                TinySource(n, 0),
                lambda images, generator: images.float() / 255,
                split="test",
                num_classes=2,
                positive=1,
                batch_size=8,
                device=torch.device("cpu"),
            )
        calls.append(dict(census.calls))
    assert calls[0] == calls[1]
