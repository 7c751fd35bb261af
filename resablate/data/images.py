"""Safe image decoding: one function turns a file into an RGB uint8 array or says why it cannot.

Policy (DESIGN.md §7):

- Formats are recognised by content, not by extension: JPEG, PNG and WebP are accepted.
- Pillow's decompression-bomb limit stays on: an image with more than
  ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused from its header, before any pixel is
  allocated.
- Truncated files are bad files, never half-decoded (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left
  ``False`` and every image is fully loaded).
- EXIF orientation is applied; grayscale, 16-bit grayscale, palette and CMYK images become RGB;
  transparency (alpha or a palette's transparent entry) is composited onto :data:`BACKGROUND`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
"""The file formats accepted, as Pillow names them."""

BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""The fixed colour (white) that transparent pixels are composited onto."""

# EXIF orientations 5-8 rotate by 90 degrees: width and height swap.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112


_T = TypeVar("_T")
_R = TypeVar("_R")


class BadImageError(Exception):
    """An image file that cannot be used; the message is the reason shown to the user."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding pixels.

    Attributes:
        format: Pillow's format name ("JPEG", "PNG", "WEBP").
        width: Width in pixels after EXIF orientation.
        height: Height in pixels after EXIF orientation.
    """

    format: str
    width: int
    height: int


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` lazily (header only), refusing unknown formats and decompression bombs."""
    try:
        image = Image.open(path, formats=FORMATS)
    except UnidentifiedImageError:
        raise BadImageError("not a JPEG, PNG or WebP image") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"decompression bomb refused: {exc}") from None
    except OSError as exc:
        raise BadImageError(f"cannot open: {exc}") from None
    pixels = image.width * image.height
    limit = Image.MAX_IMAGE_PIXELS
    # Pillow raises only above twice its limit and merely warns in between; refuse both.
    if limit is not None and pixels > limit:
        image.close()
        raise BadImageError(
            f"decompression bomb refused: {image.width}x{image.height} = {pixels:,} pixels "
            f"exceeds the limit of {limit:,}"
        )
    return image


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Read an image's format and (EXIF-oriented) size without decoding its pixels.

    Raises:
        BadImageError: Not a JPEG/PNG/WebP file, an unreadable header, or a decompression bomb.
    """
    with _open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
        except Exception:  # a broken EXIF block: the full decode will judge the file
            orientation = None
        if orientation in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        return ImageHeader(format=str(image.format), width=width, height=height)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto :data:`BACKGROUND`."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        # 16-bit grayscale: keep the top 8 bits (Pillow's convert would clip at 255 instead).
        array = np.asarray(image).astype(np.uint32) >> 8
        return Image.fromarray(array.astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def decode_image(path: str | os.PathLike[str], size: int | None = None) -> np.ndarray:
    """Decode one image file fully and safely into an RGB array.

    This is the only place resablate decodes pixels; the decode cache, the streaming loader and
    ``scan(..., verify=True)`` all call it.

    Args:
        path: The image file (JPEG, PNG or WebP, recognised by content).
        size: ``None`` keeps the native resolution; an integer S resizes the whole image to
            S×S pixels (aspect ratio not kept, as in the Food-5K "resize to 224×224" recipe)
            with Pillow's antialiased bilinear filter.

    Returns:
        A C-contiguous uint8 array of shape (height, width, 3), channels in RGB order.

    Raises:
        BadImageError: The file cannot be used; the message says why (unknown format,
            decompression bomb, truncated or corrupt data, unsupported colour mode).
    """
    with _open(path) as source:
        # Pillow raises many exception types on corrupt input (OSError, SyntaxError, ValueError,
        # struct.error, ...); each is a property of the file, so all become a bad-file reason.
        try:
            source.load()
            ImageOps.exif_transpose(source, in_place=True)
            image = _to_rgb(source)
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
        except MemoryError:
            raise
        except Exception as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise BadImageError(f"cannot decode: {message}") from None


def default_workers() -> int:
    """Threads used to decode: the CPUs this process may use (Pillow releases the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_map(
    function: Callable[[_T], _R], items: Sequence[_T], workers: int | None = None
) -> list[_R]:
    """``[function(x) for x in items]`` computed in a thread pool, results in input order."""
    if not items:
        return []
    n = min(workers or default_workers(), len(items))
    if n == 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(function, items))
