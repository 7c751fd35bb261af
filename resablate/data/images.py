"""Safe image decoding: one function turns a file into an RGB uint8 array or says why it cannot.

Policy (``docs/architecture.md``, "Safety"):

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

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
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


def describe_error(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary PNG chunks that only carry metadata resablate never uses: colour profiles and text.
# Pillow caps their decompressed size (PngImagePlugin.MAX_TEXT_CHUNK) and raises above it.
_PNG_METADATA_CHUNKS = frozenset({b"iCCP", b"tEXt", b"zTXt", b"iTXt"})

# Pillow warns about odd files (DecompressionBombWarning between 1x and 2x its pixel limit,
# "Corrupt EXIF data", ...); resablate judges every file itself (refused with a reason, or
# decoded), so those warnings are silenced while headers and EXIF are read.
# ``warnings.catch_warnings`` swaps process-wide state, hence the lock (headers and EXIF blocks
# are small: cheap to serialise; pixels are decoded outside it).
_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with _QUIET_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


Source = str | os.PathLike[str] | bytes
"""An encoded image: its file's path, or its bytes (a row of a table layout)."""


def _png_without_metadata(source: Source) -> io.BytesIO | None:
    """The PNG's bytes without its metadata chunks, or None (not a PNG, or none to drop)."""
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError:
            return None
    if not data.startswith(_PNG_SIGNATURE):
        return None
    kept = [_PNG_SIGNATURE]
    at, dropped = len(_PNG_SIGNATURE), False
    while at + 8 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        end = at + 12 + length
        if data[at + 4 : at + 8] in _PNG_METADATA_CHUNKS and end <= len(data):
            dropped = True
        else:
            kept.append(data[at:end])
        at = end
    kept.append(data[at:])
    return io.BytesIO(b"".join(kept)) if dropped else None


def _pillow_open(source: Source | io.BytesIO) -> Image.Image:
    with _quiet():
        return Image.open(
            io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS
        )


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag (parsed once; Pillow caches the EXIF block on the image)."""
    with _quiet():
        return image.getexif().get(_EXIF_ORIENTATION_TAG)


def _open(path: Source, source: io.BytesIO | None = None) -> Image.Image:
    """Open ``path`` (or ``source``, its bytes without metadata chunks) lazily: header only.

    Refuses unknown formats and decompression bombs; any other exception while reading the
    header is the file's bad-file reason, unless the file is a PNG that opens once its metadata
    chunks (colour profile, text) are dropped.
    """
    try:
        image = _pillow_open(path if source is None else source)
    except UnidentifiedImageError:
        raise BadImageError("not a JPEG, PNG or WebP image") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"decompression bomb refused: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:
        stripped = _png_without_metadata(path) if source is None else None
        if stripped is None:
            raise BadImageError(f"cannot open: {describe_error(exc)}") from None
        return _open(path, stripped)
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


def read_header(path: Source) -> ImageHeader:
    """Read an image's format and (EXIF-oriented) size without decoding its pixels.

    Raises:
        BadImageError: Not a JPEG/PNG/WebP file, an unreadable header, or a decompression bomb.
    """
    with _open(path) as image:
        width, height = image.size
        try:
            orientation = _orientation(image)
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


def decode_image(path: Source, size: int | None = None) -> np.ndarray:
    """Decode one image file fully and safely into an RGB array.

    This is the only place resablate decodes pixels; the decode cache, the streaming loader and
    ``scan(..., verify=True)`` all call it.

    Args:
        path: The image file (JPEG, PNG or WebP, recognised by content), or its bytes.
        size: ``None`` keeps the native resolution; an integer S resizes the whole image to
            S×S pixels (aspect ratio not kept, as in the Food-5K "resize to 224×224" recipe)
            with Pillow's antialiased bilinear filter.

    Returns:
        A C-contiguous uint8 array of shape (height, width, 3), channels in RGB order.

    Raises:
        BadImageError: The file cannot be used; the message says why (unknown format,
            decompression bomb, truncated or corrupt data, unsupported colour mode).
    """
    # Pillow raises many exception types on corrupt input (OSError, SyntaxError, ValueError,
    # struct.error, ...); each is a property of the file, so all become a bad-file reason. A PNG
    # whose metadata chunks (after the image data) Pillow refuses is decoded without them.
    with _open(path) as source:
        try:
            return _pixels(source, size)
        except MemoryError:
            raise
        except Exception as exc:
            failure = exc
    stripped = _png_without_metadata(path)
    if stripped is not None:
        with _open(path, stripped) as source, contextlib.suppress(Exception):
            return _pixels(source, size)
    raise BadImageError(f"cannot decode: {describe_error(failure)}")


def _pixels(source: Image.Image, size: int | None) -> np.ndarray:
    """Load, orient, convert to RGB and resize an opened image (see :func:`decode_image`)."""
    source.load()
    _orientation(source)  # parsed quietly here; exif_transpose reuses the cached block
    ImageOps.exif_transpose(source, in_place=True)
    image = _to_rgb(source)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


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
