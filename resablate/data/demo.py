"""Demo data generated from the photographs scikit-image ships: nothing to download.

:func:`demo_data` writes a CIFAKE-style tree (``train/REAL``, ``train/FAKE``, ``test/REAL``,
``test/FAKE``; 32×32 RGB PNG files):

- ``REAL``: random square crops (side 32 to 96 px) of a photograph, downscaled to 32×32 with
  Pillow's Lanczos filter; 40 % of them are slightly out of focus (Gaussian blur, radius 0.4 to
  1 px), as real photographs often are, so that softness alone does not give the class away.
- ``FAKE``: crops drawn the same way, passed through a fixed "generator" that leaves the traces
  image generators leave: the 32×32 crop is downsampled ×2 or ×4 (even odds), then upsampled
  back by a fixed stride-2 (3×3) or stride-4 (7×7) transposed convolution (three quarters of the
  time; uneven kernel overlap leaves a pattern of period 2 or 4, i.e. periodic spectral peaks)
  or by nearest-neighbour repetition (block artefacts), and blended with the crop at a random
  strength in [0.5, 1]; finally each channel's mean and standard deviation are matched to the
  source crop's, so colour and brightness statistics do not separate the classes.

The traces live on the pixel grid, so they are clearest when training at the native 32×32 with
flips only; a random-resized crop re-samples the images and weakens them (see ``docs/data.md``).

Train and test come from disjoint photographs (:data:`TRAIN_PHOTOS`, :data:`TEST_PHOTOS`).
:func:`demo_proxy_data` writes the "source" task for demo pretrained weights: 32×32 crops of
other scikit-image pictures (:data:`PROXY_CLASSES`, textures and scenes), one class per picture,
in the same layout.

Both are deterministic for a given ``seed`` and :data:`GENERATOR_VERSION`, and idempotent: a
marker file written last records version and seed, and a second call with the same arguments
returns without touching any file.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from resablate import atomic, paths
from resablate.errors import DataError

GENERATOR_VERSION = 3
"""Version of what the generators write; a change regenerates existing demo folders."""

MARKER = ".resablate-demo.json"
LOCK = ".resablate-demo.lock"
STAGING = ".resablate-staging-"
SIZE = 32

TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "rocket",
    "motorcycle",
    "immunohistochemistry",
    "camera",
)
TEST_PHOTOS: tuple[str, ...] = ("chelsea", "hubble_deep_field", "coins", "clock")
PROXY_CLASSES: tuple[str, ...] = ("brick", "cell", "grass", "gravel", "moon", "page")

DEMO_COUNTS: Mapping[str, int] = {"train": 400, "test": 160}
"""Images per class and split of :func:`demo_data` (so 800 train and 320 test images)."""
PROXY_COUNTS: Mapping[str, int] = {"train": 120, "test": 40}
"""Images per class and split of :func:`demo_proxy_data`."""


def _photo(name: str) -> np.ndarray:
    """A scikit-image picture as an RGB uint8 array (grayscale pictures replicated)."""
    from skimage import data as skdata

    image = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


@functools.lru_cache(maxsize=4)
def _pictures(names: tuple[str, ...]) -> tuple[Image.Image, ...]:
    """The named pictures as RGB Pillow images (loaded once, only when something is drawn)."""
    return tuple(Image.fromarray(_photo(name)) for name in names)


def _crop(photo: Image.Image, rng: np.random.Generator, lo: int = SIZE, hi: int = 96) -> np.ndarray:
    """A random square crop of side in [lo, hi] px, resized to 32×32 (Lanczos); float [32,32,3]."""
    side = int(rng.integers(lo, min(hi, *photo.size) + 1))
    left = int(rng.integers(0, photo.width - side + 1))
    top = int(rng.integers(0, photo.height - side + 1))
    box = (left, top, left + side, top + side)
    crop = photo.resize((SIZE, SIZE), Image.Resampling.LANCZOS, box=box)
    return np.asarray(crop, dtype=np.float64)


def _blur(image: np.ndarray, radius: float) -> np.ndarray:
    pil = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)


def _kernel(factor: int) -> np.ndarray:
    """The generator's fixed up-convolution kernel for one factor (same for every seed).

    The (2·factor − 1)² bilinear up-sampling kernel with each tap perturbed by up to ±60 %,
    scaled to sum to factor²: close enough to smooth interpolation to keep the image, far enough
    to leave a faint periodic pattern.
    """
    ramp = np.concatenate([np.arange(1, factor + 1), np.arange(factor - 1, 0, -1)]) / factor
    rng = np.random.default_rng(20240511 + factor)
    weights = np.outer(ramp, ramp) * rng.uniform(0.4, 1.6, size=(2 * factor - 1,) * 2)
    return weights * (factor * factor / weights.sum())


_KERNELS = {factor: _kernel(factor) for factor in (2, 4)}


def _transposed_conv_up(image: np.ndarray, factor: int) -> np.ndarray:
    """Stride-``factor`` transposed convolution with ``_KERNELS[factor]``: [h, w, 3] -> [fh, fw, 3].

    The kernel overlaps unevenly across the output's phases, which imprints a pattern of period
    ``factor`` (a checkerboard for 2), as in many image generators.
    """
    kernel = _KERNELS[factor]
    size = kernel.shape[0]
    h, w, c = image.shape
    out = np.zeros(((h - 1) * factor + size, (w - 1) * factor + size, c))
    for dy in range(size):
        for dx in range(size):
            out[dy : dy + factor * h : factor, dx : dx + factor * w : factor] += (
                kernel[dy, dx] * image
            )
    return out[factor - 1 : factor - 1 + factor * h, factor - 1 : factor - 1 + factor * w]


def _generate_fake(real: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pass a 32×32 crop through the fake generator; output statistics match the crop's."""
    factor = 4 if rng.random() < 0.5 else 2
    small = np.asarray(
        Image.fromarray(np.clip(np.rint(real), 0, 255).astype(np.uint8)).resize(
            (SIZE // factor, SIZE // factor), Image.Resampling.BOX
        ),
        dtype=np.float64,
    )
    if rng.random() < 0.75:
        up = _transposed_conv_up(small, factor)
    else:
        up = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
    strength = rng.uniform(0.5, 1.0)
    fake = strength * up + (1.0 - strength) * real
    # Match each channel's mean and standard deviation to the source crop's.
    mean, std = fake.mean(axis=(0, 1)), fake.std(axis=(0, 1))
    target_mean, target_std = real.mean(axis=(0, 1)), real.std(axis=(0, 1))
    return (fake - mean) / np.maximum(std, 1e-6) * target_std + target_mean


def _make_demo_image(photo: Image.Image, fake: bool, rng: np.random.Generator) -> np.ndarray:
    real = _crop(photo, rng)
    if fake:
        return _generate_fake(real, rng)
    if rng.random() < 0.4:
        return _blur(real, rng.uniform(0.4, 1.0))
    return real


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), "RGB").save(path, "PNG")


@dataclass(frozen=True)
class _Tree:
    """What to write: ``split/class/NNNNN.png``, ``counts[split]`` images per class.

    ``draw(split, class_name, rng)`` returns one float RGB image [32, 32, 3] in 0..255.
    """

    kind: str
    classes: tuple[str, ...]
    counts: Mapping[str, int]
    draw: Callable[[str, str, np.random.Generator], np.ndarray]

    def marker(self, seed: int) -> dict[str, Any]:
        """The marker file's content for this tree written with ``seed``."""
        return {
            "kind": self.kind,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "classes": list(self.classes),
            "images_per_class": dict(self.counts),
        }


def _materialise(root: str | os.PathLike[str] | None, tree: _Tree, seed: int) -> Path:
    """Write the tree for ``seed`` into ``root`` unless it is already there."""
    kind = tree.kind
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"demo data seed must be a non-negative integer, not {seed!r}")
    if root is not None:
        folder = Path(root).expanduser()
    else:
        folder = paths.cache_dir(kind if seed == 0 else f"{kind}-seed{seed}")
    if folder.exists() and not folder.is_dir():
        raise DataError(f"cannot write {kind} data into {folder}: it is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    expected = tree.marker(seed)
    if _current(folder) == expected:
        return folder
    # The lock file marks a folder this function has written to (even if interrupted).
    ours = (folder / MARKER).exists() or (folder / LOCK).exists()
    if not ours and any(not p.name.startswith(".") for p in folder.iterdir()):
        raise DataError(
            f"refusing to write {kind} data into {folder}: the folder is not empty and was not "
            "written by resablate; choose an empty or new folder"
        )
    # One writer at a time (grid workers may ask for the demo data together).
    with open(folder / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _current(folder) == expected:
            return folder
        _write_tree(folder, tree, seed)
        atomic.write_text(folder / MARKER, json.dumps(expected, indent=2) + "\n")
    return folder


def _current(folder: Path) -> dict[str, Any] | None:
    """The marker's content, or None when the folder holds no complete demo tree."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_tree(folder: Path, tree: _Tree, seed: int) -> None:
    """Write the tree into a hidden staging folder, then move each split into place.

    Replaces a tree an earlier call wrote (other seed or version). An interrupted call leaves a
    hidden staging folder (removed next time) and possibly some splits moved but no marker, so
    the next call writes the tree again.
    """
    marker = folder / MARKER
    for stale in folder.glob(STAGING + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=folder))
    for split_index, (split, n) in enumerate(tree.counts.items()):
        for class_index, name in enumerate(tree.classes):
            rng = np.random.default_rng([seed, split_index, class_index])
            for i in range(n):
                _write_png(staging / split / name / f"{i:05d}.png", tree.draw(split, name, rng))
    marker.unlink(missing_ok=True)
    for split in tree.counts:
        shutil.rmtree(folder / split, ignore_errors=True)
        os.replace(staging / split, folder / split)
    shutil.rmtree(staging, ignore_errors=True)


def demo_data(root: str | os.PathLike[str] | None = None, *, seed: int = 0) -> Path:
    """Write (once) the CIFAKE-style demo dataset: REAL photo crops vs generator FAKEs.

    Args:
        root: Folder to write into (created; must be empty or a previous demo folder). Default:
            ``paths.cache_dir("demo")`` (``"demo-seed<seed>"`` for seeds other than 0).
        seed: Seed of the crops and generator draws.

    Returns:
        The dataset folder: ``train/{FAKE,REAL}`` (400 images each) and ``test/{FAKE,REAL}``
        (160 each), 32×32 RGB PNG.

    Raises:
        DataError: ``root`` is a non-empty folder that demo_data did not write, or a bad seed.
    """

    def draw(split: str, name: str, rng: np.random.Generator) -> np.ndarray:
        options = _pictures(TRAIN_PHOTOS if split == "train" else TEST_PHOTOS)
        photo = options[int(rng.integers(len(options)))]
        return _make_demo_image(photo, name == "FAKE", rng)

    return _materialise(root, _Tree("demo", ("FAKE", "REAL"), DEMO_COUNTS, draw), seed)


def demo_proxy_data(root: str | os.PathLike[str] | None = None, *, seed: int = 0) -> Path:
    """Write (once) the proxy "source" task used to pre-train demo weights.

    One class per picture of :data:`PROXY_CLASSES` (textures and scenes disjoint from the demo
    photographs); each image is a random crop (side 32 to 128 px) resized to 32×32, mirrored at
    random. Train and test crops come from the left and right halves of each picture, so they
    do not overlap.

    Args:
        root: Folder to write into. Default: ``paths.cache_dir("demo-proxy")``
            (``"demo-proxy-seed<seed>"`` for seeds other than 0).
        seed: Seed of the crops.

    Returns:
        The dataset folder, CIFAKE-style: ``train/<class>`` (120 each), ``test/<class>`` (40 each).
    """

    def draw(split: str, name: str, rng: np.random.Generator) -> np.ndarray:
        picture = _pictures((name,))[0]
        middle = picture.width // 2
        half = picture.crop(
            (0, 0, middle, picture.height)
            if split == "train"
            else (middle, 0, picture.width, picture.height)
        )
        image = _crop(half, rng, hi=128)
        return image[:, ::-1] if rng.random() < 0.5 else image

    return _materialise(root, _Tree("demo-proxy", PROXY_CLASSES, PROXY_COUNTS, draw), seed)
