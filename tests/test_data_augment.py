"""Batched augmentation: determinism, geometry, agreement with torchvision, output contract."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as tvf

from resablate.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchTransform,
    CropParams,
    RecyclingTransform,
    random_resized_crop_params,
    resample_weights,
)
from resablate.errors import ConfigError
from resablate.recipes import get_recipe

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _images(n: int = 6, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=generator, dtype=torch.uint8)


def _normalised(image: torch.Tensor) -> torch.Tensor:
    return (image.float() / 255 - MEAN) / STD


def test_same_generator_state_gives_identical_batches() -> None:
    transform = BatchTransform(24, train=True)
    images = _images()
    first = transform(images, torch.Generator().manual_seed(7))
    second = transform(images, torch.Generator().manual_seed(7))
    other = transform(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_output_shape_dtype_device_and_normalisation() -> None:
    transform = BatchTransform(40, train=True)
    out = transform(_images(5, 32, 48), torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 40, 40) and out.dtype == torch.float32 and out.device.type == "cpu"
    # An image at the mean colour normalises to 0 everywhere, whatever the crop and flip.
    mean_colour = torch.tensor([round(m * 255) for m in IMAGENET_MEAN], dtype=torch.uint8)
    flat = mean_colour.view(1, 3, 1, 1).expand(4, 3, 16, 16).contiguous()
    expected = torch.tensor(
        [(round(m * 255) / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )
    out = BatchTransform(8, train=True)(flat, torch.Generator().manual_seed(0))
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)
    # Plain [0, 1] scaling when mean 0 and std 1.
    unit = BatchTransform(32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    images = _images(2)
    assert torch.allclose(unit(images), images.float() / 255, atol=1e-7)


def test_full_image_crop_without_flip_equals_the_eval_resize() -> None:
    images = _images(4, 20, 28)
    train = BatchTransform(48, train=True)
    full = CropParams.full(4, 20, 28, torch.device("cpu"))
    assert torch.equal(train.apply(images, full), BatchTransform(48)(images))


def test_flip_mirrors_the_output() -> None:
    images = _images(3)
    transform = BatchTransform(20, train=True)
    params = transform.sample_params(3, 32, 32, torch.Generator().manual_seed(1))
    plain = CropParams(
        params.top, params.left, params.height, params.width, torch.zeros(3, dtype=torch.bool)
    )
    flipped = CropParams(
        params.top, params.left, params.height, params.width, torch.ones(3, dtype=torch.bool)
    )
    assert torch.allclose(
        transform.apply(images, flipped), transform.apply(images, plain).flip(3), atol=1e-6
    )


def test_a_box_at_scale_one_is_exactly_that_region() -> None:
    images = _images(2, 16, 16)
    params = CropParams(
        top=torch.tensor([2, 5]),
        left=torch.tensor([4, 0]),
        height=torch.tensor([8, 8]),
        width=torch.tensor([8, 8]),
        flip=torch.tensor([False, True]),
    )
    out = BatchTransform(8, train=True).apply(images, params)
    assert torch.allclose(out[0], _normalised(images[0, :, 2:10, 4:12]), atol=1e-6)
    assert torch.allclose(out[1], _normalised(images[1, :, 5:13, 0:8]).flip(2), atol=1e-6)


@pytest.mark.parametrize("size", [12, 64])  # down-scaling (antialiased) and up-scaling
@pytest.mark.parametrize(("height", "width"), [(24, 30), (30, 24)])  # both product orders
def test_matches_torchvision_resized_crop_per_image(size: int, height: int, width: int) -> None:
    images = _images(6, height, width)
    transform = BatchTransform(size, train=True)
    params = transform.sample_params(6, height, width, torch.Generator().manual_seed(4))
    out = transform.apply(images, params)
    for i in range(6):
        box = (int(params.top[i]), int(params.left[i]), int(params.height[i]), int(params.width[i]))
        reference = tvf.resized_crop(images[i].float(), *box, [size, size], antialias=True)
        if params.flip[i]:
            reference = reference.flip(2)
        assert torch.allclose(out[i], _normalised(reference), atol=1e-5), i


def test_eval_mode_resizes_like_torchvision_and_draws_nothing() -> None:
    images = _images(3, 40, 40)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    out = BatchTransform(24)(images, generator)
    assert torch.equal(generator.get_state(), state)
    reference = tvf.resize(images.float(), [24, 24], antialias=True)
    assert torch.allclose(out, _normalised(reference), atol=1e-5)


def test_resize_recipe_at_storage_size_is_normalise_and_flip() -> None:
    images = _images(8, 16, 16)
    transform = BatchTransform(16, train=True, crop="resize")
    generator = torch.Generator().manual_seed(2)
    out = transform(images, generator)
    flips = (
        BatchTransform(16, train=True, crop="resize")
        .sample_params(8, 16, 16, torch.Generator().manual_seed(2))
        .flip
    )
    assert 0 < int(flips.sum()) < 8
    for i in range(8):
        expected = _normalised(images[i])
        assert torch.allclose(out[i], expected.flip(2) if flips[i] else expected, atol=1e-6)


def test_random_boxes_respect_scale_and_ratio() -> None:
    top, left, h, w = random_resized_crop_params(
        2000, 32, 32, torch.Generator().manual_seed(0), (0.08, 1.0), (3 / 4, 4 / 3)
    )
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32)).all())
    area = (h * w).float() / (32 * 32)
    assert area.min() >= 0.06 and area.max() <= 1.0  # rounding to whole pixels widens 0.08
    # Same distribution as torchvision's own sampler (big boxes of extreme aspect are rejected).
    torch.manual_seed(0)
    reference = [
        RandomResizedCrop.get_params(torch.empty(3, 32, 32), [0.08, 1.0], [3 / 4, 4 / 3])
        for _ in range(2000)
    ]
    reference_area = sum(rh * rw for _, _, rh, rw in reference) / (2000 * 32 * 32)
    assert area.mean().item() == pytest.approx(reference_area, abs=0.02)
    aspect = w.float() / h.float()
    assert aspect.min() >= 0.6 and aspect.max() <= 1.6
    assert math.isclose((w > h).float().mean().item(), (h > w).float().mean().item(), abs_tol=0.05)


def test_boxes_never_valid_fall_back_to_a_centre_crop() -> None:
    # A 4x40 strip cannot hold a box of aspect 3/4..4/3 and area >= 0.9: torchvision's fallback.
    top, left, h, w = random_resized_crop_params(
        3, 4, 40, torch.Generator().manual_seed(0), (0.9, 1.0), (3 / 4, 4 / 3)
    )
    assert h.tolist() == [4, 4, 4] and w.tolist() == [5, 5, 5]
    assert top.tolist() == [0, 0, 0] and left.tolist() == [17, 17, 17]


def test_from_recipe() -> None:
    recipe = get_recipe("cifake")
    train = BatchTransform.from_recipe(recipe, train=True)
    assert (train.output_size, train.crop, train.hflip, train.train) == (
        recipe.image_size,
        recipe.train_transform,
        recipe.hflip,
        True,
    )
    assert train.mean == tuple(recipe.mean) and train.std == tuple(recipe.std)
    assert BatchTransform.from_recipe(recipe, train=False).train is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_size": 0}, "output_size must be a positive integer"),
        ({"output_size": 8, "crop": "centre"}, "unknown crop 'centre'; choose one of"),
        ({"output_size": 8, "scale": (0.5, 0.2)}, "crop scale must satisfy"),
        ({"output_size": 8, "std": (1.0, 0.0, 1.0)}, "mean and std need 3 values each"),
    ],
)
def test_invalid_settings_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BatchTransform(**kwargs)


def test_wrong_image_shape_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"expected images of shape \[B, 3, H, W\], got \[2, 1, 8, 8\]"
    ):
        BatchTransform(8, train=True)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def _dense_weights(offset: torch.Tensor, length: torch.Tensor, size_in: int, size_out: int):
    """The triangle filter evaluated at every input pixel (the definition the taps must match)."""
    scale = length.to(torch.float32) / size_out  # float32 arithmetic, as the taps use
    support = scale.clamp(min=1.0)
    centre = (torch.arange(size_out) + 0.5)[None, :] * scale[:, None]
    position = torch.arange(size_in)[None, :] - offset[:, None]
    distance = (position[:, None, :] + 0.5 - centre[:, :, None]) / support[:, None, None]
    weights = (1.0 - distance.abs()).clamp(min=0.0)
    weights = weights * ((position >= 0) & (position < length[:, None]))[:, None, :]
    return weights / weights.sum(dim=2, keepdim=True)


@pytest.mark.parametrize(("size_in", "size_out"), [(32, 224), (32, 32), (37, 5), (256, 224)])
def test_resample_weights_equal_the_filter_at_every_pixel(size_in: int, size_out: int) -> None:
    generator = torch.Generator().manual_seed(3)
    top, _, height, _ = random_resized_crop_params(64, size_in, size_in, generator)
    weights = resample_weights(top, height, size_in, size_out)
    expected = _dense_weights(top, height, size_in, size_out)
    assert weights.shape == (64, size_out, size_in) and weights.dtype == torch.float32
    assert torch.allclose(weights, expected, rtol=0, atol=2e-7)  # summation order aside
    assert torch.equal(weights != 0, expected != 0)  # no tap missed, none outside the box


@pytest.mark.parametrize("size", [32, 48])  # no resampling (normalise + flip) and resampling
def test_out_receives_exactly_the_fresh_result(size: int) -> None:
    images = _images(5)
    transform = BatchTransform(size, train=True)
    fresh = transform(images, torch.Generator().manual_seed(9))
    out = torch.full((5, 3, size, size), float("nan"))
    returned = transform(images, torch.Generator().manual_seed(9), out=out)
    assert returned is out
    assert torch.equal(out, fresh)


def test_out_of_the_wrong_shape_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"out must be a contiguous float32 tensor of shape \[2, 3, 8, 8\] on cpu, "
        r"got torch.float32 \[2, 3, 8, 9\] on cpu",
    ):
        BatchTransform(8)(_images(2), out=torch.empty(2, 3, 8, 9))


def test_recycling_transform_reuses_its_buffers_and_changes_no_value() -> None:
    transform = BatchTransform(40, train=True)
    recycling = RecyclingTransform(transform, slots=2)
    outputs, pointers = [], []
    for step in range(4):
        batch = recycling(_images(6, seed=step), torch.Generator().manual_seed(step))
        assert torch.equal(
            batch, transform(_images(6, seed=step), torch.Generator().manual_seed(step))
        )
        outputs.append(batch.clone())
        pointers.append(batch.data_ptr())
    assert pointers[0] == pointers[2] != pointers[1] == pointers[3]
    # A smaller last batch is the head of its slot; a larger one gets a new buffer.
    small = recycling(_images(3), torch.Generator().manual_seed(0))
    assert small.shape == (3, 3, 40, 40) and small.data_ptr() == pointers[0]
    assert torch.equal(small, transform(_images(3), torch.Generator().manual_seed(0)))
    large = recycling(_images(9), torch.Generator().manual_seed(0))
    assert large.shape == (9, 3, 40, 40) and large.data_ptr() != pointers[1]
    with pytest.raises(ConfigError, match="slots must be at least 1, not 0"):
        RecyclingTransform(transform, slots=0)


@pytest.mark.gpu
def test_cuda_images_with_a_cpu_generator_match_cpu() -> None:
    images = _images(4)
    transform = BatchTransform(48, train=True)
    cpu = transform(images, torch.Generator().manual_seed(5))
    gpu = transform(images.cuda(), torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
