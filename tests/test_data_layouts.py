"""Layout detection, splits, classes, bad files and the errors of ``scan`` / ``data check``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from resablate.data import images, scan
from resablate.errors import ConfigError, DataError, DataNotFoundError
from resablate_cli.app import app


def _png(path: Path, value: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    """Write a small solid-colour PNG (``size`` = width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)
    return path


def _tree(root: Path, counts: dict[str, int]) -> Path:
    """``counts`` maps a folder (relative to root) to how many PNGs to write into it."""
    for folder, n in counts.items():
        for i in range(n):
            _png(root / folder / f"{i:03d}.png", value=i)
    return root


def _truncated(path: Path) -> Path:
    _png(path, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_cifake_layout(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train/REAL": 3, "train/FAKE": 2, "test/REAL": 1, "test/FAKE": 2})
    result = scan(root)
    assert result.layout == "cifake"
    assert result.classes == ("FAKE", "REAL")
    assert list(result.splits) == ["train", "test"]
    assert result.class_counts == {"train": {"FAKE": 2, "REAL": 3}, "test": {"FAKE": 2, "REAL": 1}}
    train = result.splits["train"]
    assert [Path(s.path).relative_to(root).as_posix() for s in train] == [
        "train/FAKE/000.png",
        "train/FAKE/001.png",
        "train/REAL/000.png",
        "train/REAL/001.png",
        "train/REAL/002.png",
    ]
    assert [s.label for s in train] == [0, 0, 1, 1, 1]
    assert (train[0].width, train[0].height) == (8, 8)
    assert result.bad_files == ()
    assert result.image_sizes.describe() == "all 8x8"


def test_cifake_layout_with_val_and_case_insensitive_names(tmp_path: Path) -> None:
    root = _tree(
        tmp_path, {"Train/a": 1, "Train/b": 1, "Val/a": 1, "Val/b": 1, "TEST/a": 1, "TEST/b": 1}
    )
    result = scan(root)
    assert (result.layout, list(result.splits)) == ("cifake", ["train", "val", "test"])


def test_food5k_class_folders(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "training/food": 2,
            "training/non_food": 3,
            "validation/food": 1,
            "validation/non_food": 1,
            "evaluation/food": 2,
            "evaluation/non_food": 1,
        },
    )
    result = scan(root)
    assert result.layout == "food5k"
    assert result.classes == ("food", "non_food")
    assert {k: dict(v) for k, v in result.class_counts.items()} == {
        "train": {"food": 2, "non_food": 3},
        "val": {"food": 1, "non_food": 1},
        "test": {"food": 2, "non_food": 1},
    }
    assert all("/evaluation/" in s.path for s in result.splits["test"])


def test_food5k_flat_prefixes_give_the_kaggle_class_names(tmp_path: Path) -> None:
    for split in ("training", "validation", "evaluation"):
        _png(tmp_path / split / "0_1.jpg")
        _png(tmp_path / split / "1_1.jpg")
        _png(tmp_path / split / "1_2.jpg")
    (tmp_path / "training" / "readme.txt").write_text("hello")
    result = scan(tmp_path)
    assert result.layout == "food5k-flat"
    assert result.classes == ("food", "non_food")
    labels = {Path(s.path).name: s.label for s in result.splits["train"]}
    assert labels == {"0_1.jpg": 1, "1_1.jpg": 0, "1_2.jpg": 0}
    assert [(Path(b.path).name, b.reason) for b in result.bad_files] == [
        ("readme.txt", "file name has no 0_ (non_food) or 1_ (food) prefix")
    ]


def test_imagefolder_split_is_stratified_seeded_and_complete(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"cat": 10, "dog": 20})
    result = scan(root)
    assert result.layout == "imagefolder"
    assert {k: dict(v) for k, v in result.class_counts.items()} == {
        "train": {"cat": 6, "dog": 12},
        "val": {"cat": 2, "dog": 4},
        "test": {"cat": 2, "dog": 4},
    }
    every = [s.path for split in result.splits.values() for s in split]
    assert sorted(every) == sorted(str(p) for p in root.resolve().rglob("*.png"))
    again = scan(root)
    assert again.splits == result.splits
    other = scan(root, seed=1)
    assert other.splits["test"] != result.splits["test"]
    no_val = scan(root, val_fraction=0.0, test_fraction=0.5)
    assert list(no_val.splits) == ["train", "test"]
    assert dict(no_val.class_counts["test"]) == {"cat": 5, "dog": 10}


def test_bad_files_are_listed_with_reasons(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 1})
    (root / "train/a/notes.txt").write_text("x")
    (root / ".DS_Store").write_text("hidden files are ignored")
    _truncated(root / "train/b/cut.png")
    quick = scan(root)
    assert [(Path(b.path).name, b.reason) for b in quick.bad_files] == [
        ("notes.txt", "not a JPEG, PNG or WebP image")
    ]
    assert quick.verified is False
    full = scan(root, verify=True)
    assert [Path(b.path).name for b in full.bad_files] == ["notes.txt", "cut.png"]
    assert full.bad_files[1].reason.startswith("cannot decode: ")
    assert dict(full.class_counts["train"]) == {"a": 2, "b": 2}


def test_fingerprint_follows_the_files(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"a": 3, "b": 3})
    first = scan(root).fingerprint
    assert scan(root).fingerprint == first
    target = root / "a" / "000.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert scan(root).fingerprint != first


def test_rescan_reads_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path, {"a": 3, "b": 3})
    first = scan(root)
    reads: list[str] = []
    original = images.read_header
    monkeypatch.setattr(images, "read_header", lambda p: reads.append(Path(p).name) or original(p))
    assert scan(root) == first
    assert reads == []
    _png(root / "b" / "001.png", value=99, size=(5, 7))
    target = root / "b" / "001.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = scan(root)
    assert reads == ["001.png"]
    assert changed.image_sizes.describe() == "5x7 to 8x8 (most common 8x8: 5)"
    reads.clear()
    scan(root, verify=True)  # a full decode is not taken from a header-only entry
    assert len(reads) == 6


def test_to_dict_is_json_ready(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train/x": 1, "train/y": 1, "test/x": 1, "test/y": 1})
    data = json.loads(json.dumps(scan(root).to_dict()))
    assert data["layout"] == "cifake"
    assert data["splits"] == {"train": 2, "test": 2}
    assert data["class_counts"] == {"train": {"x": 1, "y": 1}, "test": {"x": 1, "y": 1}}
    assert data["image_sizes"]["most_common"] == {"width": 8, "height": 8, "count": 4}
    assert data["bad_files"] == []


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"^dataset folder not found: .*nowhere$"):
        scan(tmp_path / "nowhere")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^no images found in "):
        scan(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match=r"^no images found in "):
        scan(tmp_path)


def test_one_class_names_the_class(tmp_path: Path) -> None:
    _tree(tmp_path, {"cats": 3})
    with pytest.raises(DataError, match=r"^only one class found in .*: 'cats'; "):
        scan(tmp_path)


def test_class_left_empty_by_bad_files(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train/a": 2, "test/a": 1, "test/b": 1})
    (root / "train/b").mkdir()
    (root / "train/b/broken.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(DataError, match=r"^class 'b' has no readable image in the train split"):
        scan(root)


def test_partial_split_layout_says_what_is_missing(tmp_path: Path) -> None:
    _tree(tmp_path, {"train/a": 1, "train/b": 1})
    with pytest.raises(DataError, match=r"has train/ but not both train/ and test/"):
        scan(tmp_path)


def test_test_class_absent_from_train(tmp_path: Path) -> None:
    _tree(tmp_path, {"train/a": 1, "train/b": 1, "test/a": 1, "test/b": 1, "test/c": 1})
    with pytest.raises(DataError, match=r"^class 'c' appears in the test split of .* but not in"):
        scan(tmp_path)


def test_bad_fractions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        scan(tmp_path, val_fraction=1.0)
    with pytest.raises(ConfigError, match="must be below 1"):
        scan(tmp_path, val_fraction=0.5, test_fraction=0.5)


def test_cli_data_check_prints_layout_counts_and_bad_files(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train/FAKE": 2, "train/REAL": 3, "test/FAKE": 1, "test/REAL": 1})
    _truncated(root / "train/REAL/cut.png")
    result = CliRunner().invoke(app, ["data", "check", str(root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "layout cifake   classes 0=FAKE, 1=REAL" in out
    assert "image sizes all 8x8" in out
    assert "│ train │ 2    │ 3    │ 5     │" in out
    assert "│ test  │ 1    │ 1    │ 2     │" in out
    assert "1 bad files (fully decoded)" in out
    assert "train/REAL/cut.png" in out


def test_cli_data_check_json_and_quick(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"a": 5, "b": 5})
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json", "--quick"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["layout"], data["verified"], data["splits"]) == (
        "imagefolder",
        False,
        {"train": 6, "val": 2, "test": 2},
    )


def test_cli_data_check_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: dataset folder not found: ")
    assert result.stdout == ""


def test_mixed_sizes_summary(tmp_path: Path) -> None:
    _png(tmp_path / "a/1.png", size=(8, 6))
    _png(tmp_path / "a/2.png", size=(8, 6))
    _png(tmp_path / "b/1.png", size=(4, 10))
    _png(tmp_path / "b/2.png", size=(4, 10))
    _png(tmp_path / "b/3.png", size=(4, 10))
    summary = scan(tmp_path).image_sizes
    assert summary.describe() == "4x6 to 8x10 (most common 4x10: 3)"
    assert not summary.uniform
    assert summary.count == 5


def test_odd_entries_are_listed_with_reasons_and_fifos_never_opened(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 1})
    (root / "train/a/folder.jpg").mkdir()
    os.symlink("missing.png", root / "train/a/dangling.png")
    os.symlink("loop.png", root / "train/b/loop.png")
    os.mkfifo(root / "train/b/pipe.png")  # opening it would block: the scan must not
    os.symlink(root / "train/a/000.png", root / "train/b/link.png")  # a good link is an image
    for verify in (False, True):
        found = scan(root, verify=verify)
        assert [(Path(b.path).name, b.reason) for b in found.bad_files] == [
            ("dangling.png", "broken symbolic link: missing.png does not exist"),
            ("folder.jpg", "a folder, not an image file (folders inside a class are not read)"),
            ("loop.png", "symbolic link loop"),
            ("pipe.png", "not a regular file (a FIFO)"),
        ]
        assert dict(found.class_counts["train"]) == {"a": 2, "b": 3}


def test_an_exception_reading_one_file_makes_it_bad_not_the_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path, {"a": 3, "b": 3})
    original = images.read_header

    def flaky(path):
        if Path(path).name == "001.png":
            raise ValueError("Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK")
        return original(path)

    monkeypatch.setattr(images, "read_header", flaky)
    found = scan(root, test_fraction=0.3)
    assert [(Path(b.path).parent.name, b.reason) for b in found.bad_files] == [
        ("a", "cannot read: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"),
        ("b", "cannot read: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"),
    ]
