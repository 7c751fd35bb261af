"""Safe decoding: formats by content, colour modes, EXIF orientation, truncation, bombs."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from resablate.data import images
from resablate.data.images import BACKGROUND, BadImageError, decode_image, read_header


def _pattern(height: int, width: int) -> np.ndarray:
    """A deterministic RGB image whose every pixel differs from its neighbours."""
    rng = np.random.default_rng(height * 1000 + width)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_png_roundtrip_is_exact(tmp_path: Path) -> None:
    pixels = _pattern(6, 9)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    decoded = decode_image(tmp_path / "a.png")
    assert decoded.dtype == np.uint8 and decoded.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(decoded, pixels)
    assert read_header(tmp_path / "a.png") == images.ImageHeader("PNG", 9, 6)


def test_format_is_recognised_by_content_not_extension(tmp_path: Path) -> None:
    pixels = _pattern(4, 4)
    Image.fromarray(pixels).save(tmp_path / "really_png.jpg", format="PNG")
    np.testing.assert_array_equal(decode_image(tmp_path / "really_png.jpg"), pixels)
    assert read_header(tmp_path / "really_png.jpg").format == "PNG"


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_lossless_webp_is_exact(tmp_path: Path) -> None:
    pixels = _pattern(5, 7)
    Image.fromarray(pixels).save(tmp_path / "a.webp", lossless=True)
    np.testing.assert_array_equal(decode_image(tmp_path / "a.webp"), pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = _pattern(4, 5)[:, :, 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    decoded = decode_image(tmp_path / "g.png")
    np.testing.assert_array_equal(decoded, np.repeat(gray[:, :, None], 3, axis=2))


def test_16_bit_grayscale_keeps_the_top_8_bits(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    decoded = decode_image(tmp_path / "g16.png")
    assert decoded[0, :, 0].tolist() == [0, 0, 1, 255]


def test_alpha_is_composited_onto_the_fixed_background(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    decoded = decode_image(tmp_path / "a.png")
    assert decoded[0, 0].tolist() == [10, 20, 30]
    assert decoded[0, 1].tolist() == list(BACKGROUND)
    half = decoded[0, 2].astype(int)
    expected = (np.array([200, 100, 0]) * 128 + np.array(BACKGROUND) * 127) / 255
    assert np.abs(half - expected).max() <= 1


def test_grayscale_alpha_is_composited(tmp_path: Path) -> None:
    la = np.array([[[50, 255], [50, 0]]], dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert decode_image(tmp_path / "la.png").tolist() == [[[50, 50, 50], list(BACKGROUND)]]


def test_palette_transparency_is_composited(tmp_path: Path) -> None:
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    palette_image.putdata([0, 1, 2])
    palette_image.save(tmp_path / "p.png", transparency=0)
    decoded = decode_image(tmp_path / "p.png")
    assert decoded.tolist() == [[list(BACKGROUND), [255, 0, 0], [0, 0, 255]]]


def test_cmyk_jpeg_is_accepted_as_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    decoded = decode_image(tmp_path / "cmyk.jpg")
    assert decoded.shape == (8, 8, 3)
    red, green, blue = decoded[4, 4].tolist()
    assert red > 240 and green < 15 and blue < 15


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = _pattern(2, 4)  # stored 4 wide, 2 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif.tobytes())
    decoded = decode_image(tmp_path / "o.png")
    np.testing.assert_array_equal(decoded, np.rot90(pixels, k=-1))
    assert read_header(tmp_path / "o.png") == images.ImageHeader("PNG", 2, 4)


def test_resize_to_storage_size_uses_antialiased_bilinear(tmp_path: Path) -> None:
    pixels = _pattern(12, 16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    expected = Image.fromarray(pixels).resize((8, 8), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(decode_image(tmp_path / "a.png", 8), np.asarray(expected))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused_not_half_decoded(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_pattern(64, 64)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert read_header(path).width == 64  # the header alone looks fine
    with pytest.raises(BadImageError, match=r"^cannot decode: .*(truncated|broken|data)"):
        decode_image(path)


def _bomb_png(path: Path, side: int = 20_000) -> None:
    """A valid 1-bit side×side PNG, all black: tens of kB on disk, 400 Mpixel decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row * 1000) for _ in range(side // 1000))
    body += compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.png"
    _bomb_png(path)
    assert path.stat().st_size < 100_000
    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or original(self))
    with pytest.raises(BadImageError, match=r"^decompression bomb refused: .*400000000 pixels"):
        decode_image(path)
    with pytest.raises(BadImageError, match="decompression bomb refused"):
        read_header(path)
    assert loads == []  # refused from the header: no pixel buffer was ever allocated


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("notes.txt", lambda p: p.write_text("not an image")),
        ("empty.png", lambda p: p.write_bytes(b"")),
        ("anim.gif", lambda p: Image.new("RGB", (4, 4)).save(p, format="GIF")),
    ],
)
def test_non_images_and_other_formats_are_refused(tmp_path: Path, name: str, write) -> None:
    path = tmp_path / name
    write(path)
    with pytest.raises(BadImageError, match=r"^not a JPEG, PNG or WebP image$"):
        decode_image(path)


def test_parallel_map_keeps_order() -> None:
    assert images.parallel_map(lambda x: x * x, list(range(50)), workers=4) == [
        x * x for x in range(50)
    ]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_chunk(path: Path, chunk: bytes, *, after_data: bool = False) -> None:
    """Insert one chunk into a PNG: after IHDR, or after the image data (before IEND)."""
    data = path.read_bytes()
    at = len(data) - 12 if after_data else 8 + 25
    path.write_bytes(data[:at] + chunk + data[at:])


def _incompressible(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param(
            _png_chunk(b"iCCP", b"big profile\0\0" + zlib.compress(_incompressible(2_000_000))),
            id="2MB-ICC-profile",
        ),
        pytest.param(
            _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"x" * 5_000_000)), id="5MB-zTXt"
        ),
        pytest.param(
            _png_chunk(b"iTXt", b"Comment\0\1\0\0\0" + zlib.compress(b"y" * 5_000_000)),
            id="5MB-iTXt",
        ),
    ],
)
@pytest.mark.parametrize("after_data", [False, True], ids=["before-IDAT", "after-IDAT"])
def test_big_png_metadata_is_ignored_and_the_image_decoded(
    tmp_path: Path, chunk: bytes, after_data: bool
) -> None:
    pixels = _pattern(5, 6)
    path = tmp_path / "meta.png"
    Image.fromarray(pixels).save(path)
    _with_chunk(path, chunk, after_data=after_data)
    np.testing.assert_array_equal(decode_image(path), pixels)
    assert read_header(path) == images.ImageHeader("PNG", 6, 5)
    np.testing.assert_array_equal(
        decode_image(path, size=5),
        np.asarray(Image.fromarray(pixels).resize((5, 5), Image.Resampling.BILINEAR)),
    )


def test_any_exception_while_opening_is_a_bad_file_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(_pattern(4, 4)).save(tmp_path / "a.png")

    def broken(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(BadImageError, match=r"^cannot open: unpack requires a buffer of 4 bytes$"):
        read_header(tmp_path / "a.png")
    with pytest.raises(BadImageError, match=r"^cannot open: unpack requires a buffer of 4 bytes$"):
        decode_image(tmp_path / "a.png")


def test_images_between_pillows_warning_and_error_limits_are_refused_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow raises above 2x MAX_IMAGE_PIXELS and only warns between 1x and 2x; we refuse both,
    # without Pillow's warning (the image is refused, so there is nothing to warn about).
    Image.fromarray(_pattern(10, 11)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            BadImageError,
            match=r"^decompression bomb refused: 11x10 = 110 pixels exceeds the limit of 100$",
        ):
            decode_image(tmp_path / "big.png")
        with pytest.raises(BadImageError, match=r"^decompression bomb refused: 11x10 = 110"):
            read_header(tmp_path / "big.png")


def test_a_broken_exif_block_decodes_without_pillow_warnings(tmp_path: Path) -> None:
    path = tmp_path / "broken-exif.jpg"
    Image.fromarray(_pattern(6, 8)).save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_header(path) == images.ImageHeader("JPEG", 8, 6)
        assert decode_image(path).shape == (6, 8, 3)
