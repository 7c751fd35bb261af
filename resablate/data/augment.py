"""Batched augmentation on the images' device: random-resized crop or resize, flip, normalise.

One batch of uint8 images [B, 3, H, W] becomes float images [B, 3, S, S] in two batched matrix
products and no per-image Python loop. Cropping a box and resizing it is separable: output row
``o`` is a weighted sum of input rows, so the whole operation is ``Ry @ X @ Rx^T`` with per-sample
weight matrices ``Ry`` [S, H] and ``Rx`` [S, W]. The weights are exactly those of
``torch.nn.functional.interpolate(mode="bilinear", antialias=True)`` (what torchvision's
``resized_crop``/``resize`` use on tensors), restricted to the box; a horizontal flip reverses
the rows of ``Rx``; since each row of weights sums to 1, normalisation is applied to the (smaller)
input before resampling.

Random boxes follow torchvision's ``RandomResizedCrop.get_params`` (area fraction ``scale``,
log-uniform aspect ``ratio``, 10 attempts then a centre-crop fallback), vectorised over the batch
and drawn from the ``torch.Generator`` passed in, so a generator in the same state gives the same
batch bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from resablate.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CROPS: tuple[str, ...] = ("random_resized_crop", "resize")

_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback

Generators = torch.Generator | Sequence[torch.Generator] | None
"""The randomness of one batch: one generator, or one per equal chunk of the batch (the K groups
of a packed model, each chunk drawn as that generator alone would draw it), or ``None`` (torch's
global generator)."""


@dataclass(frozen=True, eq=False)
class CropParams:
    """Per-sample geometry of one batch, in input pixels (int64 tensors [B]).

    Attributes:
        top: First row of the box.
        left: First column of the box.
        height: Rows in the box.
        width: Columns in the box.
        flip: Whether the output is mirrored left-right (bool tensor [B]).
    """

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor

    @classmethod
    def full(cls, n: int, height: int, width: int, device: torch.device) -> CropParams:
        """The whole image, not flipped, for ``n`` samples."""
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        return cls(
            top=zeros,
            left=zeros,
            height=torch.full((n,), height, dtype=torch.long, device=device),
            width=torch.full((n,), width, dtype=torch.long, device=device),
            flip=torch.zeros(n, dtype=torch.bool, device=device),
        )

    @classmethod
    def cat(cls, parts: Sequence[CropParams]) -> CropParams:
        """The geometry of the batches of ``parts`` one after the other."""
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in _CROP_FIELDS))


_CROP_FIELDS = ("top", "left", "height", "width", "flip")


def random_resized_crop_params(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes drawn as torchvision's ``RandomResizedCrop.get_params`` draws them, for ``n`` images.

    Returns:
        ``(top, left, box_height, box_width)``, int64 tensors [n] on the generator's device.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    u_area = torch.rand((n, _ATTEMPTS), generator=generator, device=device, dtype=torch.float64)
    u_ratio = torch.rand((n, _ATTEMPTS), generator=generator, device=device, dtype=torch.float64)
    u_top = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    u_left = torch.rand(n, generator=generator, device=device, dtype=torch.float64)

    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    box_w = torch.round(torch.sqrt(area * aspect)).long()
    box_h = torch.round(torch.sqrt(area / aspect)).long()
    valid = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = torch.argmax(valid.to(torch.int8), dim=1, keepdim=True)  # first valid attempt
    box_w = box_w.gather(1, first).squeeze(1)
    box_h = box_h.gather(1, first).squeeze(1)

    # torchvision's fallback: the largest centred box whose aspect is within ``ratio``.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fb_w, fb_h = round(height * max(ratio)), height
    else:
        fb_w, fb_h = width, height
    any_valid = valid.any(dim=1)
    box_w = torch.where(any_valid, box_w, fb_w)
    box_h = torch.where(any_valid, box_h, fb_h)
    top = torch.where(
        any_valid,
        torch.floor(u_top * (height - box_h + 1)).long().clamp(max=height - box_h),
        (height - fb_h) // 2,
    )
    left = torch.where(
        any_valid,
        torch.floor(u_left * (width - box_w + 1)).long().clamp(max=width - box_w),
        (width - fb_w) // 2,
    )
    return top, left, box_h, box_w


def resample_weights(
    offset: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int
) -> torch.Tensor:
    """Per-sample 1-D antialiased bilinear weights mapping a box of the input to ``out_size``.

    Identical to the weights of ``interpolate(mode="bilinear", antialias=True,
    align_corners=False)`` applied to ``input[offset : offset + length]``: a triangle filter
    widened by the down-scaling factor (no widening when up-scaling), edge-renormalised. Only
    the few input pixels under each output pixel's filter (the taps) are computed, then
    scattered into the dense matrix the batched products need.

    Args:
        offset: int64 [B], first input index of each box.
        length: int64 [B], input pixels in each box.
        in_size: Input pixels along this axis.
        out_size: Output pixels along this axis.

    Returns:
        float32 [B, out_size, in_size]; each row sums to 1.
    """
    device = offset.device
    scale = length.to(torch.float32) / out_size  # input pixels per output pixel
    support = scale.clamp(min=1.0)[:, None, None]  # half-width of the filter, input pixels
    centre = ((torch.arange(out_size, device=device) + 0.5)[None, :] * scale[:, None])[..., None]
    # The filter covers the open interval (centre - support, centre + support) around pixel
    # centres j + 0.5: at most ceil(2 * support) + 1 pixels, and support <= in / out.
    n_taps = min(in_size, math.ceil(2 * max(in_size / out_size, 1.0)) + 1)
    first = torch.ceil(centre - support - 0.5).long().clamp(min=0)  # box coordinates
    tap = first + torch.arange(n_taps, device=device)  # [B, out, taps]
    distance = (tap + 0.5 - centre) / support
    weights = (1.0 - distance.abs()).clamp(min=0.0) * (tap < length[:, None, None])
    weights = weights / weights.sum(dim=2, keepdim=True)
    # Taps past the box carry weight 0; clamping their index keeps them inside the matrix.
    index = (tap + offset[:, None, None]).clamp(max=in_size - 1)
    dense = torch.zeros((len(offset), out_size, in_size), device=device)
    return dense.scatter_add_(2, index, weights)


@dataclass(frozen=True)
class BatchTransform:
    """Turn a batch of uint8 images into normalised float model inputs, on their device.

    Train mode: a random-resized crop (``crop="random_resized_crop"``; box area fraction
    ``scale``, aspect ``ratio``) or a resize of the whole image (``crop="resize"``, the Food-5K
    recipe) to ``output_size``, then a horizontal flip with probability 0.5 (``hflip``). Eval
    mode: resize the whole image to ``output_size``. Both then compute
    ``(x / 255 - mean) / std`` per channel.

    Attributes:
        output_size: Side S of the square output, in pixels.
        train: Train mode (random) or eval mode (deterministic).
        crop: Train-mode geometry, one of :data:`CROPS`.
        scale: Area fraction range of random-resized crops (torchvision's default).
        ratio: Aspect-ratio (width / height) range of random-resized crops.
        hflip: Mirror left-right with probability 0.5 in train mode.
        mean: Per-channel mean of the [0, 1] inputs, subtracted.
        std: Per-channel standard deviation, divided by.
    """

    output_size: int
    train: bool = False
    crop: str = "random_resized_crop"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.output_size, bool) or not (
            isinstance(self.output_size, int) and self.output_size > 0
        ):
            raise ConfigError(f"output_size must be a positive integer, not {self.output_size!r}")
        if self.crop not in CROPS:
            raise ConfigError(f"unknown crop {self.crop!r}; choose one of: {', '.join(CROPS)}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"crop scale must satisfy 0 < low <= high <= 1, not {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"crop ratio must satisfy 0 < low <= high, not {self.ratio}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(
                f"mean and std need 3 values each, std positive; got {self.mean}, {self.std}"
            )

    @classmethod
    def from_recipe(cls, recipe: object, *, train: bool) -> BatchTransform:
        """Build from a recipe's ``image_size``, ``train_transform``, ``crop_scale``, ``hflip``,
        ``mean`` and ``std`` (see :class:`resablate.recipes.Recipe`)."""
        return cls(
            output_size=int(recipe.image_size),  # type: ignore[attr-defined]
            train=train,
            crop=str(recipe.train_transform),  # type: ignore[attr-defined]
            scale=tuple(recipe.crop_scale),  # type: ignore[attr-defined]
            hflip=bool(recipe.hflip),  # type: ignore[attr-defined]
            mean=tuple(recipe.mean),  # type: ignore[attr-defined]
            std=tuple(recipe.std),  # type: ignore[attr-defined]
        )

    def sample_params(self, n: int, height: int, width: int, generator: Generators) -> CropParams:
        """The geometry of the next batch of ``n`` images of size ``height`` × ``width``.

        Eval mode (and ``crop="resize"`` without flip) draws nothing from ``generator``. With K
        generators, ``n`` splits into K equal chunks, chunk ``k`` drawn from generator ``k``.
        """
        if isinstance(generator, Sequence):
            k = len(generator)
            if k == 0 or n % k:
                raise ConfigError(f"a batch of {n} images does not split among {k} generators")
            return CropParams.cat(
                [self._sample_params(n // k, height, width, g) for g in generator]
            )
        return self._sample_params(n, height, width, generator)

    def _sample_params(
        self, n: int, height: int, width: int, generator: torch.Generator | None
    ) -> CropParams:
        device = generator.device if generator is not None else torch.device("cpu")
        if not self.train:
            return CropParams.full(n, height, width, device)
        if self.crop == "random_resized_crop":
            top, left, box_h, box_w = random_resized_crop_params(
                n, height, width, generator, self.scale, self.ratio
            )
        else:
            full = CropParams.full(n, height, width, device)
            top, left, box_h, box_w = full.top, full.left, full.height, full.width
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=device) < 0.5
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=device)
        return CropParams(top=top, left=left, height=box_h, width=box_w, flip=flip)

    def apply(
        self, images: torch.Tensor, params: CropParams, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Crop, resize, flip and normalise ``images`` with the given geometry.

        Args:
            images: uint8 (or float in [0, 255]) tensor [B, 3, H, W].
            params: Boxes and flips for the B images (any device).
            out: Optional contiguous float32 tensor [B, 3, S, S] on ``images.device`` to write
                the result into (see :class:`RecyclingTransform`); a new one when ``None``.

        Returns:
            float32 tensor [B, 3, S, S] on ``images.device`` (``out`` when given).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        n, _, height, width = images.shape
        size = self.output_size
        result = _output_tensor(out, n, size, images.device)
        x = self._normalise(images)
        device = images.device
        top, box_h, left, box_w, flip = (
            _on(t, device)
            for t in (params.top, params.height, params.left, params.width, params.flip)
        )
        rows = resample_weights(top, box_h, height, size)
        cols = resample_weights(left, box_w, width, size)
        cols = torch.where(flip.view(n, 1, 1), cols.flip(1), cols)
        cols_t = cols.transpose(1, 2)  # [B, W, S]
        # Same result either way; take the order with fewer multiply-adds. Both are two bmm
        # calls, the second writing straight into the result.
        if height <= width:
            narrow = torch.bmm(x.reshape(n, 3 * height, width), cols_t)  # [B, 3H, S]
            rows_3 = rows.unsqueeze(1).expand(n, 3, size, height).reshape(3 * n, size, height)
            narrow_3 = narrow.view(3 * n, height, size)
            torch.bmm(rows_3, narrow_3, out=result.view(3 * n, size, size))
        else:
            tall = torch.matmul(rows.unsqueeze(1), x)  # [B, 3, S, W]
            torch.bmm(tall.reshape(n, 3 * size, width), cols_t, out=result.view(n, 3 * size, size))
        return result

    def _normalise(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(images / 255 - mean) / std`` per channel, as float32, in one fused pass."""
        gain, bias = _normalisation(self.mean, self.std, images.device)
        return torch.addcmul(bias, images.to(torch.float32), gain, out=out)

    def __call__(
        self,
        images: torch.Tensor,
        generator: Generators = None,
        *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Augment (train mode) or resize (eval mode) and normalise one batch.

        Args:
            images: uint8 tensor [B, 3, H, W] (RGB), on any device.
            generator: Source of randomness in train mode (:data:`Generators`); its device is
                where the boxes are drawn (a CPU generator works for CUDA images). The same
                generator state gives the same output; K generators give what K calls on the
                K chunks would. ``None`` uses torch's global generator.
            out: Optional contiguous float32 tensor [B, 3, S, S] on ``images.device`` to write
                the result into; a new one when ``None``.

        Returns:
            float32 tensor [B, 3, output_size, output_size] on ``images.device``.
        """
        n, _, height, width = images.shape
        params = self.sample_params(n, height, width, generator)
        whole_image = not self.train or self.crop == "resize"
        if not (whole_image and height == width == self.output_size):
            return self.apply(images, params, out=out)
        # Nothing to resample: normalise, and mirror the samples drawn for a flip.
        x = self._normalise(images, out=_output_tensor(out, n, self.output_size, images.device))
        if self.train and self.hflip:
            # A mask, not indices: no device-to-host sync on CUDA.
            flip = _on(params.flip, images.device).view(n, 1, 1, 1)
            torch.where(flip, x.flip(3), x, out=x)
        return x


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; no copy (and no call that could wait) when already there."""
    return tensor if tensor.device == device else tensor.to(device)


@functools.cache
def _normalisation(
    mean: tuple[float, float, float], std: tuple[float, float, float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gain ``1 / (255 std)`` and bias ``-mean / std`` as [1, 3, 1, 1] tensors on ``device``,
    built once per device (a tensor made from Python numbers is a host-to-device copy)."""
    gain = torch.tensor([1.0 / (255.0 * s) for s in std], device=device)
    bias = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
    return gain.view(1, 3, 1, 1), bias.view(1, 3, 1, 1)


def _output_tensor(
    out: torch.Tensor | None, n: int, size: int, device: torch.device
) -> torch.Tensor:
    """``out`` checked to be a contiguous float32 [n, 3, size, size] on ``device``, or a new one."""
    if out is None:
        return torch.empty((n, 3, size, size), dtype=torch.float32, device=device)
    if (
        tuple(out.shape) != (n, 3, size, size)
        or out.dtype != torch.float32
        or out.device != device
        or not out.is_contiguous()
    ):
        raise ConfigError(
            f"out must be a contiguous float32 tensor of shape {[n, 3, size, size]} on {device}, "
            f"got {out.dtype} {list(out.shape)} on {out.device}"
        )
    return out


class RecyclingTransform:
    """A :class:`BatchTransform` whose outputs are written into a ring of reused buffers.

    A fresh float batch is large (batch 256 at 224 × 224: 154 MB). On the CPU, allocating it
    anew for every batch costs page faults and the kernel's zeroing of every page, because
    allocations that large are returned to the operating system when freed; on the 2-core CPU
    of ``docs/performance.md`` that took longer than computing the batch. Writing into
    ``slots`` buffers that are kept and reused removes it. On CUDA the caching allocator already
    reuses memory, so there is little to gain; it is still correct, since kernels on one stream
    run in order.

    The tensor returned by one call is overwritten ``slots`` calls later, so use this only in
    loops that are done with a batch (forward and backward) before they ask for the next but
    one, as the engine's training and evaluation loops are. A smaller batch (the last one of an
    epoch) is a view of the first rows of its slot.

    Attributes:
        transform: The wrapped transform, which computes every value (identical outputs).
        slots: Buffers in the ring.
    """

    def __init__(self, transform: BatchTransform, slots: int = 2) -> None:
        if slots < 1:
            raise ConfigError(f"slots must be at least 1, not {slots}")
        self.transform = transform
        self.slots = slots
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._next = 0

    def __call__(self, images: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """As :meth:`BatchTransform.__call__`, into the next buffer of the ring."""
        n, size = images.shape[0], self.transform.output_size
        slot = self._next
        self._next = (slot + 1) % self.slots
        buffer = self._buffers[slot]
        if buffer is None or buffer.shape[0] < n or buffer.device != images.device:
            buffer = _output_tensor(None, n, size, images.device)
            self._buffers[slot] = buffer
        return self.transform(images, generator, out=buffer[:n])
