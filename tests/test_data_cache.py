"""Decode once: the cache is reused without decoding, invalidated by a changed file, and the
streaming fallback delivers the same batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resablate import paths
from resablate.data import BatchTransform, DecodedSplit, StreamingSplit, decode_split, scan
from resablate.data import images as images_module
from resablate.errors import ConfigError, DataError


def _write(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """CIFAKE-style, 8×8 images with distinct random pixels: 3 + 3 train, 2 + 2 test."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, n in (("train", 3), ("test", 2)):
        for name in ("FAKE", "REAL"):
            for i in range(n):
                _write(root / split / name / f"{i}.png", rng.integers(0, 256, (8, 8, 3), np.uint8))
    return root


@pytest.fixture
def decode_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of the one decode function, by file name."""
    calls: list[str] = []
    original = images_module.decode_image

    def counting(path, size=None):
        calls.append(Path(path).name)
        return original(path, size)

    monkeypatch.setattr(images_module, "decode_image", counting)
    return calls


def _expected(split: DecodedSplit) -> torch.Tensor:
    return torch.stack(
        [
            torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
            for p in split.paths
        ]
    )


def test_second_call_decodes_nothing(dataset: Path, decode_counter: list[str]) -> None:
    first = decode_split(scan(dataset), "train", storage_size=None)
    assert isinstance(first, DecodedSplit)
    assert len(decode_counter) == 6 and not first.from_cache
    assert first.images.shape == (6, 3, 8, 8) and first.images.dtype == torch.uint8
    assert first.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert first.labels.dtype == torch.int64
    assert torch.equal(first.images, _expected(first))
    assert first.cache_file.parent == paths.cache_dir("decoded")

    decode_counter.clear()
    second = decode_split(scan(dataset), "train", storage_size=None)
    assert decode_counter == []
    assert second.from_cache
    assert torch.equal(second.images, first.images)
    assert second.paths == first.paths
    assert torch.equal(second.labels, first.labels)


def test_changing_one_file_invalidates_the_cache(
    dataset: Path, decode_counter: list[str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    decode_split(scan(dataset), "train", storage_size=None, cache_dir=cache)
    decode_split(scan(dataset), "test", storage_size=None, cache_dir=cache)
    target = dataset / "train" / "REAL" / "1.png"
    _write(target, np.full((8, 8, 3), 77, np.uint8))
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    decode_counter.clear()

    train = decode_split(scan(dataset), "train", storage_size=None, cache_dir=cache)
    assert len(decode_counter) == 6 and not train.from_cache
    assert int(train.images[4].float().mean()) == 77
    decode_counter.clear()
    test = decode_split(scan(dataset), "test", storage_size=None, cache_dir=cache)
    assert decode_counter == [] and test.from_cache  # other splits keep their cache


def test_storage_size_is_part_of_the_key_and_resizes(dataset: Path) -> None:
    native = decode_split(scan(dataset), "test", storage_size=None)
    small = decode_split(scan(dataset), "test", storage_size=4)
    assert small.images.shape == (4, 3, 4, 4) and not small.from_cache
    expected = Image.open(small.paths[0]).convert("RGB").resize((4, 4), Image.Resampling.BILINEAR)
    assert torch.equal(small.images[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    assert native.cache_file != small.cache_file


def test_unreadable_files_are_skipped_listed_and_remembered(
    dataset: Path, decode_counter: list[str]
) -> None:
    broken = dataset / "train" / "FAKE" / "9.png"
    _write(broken, np.random.default_rng(1).integers(0, 256, (8, 8, 3), np.uint8))
    broken.write_bytes(broken.read_bytes()[:60])  # header intact, pixel data cut
    first = decode_split(scan(dataset), "train", storage_size=None)
    assert len(first) == 6
    assert [(Path(b.path).name, b.reason[:15]) for b in first.bad_files] == [
        ("9.png", "cannot decode: ")
    ]
    decode_counter.clear()
    second = decode_split(scan(dataset), "train", storage_size=None)
    assert decode_counter == []
    assert second.bad_files == first.bad_files


def test_class_left_empty_after_decoding_is_an_error(dataset: Path) -> None:
    for path in (dataset / "test" / "REAL").iterdir():
        path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"^class 'REAL' has no readable image in the test split"):
        decode_split(scan(dataset), "test", storage_size=None)


def test_native_size_needs_one_size(dataset: Path) -> None:
    _write(dataset / "train" / "REAL" / "big.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(DataError, match=r"^the train split has images of 2 different sizes \(8x8"):
        decode_split(scan(dataset), "train", storage_size=None)
    resized = decode_split(scan(dataset), "train", storage_size=8)
    assert resized.images.shape == (7, 3, 8, 8)


def test_bad_arguments(dataset: Path) -> None:
    result = scan(dataset)
    with pytest.raises(
        ConfigError, match=r"^split 'val' is not in dataset .*; it has: train, test$"
    ):
        decode_split(result, "val", storage_size=None)
    with pytest.raises(ConfigError, match="storage_size must be a positive integer"):
        decode_split(result, "train", storage_size=0)


def test_streaming_fallback_has_the_same_interface_and_batches(
    dataset: Path, decode_counter: list[str]
) -> None:
    result = scan(dataset)
    resident = decode_split(result, "train", storage_size=None)
    decode_counter.clear()
    streaming = decode_split(result, "train", storage_size=None, memory_budget=100)
    assert isinstance(streaming, StreamingSplit)
    assert decode_counter == []  # bad-file verification reused from the resident decode
    assert len(streaming) == len(resident)
    assert streaming.paths == resident.paths
    assert torch.equal(streaming.labels, resident.labels)
    indices = torch.tensor([5, 0, 3])
    batch = streaming.get_batch(indices)
    assert len(decode_counter) == 3
    assert batch.dtype == torch.uint8
    assert torch.equal(batch, resident.get_batch(indices))
    transform = BatchTransform(16, train=True)
    out_streaming = transform(batch, torch.Generator().manual_seed(3))
    out_resident = transform(resident.get_batch(indices), torch.Generator().manual_seed(3))
    assert torch.equal(out_streaming, out_resident)
    assert streaming.to("cpu").get_batch([1]).shape == (1, 3, 8, 8)


def test_streaming_without_cache_verifies_once(
    dataset: Path, decode_counter: list[str], tmp_path: Path
) -> None:
    cache = tmp_path / "fresh"
    first = decode_split(scan(dataset), "test", storage_size=None, cache_dir=cache, memory_budget=1)
    assert isinstance(first, StreamingSplit) and len(decode_counter) == 4
    decode_counter.clear()
    decode_split(scan(dataset), "test", storage_size=None, cache_dir=cache, memory_budget=1)
    assert decode_counter == []


def test_get_batch_and_to(dataset: Path) -> None:
    split = decode_split(scan(dataset), "test", storage_size=None)
    assert split.to("cpu") is split
    assert torch.equal(split.get_batch([3, 1]), split.images[[3, 1]])
    assert split.device == torch.device("cpu")
