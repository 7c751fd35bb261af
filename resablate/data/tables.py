"""Table layouts: images stored as rows of Hugging Face ``datasets`` folders or parquet files.

Two layouts, found by :func:`find_tables` (``docs/data.md``):

``hf-datasets``
    A folder written by ``Dataset.save_to_disk`` (``state.json``: one pool of rows, split like an
    image folder) or ``DatasetDict.save_to_disk`` (``dataset_dict.json``: splits ``train``,
    ``test`` and optionally ``val``/``valid``/``validation``).
``parquet``
    One ``.parquet`` file (one pool), or a folder of ``train*.parquet``, ``test*.parquet`` and
    optionally ``val*.parquet`` files (each split may be sharded over several files).

Each row holds an encoded image (a binary column, or a Hugging Face ``Image`` struct with its
``bytes``) and a label (integers or strings). The columns are found by name (``image``/``img``,
``label``/``labels``) or by their Hugging Face feature type, or named in the data location
(``PATH::image=img,label=y``, :mod:`resablate.data_location`). Class names come from the label's
``ClassLabel`` feature when it has one, else they are the sorted label values.

Only ``pyarrow`` is needed to read them (the ``hf-data`` extra). What each file's rows showed
(label, SHA-256 of the encoded image, header) is remembered under ``paths.cache_dir("scan")``
while the file's size and mtime stay the same, so a rescan reads no pixel data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resablate import atomic, paths
from resablate.data import images
from resablate.data_location import SEPARATOR, DataLocation
from resablate.errors import ConfigError, DataError

TABLE_LAYOUTS: tuple[str, ...] = ("hf-datasets", "parquet")
IMAGE_COLUMNS: tuple[str, ...] = ("image", "img")
LABEL_COLUMNS: tuple[str, ...] = ("label", "labels")
INSTALL_HINT = (
    "reading parquet files and Hugging Face datasets folders needs pyarrow, which is not "
    "installed: pip install 'resablate[hf-data]'"
)

_SPLIT_NAMES: Mapping[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class TableRow:
    """Where a table layout keeps one sample's encoded image.

    Attributes:
        file: The ``.parquet`` or ``.arrow`` file (absolute).
        column: The image column.
        index: The row's index within the file.
        sha256: SHA-256 (hex) of the encoded image bytes, as scanned.
    """

    file: str
    column: str
    index: int
    sha256: str

    @property
    def name(self) -> str:
        """How the row is named to users and in bad-file lists: ``FILE[INDEX]``."""
        return f"{self.file}[{self.index}]"


@dataclass(frozen=True)
class ScannedRow:
    """What a scan learnt about one row.

    Attributes:
        row: Where its image is.
        split: "train", "val", "test", or "all" for a pool that is split later.
        class_name: Its class, or None when its label is missing or not a class.
        nbytes: Size of the encoded image in bytes.
        mtime_ns: Modification time of the file holding it, in nanoseconds.
        header: The image's header, or why the row cannot be used.
    """

    row: TableRow
    split: str
    class_name: str | None
    nbytes: int
    mtime_ns: int
    header: images.ImageHeader | str


@dataclass(frozen=True)
class TableScan:
    """The rows of a table layout, with its classes (a label indexes ``classes``)."""

    layout: str
    classes: tuple[str, ...]
    rows: tuple[ScannedRow, ...]


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return pyarrow


def find_tables(path: Path) -> tuple[str, dict[str, list[Path]]] | None:
    """The table layout at ``path`` and each split's files, or None when it is not one.

    Raises:
        DataError: A ``DatasetDict`` or parquet folder without both a train and a test split, a
            parquet file named for no split, or a ``.json`` file that cannot be read.
    """
    if path.is_file():
        return ("parquet", {"all": [path]}) if path.suffix == ".parquet" else None
    if (path / "dataset_dict.json").is_file():
        names = _read_json(path / "dataset_dict.json").get("splits", [])
        found = {
            split: _arrow_files(path / name)
            for split, aliases in _SPLIT_NAMES.items()
            for name in names
            if name.lower() in aliases
        }
        return "hf-datasets", _complete(path, "hf-datasets", found, "splits")
    if (path / "state.json").is_file():
        return "hf-datasets", {"all": _arrow_files(path)}
    shards = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    if not shards:
        return None
    by_split: dict[str, list[Path]] = {}
    for shard in shards:
        split = next(
            (s for s, aliases in _SPLIT_NAMES.items() if shard.name.lower().startswith(aliases)),
            None,
        )
        if split is None:
            raise DataError(
                f"parquet file {shard} is named for no split: a parquet folder holds "
                "train*.parquet, test*.parquet and optionally val*.parquet"
            )
        by_split.setdefault(split, []).append(shard)
    return "parquet", _complete(path, "parquet", by_split, "files")


def _complete(
    path: Path, layout: str, found: dict[str, list[Path]], what: str
) -> dict[str, list[Path]]:
    if "train" not in found or "test" not in found:
        present = ", ".join(found) or "none"
        raise DataError(
            f"{path} has {what} for {present} but not both train and test: a {layout} layout "
            "needs train and test (val optional)"
        )
    return {split: found[split] for split in _SPLIT_NAMES if split in found}


def _read_json(file: Path) -> dict[str, Any]:
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {file}: {images.describe_error(exc)}") from None
    if not isinstance(record, dict):
        raise DataError(f"cannot read {file}: not a JSON object")
    return record


def _arrow_files(folder: Path) -> list[Path]:
    """The data files a ``Dataset.save_to_disk`` folder lists in its ``state.json``."""
    state = _read_json(folder / "state.json")
    return [folder / entry["filename"] for entry in state.get("_data_files", [])]


def _open(file: Path, columns: Sequence[str] | None = None) -> Any:
    """The schema (``columns`` None) or the table of those columns of one file."""
    pa = _pyarrow()
    try:
        if file.suffix == ".parquet":
            if columns is None:
                return pa.parquet.read_schema(file)
            return pa.parquet.read_table(file, columns=list(columns))
        reader = pa.ipc.open_stream(pa.memory_map(str(file)))
        return reader.schema if columns is None else reader.read_all().select(list(columns))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {file}: {images.describe_error(exc)}") from None


def _features(schema: Any) -> dict[str, Any]:
    """The Hugging Face feature of each column, from the schema's metadata (empty if none)."""
    blob = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(blob)["info"]["features"] if blob else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _pick(
    role: str,
    schema: Any,
    features: Mapping[str, Any],
    location: DataLocation,
    file: Path,
    names: Sequence[str],
    feature_type: str,
) -> str:
    """The image or label column (``role``): named in ``location``, or found by name or type."""
    columns = list(schema.names)
    available = ", ".join(columns)
    given = location.options.get(role)
    if given is not None:
        if given not in columns:
            raise DataError(f"{role} column {given!r} is not in {file}; its columns: {available}")
        return given
    by_name = [c for c in columns if c.lower() in names]
    typed = [
        c for c, f in features.items() if isinstance(f, dict) and f.get("_type") == feature_type
    ]
    for candidates in (by_name, typed):
        if len(candidates) == 1:
            return candidates[0]
    looked = " or ".join(map(repr, names))
    raise DataError(
        f"no {role} column in {file} (looked for {looked} and a {feature_type} feature); its "
        f"columns: {available}; name it: {location.path}{SEPARATOR}{role}=COLUMN"
    )


def _check_types(schema: Any, image: str, label: str, file: Path) -> None:
    pa = _pyarrow()
    image_type, label_type = schema.field(image).type, schema.field(label).type
    binary = (pa.types.is_binary, pa.types.is_large_binary)
    holds_bytes = any(test(image_type) for test in binary) or (
        pa.types.is_struct(image_type)
        and image_type.get_field_index("bytes") >= 0
        and any(test(image_type.field("bytes").type) for test in binary)
    )
    if not holds_bytes:
        raise DataError(
            f"image column {image!r} of {file} holds {image_type}, not encoded images (binary, "
            "or Hugging Face Image structs with their bytes)"
        )
    if not (
        pa.types.is_integer(label_type)
        or pa.types.is_string(label_type)
        or pa.types.is_large_string(label_type)
    ):
        raise DataError(
            f"label column {label!r} of {file} holds {label_type}, not integers or strings"
        )


def _encoded(table: Any, column: str) -> list[bytes | None]:
    """Each row's encoded image: the binary value, or an Image struct's bytes (read from its
    ``path`` when the bytes were not embedded and that file exists)."""
    values = table.column(column).combine_chunks()
    if not hasattr(values, "field"):
        return list(values.to_pylist())
    data = values.field("bytes").to_pylist()
    index = values.type.get_field_index("path")
    if index < 0:
        return list(data)
    paths_ = values.field(index).to_pylist()
    return [
        b if b is not None or p is None or not os.path.isfile(p) else Path(p).read_bytes()
        for b, p in zip(data, paths_, strict=True)
    ]


def _inspect(data: bytes | None, verify: bool) -> tuple[str, list[Any] | str]:
    """A row's digest and its header (format, width, height) or why it is bad."""
    if data is None:
        return "", "no image bytes in this row"
    try:
        header = images.read_header(data)
        if verify:
            images.decode_image(data)
    except images.BadImageError as exc:
        return hashlib.sha256(data).hexdigest(), str(exc)
    except MemoryError:
        raise
    except Exception as exc:
        return hashlib.sha256(data).hexdigest(), f"cannot read: {images.describe_error(exc)}"
    return hashlib.sha256(data).hexdigest(), [header.format, header.width, header.height]


def _file_rows(file: Path, image: str, label: str, verify: bool) -> dict[str, Any]:
    """Each row's label, encoded size, digest and header, from the scan cache when still valid."""
    stat = file.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha256(f"{file}\x1f{image}\x1f{label}".encode("utf-8", "surrogateescape"))
    cache_file = paths.cache_dir("scan") / f"table-{key.hexdigest()[:24]}.json"
    try:
        cached = json.loads(cache_file.read_text())
        if (
            cached.get("format") == _CACHE_FORMAT
            and cached.get("stamp") == stamp
            and (cached.get("verified") or not verify)
        ):
            return dict(cached)
    except (OSError, ValueError, AttributeError):
        pass
    table = _open(file, [image, label])
    encoded = _encoded(table, image)
    inspected = images.parallel_map(lambda data: _inspect(data, verify), encoded)
    record = {
        "format": _CACHE_FORMAT,
        "file": str(file),
        "stamp": stamp,
        "verified": verify,
        "mtime_ns": stat.st_mtime_ns,
        "labels": table.column(label).to_pylist(),
        "rows": [
            [0 if data is None else len(data), digest, header]
            for data, (digest, header) in zip(encoded, inspected, strict=True)
        ],
    }
    atomic.write_text(cache_file, json.dumps(record))
    return record


def _class_names(label_feature: Any, values: Sequence[Any]) -> tuple[tuple[str, ...], bool]:
    """The classes and whether labels index them (a ClassLabel) rather than name them."""
    if isinstance(label_feature, dict) and label_feature.get("_type") == "ClassLabel":
        return tuple(str(name) for name in label_feature.get("names", [])), True
    return tuple(str(v) for v in sorted({v for v in values if v is not None})), False


def scan_tables(location: DataLocation, *, verify: bool = False) -> TableScan | None:
    """Read the rows of the table layout at ``location``; None when it is not a table layout.

    Args:
        location: The dataset and its column options.
        verify: Decode every image fully (else headers only).

    Raises:
        ConfigError: Column options for an image folder, or pyarrow missing (the install hint).
        DataError: A split without rows, a column that is missing or of the wrong type (the
            message names the file and its columns), files of one dataset that disagree on their
            label names, or an unreadable file.
    """
    found = find_tables(location.path)
    if found is None:
        if location.options:
            raise ConfigError(
                f"dataset options ({', '.join(location.options)}) name the columns of parquet "
                f"files and Hugging Face datasets; {location.path} is an image folder"
            )
        return None
    layout, split_files = found
    per_file: list[tuple[str, Path, str, dict[str, Any]]] = []
    label_features: list[Any] = []
    for split, files in split_files.items():
        for file in files:
            schema = _open(file)
            features = _features(schema)
            image = _pick("image", schema, features, location, file, IMAGE_COLUMNS, "Image")
            label = _pick("label", schema, features, location, file, LABEL_COLUMNS, "ClassLabel")
            _check_types(schema, image, label, file)
            label_features.append(features.get(label))
            per_file.append((split, file, image, _file_rows(file, image, label, verify)))
        if not any(len(r["rows"]) for s, _, _, r in per_file if s == split):
            shown = ", ".join(str(f) for f in files)
            raise DataError(f"the {split} split of {location.path} is empty: no rows in {shown}")
    if any(f != label_features[0] for f in label_features):
        raise DataError(f"the files of {location.path} disagree on their label column's feature")
    train_values = [
        v for split, _, _, r in per_file if split in ("train", "all") for v in r["labels"]
    ]
    classes, indexed = _class_names(label_features[0], train_values)
    rows = []
    for split, file, image, record in per_file:
        for index, (value, (nbytes, digest, header)) in enumerate(
            zip(record["labels"], record["rows"], strict=True)
        ):
            class_name = _class_of(value, classes, indexed)
            if value is None and not isinstance(header, str):
                header = "no label in this row"
            elif class_name is None and not isinstance(header, str):
                header = f"label {value!r} is not a class ({', '.join(classes)})"
            rows.append(
                ScannedRow(
                    row=TableRow(str(file), image, index, digest),
                    split=split,
                    class_name=class_name,
                    nbytes=nbytes,
                    mtime_ns=record["mtime_ns"],
                    header=header if isinstance(header, str) else images.ImageHeader(*header),
                )
            )
    return TableScan(layout, classes, tuple(rows))


def _class_of(value: Any, classes: Sequence[str], indexed: bool) -> str | None:
    if value is None:
        return None
    if indexed:
        in_range = isinstance(value, int) and 0 <= value < len(classes)
        return classes[value] if in_range else None
    return str(value)


_COLUMN_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _column(file: str, column: str, size: int, mtime_ns: int) -> tuple[bytes | None, ...]:
    """One file's encoded images (cached per file version: decoding walks a file's rows)."""
    return tuple(_encoded(_open(Path(file), [column]), column))


def read_image(row: TableRow) -> bytes:
    """The encoded image of ``row``.

    Raises:
        images.BadImageError: The row is gone, has no bytes, or changed since it was scanned.
    """
    try:
        stat = os.stat(row.file)
        with _COLUMN_LOCK:
            values = _column(row.file, row.column, stat.st_size, stat.st_mtime_ns)
    except (OSError, DataError) as exc:
        raise images.BadImageError(f"cannot read: {images.describe_error(exc)}") from None
    data = values[row.index] if row.index < len(values) else None
    if data is None or hashlib.sha256(data).hexdigest() != row.sha256:
        raise images.BadImageError("changed since the dataset was scanned")
    return data
