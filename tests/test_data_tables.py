"""Table layouts (Hugging Face ``datasets`` folders, parquet files) through ``scan``, the
decode-once cache, ``data check`` and a grid; the data location's column options."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from resablate.data import decode_split, scan
from resablate.data_location import DataLocation
from resablate.errors import ConfigError, DataError
from resablate.grid.store import ResultStore
from resablate_cli.app import app

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

CLASSES = ("FAKE", "REAL")
COUNTS = {"train": 6, "test": 3}  # images per class


def _folder(root: Path) -> Path:
    """A CIFAKE-style tree of 8×8 PNGs with random pixels: the reference every table mirrors."""
    rng = np.random.default_rng(0)
    for split, n in COUNTS.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
    return root


def _rows(folder: Path, split: str) -> tuple[list[bytes], list[int]]:
    """The encoded images and labels of a split, in the image folder's sample order."""
    files = sorted((folder / split).glob("*/*.png"))
    return [f.read_bytes() for f in files], [CLASSES.index(f.parent.name) for f in files]


def _hf_dict(folder: Path, target: Path, names: tuple[str, ...] = CLASSES) -> Path:
    """``DatasetDict.save_to_disk`` of the folder (Image and ClassLabel features)."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))}
    )
    splits = {}
    for split in COUNTS:
        encoded, labels = _rows(folder, split)
        labels = [names.index(CLASSES[label]) for label in labels]
        images = [{"bytes": data, "path": None} for data in encoded]
        data = {"image": images, "label": labels}
        splits[split] = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(target))
    return target


def _parquet(file: Path, encoded: list[bytes], labels: list[object], columns=("img", "y")) -> Path:
    """A parquet file of a binary image column and a label column (no HF metadata)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    image, label = columns
    values = pa.array(labels, pa.string() if not labels else None)
    pq.write_table(pa.table({image: pa.array(encoded, pa.binary()), label: values}), file)
    return file


def _parquet_folder(folder: Path, target: Path, label_of=lambda i: CLASSES[i]) -> Path:
    for split in COUNTS:
        encoded, labels = _rows(folder, split)
        _parquet(target / f"{split}.parquet", encoded, [label_of(x) for x in labels])
    return target


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("reference") / "folder")


def _decoded(location: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    decoded = decode_split(scan(location), split, storage_size=None)
    return decoded.images, decoded.labels


def test_a_datasetdict_folder_reads_as_its_image_folder(reference: Path, tmp_path: Path) -> None:
    root = _hf_dict(reference, tmp_path / "hf")
    result = scan(root)
    assert (result.layout, result.classes, list(result.splits)) == (
        "hf-datasets",
        CLASSES,
        ["train", "test"],
    )
    assert result.class_counts == {"train": {"FAKE": 6, "REAL": 6}, "test": {"FAKE": 3, "REAL": 3}}
    assert result.image_sizes.describe() == "all 8x8"
    first = result.splits["train"][0]
    assert first.path == f"{root}/train/data-00000-of-00001.arrow[0]"
    assert (first.label, first.row.column, first.row.index) == (0, "image", 0)
    for split in COUNTS:
        images, labels = _decoded(root, split)
        want_images, want_labels = _decoded(reference, split)
        assert images.shape == (len(want_images), 3, 8, 8)
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_classlabel_order_gives_the_classes(reference: Path, tmp_path: Path) -> None:
    root = _hf_dict(reference, tmp_path / "hf", names=("REAL", "FAKE"))
    result = scan(root)
    assert result.classes == ("REAL", "FAKE")
    _, labels = _decoded(root, "test")
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]  # FAKE rows first, as in the folder


def test_parquet_folder_with_string_labels_and_a_named_label_column(
    reference: Path, tmp_path: Path
) -> None:
    root = _parquet_folder(reference, tmp_path / "pq")
    with pytest.raises(DataError, match=r"^no label column in .*train.parquet \(looked for"):
        scan(root)
    result = scan(f"{root}::label=y")
    assert (result.layout, result.classes) == ("parquet", CLASSES)  # sorted label values
    assert result.class_counts == {"train": {"FAKE": 6, "REAL": 6}, "test": {"FAKE": 3, "REAL": 3}}
    for split in COUNTS:
        images, labels = _decoded(f"{root}::label=y", split)
        want_images, want_labels = _decoded(reference, split)
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_integer_labels_are_classes_sorted_by_value(reference: Path, tmp_path: Path) -> None:
    encoded, labels = _rows(reference, "train")
    values = [10 if label else 2 for label in labels]  # numeric order: 2 before 10
    _parquet(tmp_path / "pq" / "train.parquet", encoded, values, ("image", "label"))
    _parquet(tmp_path / "pq" / "test.parquet", encoded[4:8], values[4:8], ("image", "label"))
    assert scan(tmp_path / "pq").classes == ("2", "10")


def test_sharded_parquet_splits_keep_file_then_row_order(reference: Path, tmp_path: Path) -> None:
    encoded, labels = _rows(reference, "train")
    names = [CLASSES[label] for label in labels]
    root = tmp_path / "pq"
    _parquet(root / "train-00000-of-00002.parquet", encoded[:7], names[:7], ("image", "label"))
    _parquet(root / "train-00001-of-00002.parquet", encoded[7:], names[7:], ("image", "label"))
    test_encoded, test_labels = _rows(reference, "test")
    _parquet(
        root / "test-00000-of-00001.parquet",
        test_encoded,
        [CLASSES[label] for label in test_labels],
        ("image", "label"),
    )
    samples = scan(root).splits["train"]
    assert [Path(s.path).name for s in samples][6:9] == [
        "train-00000-of-00002.parquet[6]",
        "train-00001-of-00002.parquet[0]",
        "train-00001-of-00002.parquet[1]",
    ]
    images, _ = _decoded(root, "train")
    assert torch.equal(images, _decoded(reference, "train")[0])


def test_one_parquet_file_is_split_as_its_image_folder(reference: Path, tmp_path: Path) -> None:
    pooled = tmp_path / "classes"
    for name in CLASSES:
        shutil.copytree(reference / "train" / name, pooled / name)
    encoded, labels = _rows(reference, "train")
    file = _parquet(tmp_path / "all.parquet", encoded, [CLASSES[x] for x in labels])
    table = scan(f"{file}::label=y", seed=3)
    folder = scan(pooled, seed=3)
    assert (table.layout, folder.layout) == ("parquet", "imagefolder")
    assert table.root == file
    assert table.class_counts == folder.class_counts
    assert table.class_counts["test"] == {"FAKE": 1, "REAL": 1}
    for split in ("train", "val", "test"):
        images, labels = _decoded(f"{file}::label=y", split)
        want_images, want_labels = _decoded(pooled, split)
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_fingerprint_covers_content_not_place(reference: Path, tmp_path: Path) -> None:
    root = _hf_dict(reference, tmp_path / "hf")
    first = scan(root).fingerprint
    assert scan(root).fingerprint == first  # a rescan (from the scan cache)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert scan(moved).fingerprint == first  # same rows, another folder, new mtimes
    # The decode cache is keyed by content too: the copy reuses the original's entry.
    original = decode_split(scan(root), "train", storage_size=None)
    copy = decode_split(scan(moved), "train", storage_size=None)
    assert (copy.from_cache, copy.cache_file) == (True, original.cache_file)

    relabelled = _hf_dict(reference, tmp_path / "relabelled", names=("REAL", "FAKE"))
    assert scan(relabelled).fingerprint != first
    changed = tmp_path / "changed"
    shutil.copytree(reference, changed / "folder")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(changed / "folder" / "train" / "REAL" / "000.png")
    edited = scan(_hf_dict(changed / "folder", changed / "hf"))
    assert edited.fingerprint != first
    again = decode_split(edited, "train", storage_size=None)
    assert again.from_cache is False
    assert again.images[6, :, 0, 0].tolist() == [1, 2, 3]


def test_bad_rows_are_listed_by_file_and_index(reference: Path, tmp_path: Path) -> None:
    encoded, labels = _rows(reference, "train")
    encoded[2] = b"not an image"
    names: list[object] = [CLASSES[label] for label in labels]
    names[4] = None
    root = tmp_path / "pq"
    train = _parquet(root / "train.parquet", encoded, names, ("image", "label"))
    test_encoded, test_labels = _rows(reference, "test")
    test_names = [CLASSES[label] for label in test_labels]
    _parquet(root / "test.parquet", test_encoded, test_names, ("image", "label"))
    result = scan(root)
    assert [(b.path, b.reason) for b in result.bad_files] == [
        (f"{train}[2]", "not a JPEG, PNG or WebP image"),
        (f"{train}[4]", "no label in this row"),
    ]
    assert len(result.splits["train"]) == 10


def test_scan_reads_the_data_location_text(tmp_path: Path) -> None:
    location = DataLocation.parse(f"{tmp_path}/x.parquet:: label = y ,image=img")
    assert location.text == f"{tmp_path}/x.parquet::image=img,label=y"
    assert DataLocation.parse(location.text) == location
    assert DataLocation.parse(tmp_path).text == str(tmp_path)
    with pytest.raises(ConfigError, match=r"^unknown dataset option 'colour' in .*options: image"):
        DataLocation.parse(f"{tmp_path}::colour=red")
    with pytest.raises(ConfigError, match=r"^dataset option 'image' in .* needs one value"):
        DataLocation.parse(f"{tmp_path}::image=a,image=b")


def _check(location: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["data", "check", str(location)])
    return result.exit_code, result.stderr


def test_bad_input_is_one_line_and_exit_2(reference: Path, tmp_path: Path) -> None:
    encoded, labels = _rows(reference, "train")
    names = [CLASSES[label] for label in labels]
    good = _parquet_folder(reference, tmp_path / "good")
    file = good / "train.parquet"
    assert _check(f"{good}::image=picture,label=y") == (
        2,
        f"error: image column 'picture' is not in {file}; its columns: img, y\n",
    )
    unlabelled = tmp_path / "unlabelled.parquet"
    pq.write_table(pa.table({"image": pa.array(encoded, pa.binary())}), unlabelled)
    assert _check(unlabelled) == (
        2,
        f"error: no label column in {unlabelled} (looked for 'label' or 'labels' and a "
        f"ClassLabel feature); its columns: image; name it: {unlabelled}::label=COLUMN\n",
    )
    empty = tmp_path / "empty"
    _parquet(empty / "train.parquet", encoded, names, ("image", "label"))
    _parquet(empty / "test.parquet", [], [], ("image", "label"))
    assert _check(empty) == (
        2,
        f"error: the test split of {empty} is empty: no rows in {empty / 'test.parquet'}\n",
    )
    one = _parquet(tmp_path / "one.parquet", encoded, ["REAL"] * len(encoded), ("image", "label"))
    assert _check(one) == (
        2,
        f"error: only one class found in {one}: 'REAL'; a classification dataset needs at "
        "least two label values\n",
    )
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"image": list(range(4)), "label": names[:4]}), typed)
    assert _check(typed) == (
        2,
        f"error: image column 'image' of {typed} holds int64, not encoded images (binary, or "
        "Hugging Face Image structs with their bytes)\n",
    )
    assert _check(f"{reference}::label=y") == (
        2,
        f"error: dataset options (label) name the columns of parquet files and Hugging Face "
        f"datasets; {reference} is an image folder\n",
    )


def test_without_pyarrow_the_hint_names_the_extra(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _parquet_folder(reference, tmp_path / "pq")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert _check(root) == (
        2,
        "error: reading parquet files and Hugging Face datasets folders needs pyarrow, which is "
        "not installed: pip install 'resablate[hf-data]'\n",
    )


def test_data_check_shows_a_table_layout(reference: Path, tmp_path: Path) -> None:
    root = _hf_dict(reference, tmp_path / "hf")
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["layout"], shown["classes"], shown["splits"]) == (
        "hf-datasets",
        list(CLASSES),
        {"train": 12, "test": 6},
    )
    assert (shown["verified"], shown["bad_files"]) == (True, [])


GRID = [
    *("grid", "--arch", "resnet18", "--residual", "on", "--weights", "none", "--recipe", "demo"),
    *("--max-steps", "2", "--image-size", "8", "--batch-size", "4", "--device", "cpu"),
]


@pytest.mark.parametrize("layout", ["hf-datasets", "parquet", "one-parquet"])
def test_a_grid_trains_a_cell_from_each_table_layout(
    layout: str, reference: Path, tmp_path: Path
) -> None:
    if layout == "hf-datasets":
        data = str(_hf_dict(reference, tmp_path / "hf"))
    elif layout == "parquet":
        data = f"{_parquet_folder(reference, tmp_path / 'pq')}::label=y"
    else:
        encoded, labels = _rows(reference, "train")
        file = _parquet(tmp_path / "all.parquet", encoded, [CLASSES[x] for x in labels])
        data = f"{file}::image=img,label=y"
    out = tmp_path / "grid"
    result = CliRunner().invoke(app, [*GRID, "--data", data, "--out", str(out)])
    assert result.exit_code == 0, result.output
    with ResultStore.open(out) as store:
        (row,) = store.cells()
    assert row.status == "done"
    assert row.cell.data == data
    assert row.environment["dataset_fingerprint"] == scan(data).fingerprint


def test_a_grid_on_unusable_data_writes_nothing(reference: Path, tmp_path: Path) -> None:
    root = _parquet_folder(reference, tmp_path / "pq")
    out = tmp_path / "grid"
    result = CliRunner().invoke(app, [*GRID, "--data", f"{root}::label=z", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: label column 'z' is not in {root / 'train.parquet'}; its columns: img, y\n"
    )
    assert not out.exists()


def test_image_bytes_roundtrip_through_decode_image(reference: Path) -> None:
    from resablate.data import decode_image

    (file, *_) = sorted((reference / "test").glob("*/*.png"))
    assert np.array_equal(decode_image(file.read_bytes()), decode_image(file))
    assert np.array_equal(decode_image(file.read_bytes()), np.asarray(Image.open(file)))


def test_a_table_streams_the_same_images_when_over_the_memory_budget(
    reference: Path, tmp_path: Path
) -> None:
    root = _hf_dict(reference, tmp_path / "hf")
    streaming = decode_split(scan(root), "test", storage_size=4, memory_budget=0)
    resident = decode_split(scan(root), "test", storage_size=4)
    assert type(streaming).__name__ == "StreamingSplit"
    order = torch.tensor([5, 0, 3])
    assert torch.equal(streaming.get_batch(order), resident.get_batch(order))


def test_a_classlabel_value_outside_its_names_is_a_bad_row(tmp_path: Path) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    encoded = [Image.new("RGB", (8, 8), (v, 0, 0)) for v in range(6)]
    rows = {"image": encoded, "label": [0, 1, 0, 1, -1, 1]}
    table = datasets.Dataset.from_dict(rows, features=features)
    table = table.cast_column("label", datasets.ClassLabel(names=["cat", "dog"]))
    table.save_to_disk(str(tmp_path / "hf"))
    result = scan(tmp_path / "hf", test_fraction=0.25, val_fraction=0.0)
    (bad,) = result.bad_files
    assert (Path(bad.path).name, bad.reason) == (
        "data-00000-of-00001.arrow[4]",
        "label -1 is not a class (cat, dog)",
    )
    assert result.class_counts == {"train": {"cat": 1, "dog": 2}, "test": {"cat": 1, "dog": 1}}
