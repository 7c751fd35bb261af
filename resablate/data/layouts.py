"""Dataset layouts: find the splits, classes and images of a folder, and list the bad files.

Three layouts are recognised automatically (folder names compared case-insensitively):

``cifake``
    ``train/`` and ``test/`` (and optionally ``val/``, ``valid/`` or ``validation/``), each holding
    one folder per class, as in CIFAKE (``train/REAL``, ``train/FAKE``, ...).
``food5k``
    ``training/``, ``evaluation/`` and optionally ``validation/``, each holding one folder per
    class (the Kaggle copy of Food-5K). ``evaluation`` is the test split, ``validation`` the
    val split.
``food5k-flat``
    The same three folders holding the images directly, the class in the file-name prefix (the
    original Food-5K): ``1_*`` is class ``food``, ``0_*`` class ``non_food``. These are the
    Kaggle copy's folder names, so both copies give the same labels: ``food`` = 0,
    ``non_food`` = 1.
``imagefolder``
    One folder per class and nothing else: the images are split into train/val/test per class
    (stratified) by a seeded random permutation.
``hf-datasets``, ``parquet``
    Images stored as table rows (:mod:`resablate.data.tables`): a Hugging Face ``datasets``
    folder, or parquet files. A single table (one parquet file, one ``Dataset``) is split like an
    image folder.

Classes are sorted names; a sample's label is its class's index. Hidden files and folders (names
starting with ``.``) are ignored; every other file inside a class folder is a candidate image, and
those that are not readable JPEG/PNG/WebP images are listed as bad files with the reason.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat as stat_module
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from resablate import atomic, paths
from resablate.data import images, tables
from resablate.data_location import DataLocation
from resablate.errors import ConfigError, DataError, DataNotFoundError

LAYOUTS: tuple[str, ...] = ("cifake", "food5k", "food5k-flat", "imagefolder", *tables.TABLE_LAYOUTS)
SPLITS: tuple[str, ...] = ("train", "val", "test")

_CIFAKE_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
_FOOD5K_DIRS = {"train": ("training",), "val": ("validation",), "test": ("evaluation",)}
_FOOD5K_PREFIX_CLASSES = {"0_": "non_food", "1_": "food"}


@dataclass(frozen=True)
class Sample:
    """One candidate image: a file, or a row of a table layout.

    Attributes:
        path: Absolute path of the file (a table row: ``FILE[INDEX]``, see ``row``).
        label: Index of its class in :attr:`DatasetScan.classes`.
        nbytes: File size in bytes (a table row: size of its encoded image).
        mtime_ns: Modification time in nanoseconds since the epoch (a table row: its file's).
        width: Width in pixels (after EXIF orientation), from the header.
        height: Height in pixels (after EXIF orientation), from the header.
        row: Where a table layout keeps the encoded image (None for an image file).
    """

    path: str
    label: int
    nbytes: int
    mtime_ns: int
    width: int
    height: int
    row: tables.TableRow | None = None

    @property
    def identity(self) -> str:
        """What identifies the image's content: size and mtime of a file, the digest of a row."""
        return self.row.sha256 if self.row is not None else f"{self.nbytes}\x1f{self.mtime_ns}"


def image_source(sample: Sample) -> images.Source:
    """What :func:`resablate.data.images.decode_image` reads for ``sample``: its file, or the
    encoded bytes of its table row."""
    return sample.path if sample.row is None else tables.read_image(sample.row)


@dataclass(frozen=True)
class BadFile:
    """A file that was skipped, with the reason."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Plain-type form for JSON."""
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class SizeSummary:
    """Image sizes over the readable images of a dataset, in pixels.

    Attributes:
        count: Number of images summarised.
        min_width: Smallest width.
        max_width: Largest width.
        min_height: Smallest height.
        max_height: Largest height.
        most_common: The most frequent (width, height) and how many images have it.
    """

    count: int
    min_width: int
    max_width: int
    min_height: int
    max_height: int
    most_common: tuple[int, int, int]

    @property
    def uniform(self) -> bool:
        """True when all images share one size."""
        return self.most_common[2] == self.count

    def describe(self) -> str:
        """One line, e.g. ``"all 32x32"`` or ``"224x168 to 512x512 (most common 512x384: 31)"``."""
        width, height, n = self.most_common
        if self.uniform:
            return f"all {width}x{height}"
        return (
            f"{self.min_width}x{self.min_height} to {self.max_width}x{self.max_height} "
            f"(most common {width}x{height}: {n})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form for JSON."""
        width, height, n = self.most_common
        return {
            "count": self.count,
            "min_width": self.min_width,
            "max_width": self.max_width,
            "min_height": self.min_height,
            "max_height": self.max_height,
            "most_common": {"width": width, "height": height, "count": n},
        }


@dataclass(frozen=True)
class DatasetScan:
    """What :func:`scan` found in a dataset folder.

    Attributes:
        root: The dataset folder, or its parquet file (absolute).
        layout: One of :data:`LAYOUTS`.
        classes: Sorted class names; a label is an index into this tuple.
        splits: Split name ("train", "val", "test"; "val" only when present) -> its readable
            samples, sorted by path.
        bad_files: Files skipped, with the reason, sorted by path.
        image_sizes: Summary of the readable images' sizes.
        fingerprint: SHA-256 (hex) of the layout, classes and every candidate file's relative
            path, split, label, size and mtime (table layouts: every row's file, index, split,
            class and image digest): it changes when any image or label does.
        verified: True when every image was fully decoded (``scan(..., verify=True)``); False
            when only headers were read (truncated files are then found at decode time).
    """

    root: Path
    layout: str
    classes: tuple[str, ...]
    splits: Mapping[str, tuple[Sample, ...]]
    bad_files: tuple[BadFile, ...]
    image_sizes: SizeSummary
    fingerprint: str
    verified: bool = False
    _class_counts: Mapping[str, Mapping[str, int]] = field(init=False, repr=False, compare=False)
    _base: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_base", self.root if self.root.is_dir() else self.root.parent)
        counts = {
            split: MappingProxyType(
                {
                    name: sum(1 for s in samples if s.label == index)
                    for index, name in enumerate(self.classes)
                }
            )
            for split, samples in self.splits.items()
        }
        object.__setattr__(self, "_class_counts", MappingProxyType(counts))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle support: the read-only mappings travel as plain dicts (``mappingproxy`` cannot
        be pickled), so a scan crosses process boundaries (grid worker processes, Ray tasks)."""
        fields = (self.root, self.layout, self.classes, dict(self.splits), self.bad_files)
        return _unpickle_scan, (*fields, self.image_sizes, self.fingerprint, self.verified)

    @property
    def class_counts(self) -> Mapping[str, Mapping[str, int]]:
        """Split -> class name -> number of readable images."""
        return self._class_counts

    def relative(self, path: str) -> str:
        """``path`` (a sample's or bad file's) relative to :attr:`root` (its folder for a file)."""
        return os.path.relpath(path, self._base)

    def absolute(self, relative: str) -> str:
        """The inverse of :meth:`relative`."""
        return os.path.normpath(self._base / relative)

    def samples(self, split: str) -> tuple[Sample, ...]:
        """The samples of one split.

        Raises:
            ConfigError: The split is not in this dataset (the message lists those that are).
        """
        if split not in self.splits:
            legal = ", ".join(self.splits)
            raise ConfigError(f"split {split!r} is not in dataset {self.root}; it has: {legal}")
        return self.splits[split]

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form for JSON: everything except the per-file sample lists."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": list(self.classes),
            "splits": {split: len(samples) for split, samples in self.splits.items()},
            "class_counts": {split: dict(c) for split, c in self.class_counts.items()},
            "image_sizes": self.image_sizes.to_dict(),
            "bad_files": [bad.to_dict() for bad in self.bad_files],
            "fingerprint": self.fingerprint,
            "verified": self.verified,
        }

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        head = Text.assemble(
            ("dataset ", "bold"),
            str(self.root),
            "\n",
            ("layout ", "bold"),
            self.layout,
            ("   classes ", "bold"),
            ", ".join(f"{i}={name}" for i, name in enumerate(self.classes)),
            "\n",
            ("image sizes ", "bold"),
            self.image_sizes.describe(),
            ("   fingerprint ", "bold"),
            self.fingerprint[:12],
        )
        table = Table("split", *self.classes, "total", title="images per split and class")
        for split, counts in self.class_counts.items():
            table.add_row(
                split, *(f"{counts[name]:,}" for name in self.classes), f"{sum(counts.values()):,}"
            )
        checked = "fully decoded" if self.verified else "headers only"
        if not self.bad_files:
            return Group(head, table, Text(f"no bad files ({checked})"))
        bad = Table("bad file", "reason", title=f"{len(self.bad_files)} bad files ({checked})")
        for item in self.bad_files:
            bad.add_row(self.relative(item.path), item.reason)
        return Group(head, table, bad)


def _unpickle_scan(
    root: Path,
    layout: str,
    classes: tuple[str, ...],
    splits: dict[str, tuple[Sample, ...]],
    *rest: Any,
) -> DatasetScan:
    """Rebuild a pickled :class:`DatasetScan` (see ``DatasetScan.__reduce__``)."""
    return DatasetScan(root, layout, classes, MappingProxyType(splits), *rest)


def _visible(entries: Iterable[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in _visible(folder.iterdir()) if p.is_dir()]


def _files(folder: Path) -> list[Path]:
    """Every visible entry of ``folder`` that is not a folder (links, FIFOs, ... included)."""
    return [p for p in _visible(folder.iterdir()) if not p.is_dir()]


def _find_split_dirs(
    root: Path, names: Mapping[str, tuple[str, ...]], style: str
) -> dict[str, Path] | None:
    """Map split keys to the folders of ``root`` named for them, or None if the style is absent."""
    by_name = {p.name.lower(): p for p in _subdirs(root)}
    found = {
        split: next(by_name[a] for a in aliases if a in by_name)
        for split, aliases in names.items()
        if any(a in by_name for a in aliases)
    }
    if not found or (set(found) == {"val"} and style == "cifake"):
        return None
    if "train" in found and "test" in found:
        return found
    # Part of a split layout: name what is missing rather than guess.
    train_name, test_name = names["train"][0], names["test"][0]
    present = ", ".join(f"{p.name}/" for p in found.values())
    raise DataError(
        f"{root} has {present} but not both {train_name}/ and {test_name}/: a {style} layout needs "
        f"{train_name}/ and {test_name}/ (validation folder optional)"
    )


@dataclass
class _Candidate:
    path: Path
    split: str
    class_name: str


def _class_folder_candidates(split: str, folder: Path) -> list[_Candidate]:
    """Every visible entry of each class folder: files, and nested folders (listed as bad)."""
    return [
        _Candidate(path, split, class_dir.name)
        for class_dir in _subdirs(folder)
        for path in _visible(class_dir.iterdir())
    ]


def _flat_candidates(split: str, folder: Path, bad: list[BadFile]) -> list[_Candidate]:
    found = []
    for path in _files(folder):
        class_name = _FOOD5K_PREFIX_CLASSES.get(path.name[:2])
        if class_name is None:
            bad.append(BadFile(str(path), "file name has no 0_ (non_food) or 1_ (food) prefix"))
        else:
            found.append(_Candidate(path, split, class_name))
    return found


def _detect(root: Path, bad: list[BadFile]) -> tuple[str, list[_Candidate]]:
    """Return the layout name and every candidate file with its split and class name."""
    for layout, names in (("cifake", _CIFAKE_DIRS), ("food5k", _FOOD5K_DIRS)):
        split_dirs = _find_split_dirs(root, names, layout)
        if split_dirs is None:
            continue
        if layout == "food5k" and not any(_subdirs(d) for d in split_dirs.values()):
            flat = [c for s, d in split_dirs.items() for c in _flat_candidates(s, d, bad)]
            return "food5k-flat", flat
        return layout, [c for s, d in split_dirs.items() for c in _class_folder_candidates(s, d)]
    return "imagefolder", _class_folder_candidates("all", root)


def _stratified_split(
    samples: Sequence[Sample], n_classes: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, tuple[Sample, ...]]:
    """Split each class by a permutation drawn from ``numpy.random.default_rng(seed)``.

    Per class of n images: ``round(n * test_fraction)`` go to test (at least 1 when n >= 2),
    ``round(n * val_fraction)`` to val, the rest (at least 1) to train.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for label in range(n_classes):
        members = [s for s in samples if s.label == label]
        n = len(members)
        n_test = max(1, round(n * test_fraction)) if n >= 2 and test_fraction > 0 else 0
        n_val = min(round(n * val_fraction), max(0, n - n_test - 1))
        order = rng.permutation(n)
        parts["test"].extend(members[i] for i in order[:n_test])
        parts["val"].extend(members[i] for i in order[n_test : n_test + n_val])
        parts["train"].extend(members[i] for i in order[n_test + n_val :])
    return {
        split: tuple(sorted(parts[split], key=_order))
        for split in SPLITS
        if parts[split] or split != "val"
    }


_HEADER_CACHE_FORMAT = 1


class _HeaderCache:
    """What earlier scans of one dataset folder learnt about each file, keyed by relative path.

    An entry is reused only while the file's size and mtime are unchanged (and, for a verifying
    scan, only if that entry came from a full decode), so rescanning a large dataset costs one
    ``stat`` per file instead of one header read.
    """

    def __init__(self, root: Path) -> None:
        digest = hashlib.sha256(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:24]
        self.file = paths.cache_dir("scan") / f"{digest}.json"
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        try:
            stored = json.loads(self.file.read_text())
            if stored.get("format") == _HEADER_CACHE_FORMAT and stored.get("root") == str(root):
                self.entries = stored["files"]
        except (OSError, ValueError, AttributeError, KeyError):
            pass

    def inspect(
        self, relative: str, path: Path, verify: bool
    ) -> tuple[os.stat_result, images.ImageHeader | str]:
        """The entry's stat and its header (or why it is bad), from the cache when still valid.

        Only regular files (or links to them) are opened; any exception reading one is that
        file's reason, never the scan's.
        """
        stat, problem = _entry_problem(path)
        if problem is not None:
            return stat, problem
        entry = self.entries.get(relative)
        if (
            entry is not None
            and entry[:2] == [stat.st_size, stat.st_mtime_ns]
            and (entry[2] or not verify)
        ):
            return stat, entry[3] if isinstance(entry[3], str) else images.ImageHeader(*entry[3])
        try:
            header: images.ImageHeader | str = images.read_header(path)
            if verify:
                images.decode_image(path)
        except images.BadImageError as exc:
            header = str(exc)
        except MemoryError:
            raise
        except Exception as exc:
            header = f"cannot read: {images.describe_error(exc)}"
        stored = header if isinstance(header, str) else [header.format, header.width, header.height]
        self.entries[relative] = [stat.st_size, stat.st_mtime_ns, verify, stored]
        self.changed = True
        return stat, header

    def save(self, root: Path, keep: Iterable[str]) -> None:
        """Write the entries of the files still present, if anything changed."""
        kept = {name: self.entries[name] for name in keep if name in self.entries}
        if not self.changed and len(kept) == len(self.entries):
            return
        record = {"format": _HEADER_CACHE_FORMAT, "root": str(root), "files": kept}
        atomic.write_text(self.file, json.dumps(record))


_FILE_TYPES = (
    (stat_module.S_ISFIFO, "a FIFO"),
    (stat_module.S_ISSOCK, "a socket"),
    (stat_module.S_ISCHR, "a character device"),
    (stat_module.S_ISBLK, "a block device"),
)


def _entry_problem(path: Path) -> tuple[os.stat_result, str | None]:
    """The entry's stat and why it cannot be an image file (None when it is a regular file).

    The stat is of the link itself when a symbolic link cannot be followed.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        try:
            stat = path.lstat()
        except OSError:  # gone since the folder was listed
            return os.stat_result((0,) * 10), f"cannot read: {exc.strerror}"
        if exc.errno == errno.ELOOP:
            return stat, "symbolic link loop"
        if exc.errno == errno.ENOENT and stat_module.S_ISLNK(stat.st_mode):
            return stat, f"broken symbolic link: {os.readlink(path)} does not exist"
        return stat, f"cannot read: {exc.strerror}"
    if stat_module.S_ISDIR(stat.st_mode):
        return stat, "a folder, not an image file (folders inside a class are not read)"
    if not stat_module.S_ISREG(stat.st_mode):
        kind = next((name for test, name in _FILE_TYPES if test(stat.st_mode)), "a special file")
        return stat, f"not a regular file ({kind})"
    return stat, None


def _fingerprint(layout: str, classes: Sequence[str], rows: Iterable[str]) -> str:
    digest = hashlib.sha256(f"{layout}\n{chr(31).join(classes)}\n".encode())
    for row in rows:
        digest.update(row.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def scan(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    verify: bool = False,
) -> DatasetScan:
    """Find a dataset's layout, splits, classes and images; list the files that cannot be used.

    Reads file headers only (fast) unless ``verify`` is set; truncated or corrupt pixel data is
    then found by :func:`resablate.data.decode_split`, which skips and lists those files too.
    What each file's header (or full decode) showed is remembered under
    ``paths.cache_dir("scan")`` while the file's size and mtime stay the same, so a rescan costs
    one ``stat`` per file.

    Args:
        root: The dataset folder or parquet file, optionally with column options for table
            layouts (``PATH::image=img,label=y``, :class:`~resablate.data_location.DataLocation`).
        val_fraction: Pooled layouts only (an image folder, one parquet file or ``Dataset``):
            fraction of each class put in the val split.
        test_fraction: Pooled layouts only: fraction of each class put in the test split.
        seed: Pooled layouts only: seed of the split's permutation.
        verify: Decode every image fully, so that truncated files are listed here as well.

    Raises:
        DataNotFoundError: ``root`` does not exist.
        DataError: ``root`` is neither a folder nor a parquet file, holds no image, has fewer
            than two classes, a class with no readable image in its train or test split, a
            test/val class that train lacks, only part of a split layout (e.g. ``train/`` without
            ``test/``), an empty split or a missing or ill-typed column of a table layout.
        ConfigError: A fraction outside [0, 1) or fractions summing to 1 or more; an unknown
            option of the location; pyarrow missing for a table layout (the install hint).
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), not {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1, not {val_fraction + test_fraction}"
        )
    location = DataLocation.parse(root)
    folder = location.path
    if not folder.exists():
        raise DataNotFoundError(f"dataset folder not found: {folder}")
    table = tables.scan_tables(location, verify=verify)
    bad: list[BadFile] = []
    if table is None:
        if not folder.is_dir():
            raise DataError(f"dataset path is not a folder or a .parquet file: {folder}")
        layout, found = _scan_files(folder, verify, bad)
        class_names = sorted({f.class_name for f in found if f.split in ("train", "all")})
    else:
        layout, class_names = table.layout, list(table.classes)
        base = folder if folder.is_dir() else folder.parent
        files = {scanned.row.file for scanned in table.rows}
        relative = {file: Path(file).relative_to(base).as_posix() for file in files}
        found = [_found_row(relative[scanned.row.file], scanned) for scanned in table.rows]
    if not class_names:
        raise DataError(f"no class folders with files in the train split of {folder}")
    label_of = {name: i for i, name in enumerate(class_names)}
    stray = sorted(
        {(f.split, f.class_name) for f in found if f.class_name and f.class_name not in label_of}
    )
    if stray:
        split, name = stray[0]
        raise DataError(f"class {name!r} appears in the {split} split of {folder} but not in train")

    by_split: dict[str, list[Sample]] = {}
    sizes: list[tuple[int, int]] = []
    for item in found:
        if isinstance(item.header, str):
            bad.append(BadFile(item.sample.path, item.header))
            continue
        sizes.append((item.header.width, item.header.height))
        sample = dataclasses.replace(
            item.sample,
            label=label_of[item.class_name],
            width=item.header.width,
            height=item.header.height,
        )
        by_split.setdefault(item.split, []).append(sample)

    if len(class_names) < 2:
        kind = "class folders" if table is None else "label values"
        raise DataError(
            f"only one class found in {folder}: {class_names[0]!r}; "
            f"a classification dataset needs at least two {kind}"
        )
    pooled = any(f.split == "all" for f in found)
    if pooled:
        splits = _stratified_split(
            by_split.get("all", []), len(class_names), val_fraction, test_fraction, seed
        )
    else:
        splits = {
            s: tuple(sorted(by_split.get(s, ()), key=_order))
            for s in SPLITS
            if s in by_split or s != "val"
        }
    _check_classes_present(folder, pooled, class_names, splits, bad)

    return DatasetScan(
        root=folder,
        layout=layout,
        classes=tuple(class_names),
        splits=MappingProxyType(splits),
        bad_files=tuple(sorted(bad, key=lambda b: b.path)),
        image_sizes=_summarise(sizes),
        fingerprint=_fingerprint(layout, class_names, sorted(f.fingerprint_row for f in found)),
        verified=verify,
    )


@dataclass(frozen=True)
class _Found:
    """A candidate image with what the scan learnt (``sample``'s label and size are set once the
    classes are known)."""

    sample: Sample
    split: str
    class_name: str
    header: images.ImageHeader | str
    fingerprint_row: str


def _scan_files(folder: Path, verify: bool, bad: list[BadFile]) -> tuple[str, list[_Found]]:
    """The layout of an image folder and its candidate files, their headers read (or cached)."""
    layout, candidates = _detect(folder, bad)
    if not candidates:
        raise DataError(f"no images found in {folder} (looked for {_expected(layout)})")
    relatives = [c.path.relative_to(folder).as_posix() for c in candidates]
    headers = _HeaderCache(folder)
    inspected = images.parallel_map(
        lambda i: headers.inspect(relatives[i], candidates[i].path, verify), range(len(candidates))
    )
    headers.save(folder, relatives)
    return layout, [
        _Found(
            sample=Sample(str(c.path), -1, stat.st_size, stat.st_mtime_ns, 0, 0),
            split=c.split,
            class_name=c.class_name,
            header=header,
            fingerprint_row=(
                f"{relative}\x1f{c.split}\x1f{c.class_name}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}"
            ),
        )
        for c, relative, (stat, header) in zip(candidates, relatives, inspected, strict=True)
    ]


def _found_row(file: str, scanned: tables.ScannedRow) -> _Found:
    """A table row as a candidate (``file``: its file relative to the dataset's folder); its
    fingerprint covers the row's image digest and class."""
    row = scanned.row
    relative = f"{file}[{row.index}]"
    return _Found(
        sample=Sample(row.name, -1, scanned.nbytes, scanned.mtime_ns, 0, 0, row),
        split=scanned.split,
        class_name=scanned.class_name or "",
        header=scanned.header,
        fingerprint_row=f"{relative}\x1f{scanned.split}\x1f{scanned.class_name}\x1f{row.sha256}",
    )


def _order(sample: Sample) -> tuple[str, int]:
    """Samples sort by path; rows of a table by file, then index."""
    return (sample.path, 0) if sample.row is None else (sample.row.file, sample.row.index)


def _expected(layout: str) -> str:
    if layout == "imagefolder":
        return "one folder per class, or train/ + test/, or training/ + evaluation/"
    return "class folders inside the split folders"


def _check_classes_present(
    root: Path,
    pooled: bool,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[Sample]],
    bad: Sequence[BadFile],
) -> None:
    for split in ("train", "test"):
        present = {s.label for s in splits.get(split, ())}
        for label, name in enumerate(classes):
            if label not in present:
                where = "" if pooled else f" in the {split} split"
                skipped = f" ({len(bad)} bad files skipped)" if bad else ""
                raise DataError(
                    f"class {name!r} has no readable image{where} of {root}{skipped}; "
                    f"run `resablate data check {root}` to list them"
                )


def _summarise(sizes: Sequence[tuple[int, int]]) -> SizeSummary:
    (width, height), n = Counter(sizes).most_common(1)[0]
    return SizeSummary(
        count=len(sizes),
        min_width=min(w for w, _ in sizes),
        max_width=max(w for w, _ in sizes),
        min_height=min(h for _, h in sizes),
        max_height=max(h for _, h in sizes),
        most_common=(width, height, n),
    )
