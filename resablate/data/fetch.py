"""The public datasets of the reference studies, fetched for users who are online.

:func:`fetch` downloads a set's archive from Kaggle's API (with the user's Kaggle API token when
one is set up: ``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``), or takes an
archive the user downloaded; then :func:`install_archive` verifies it (zip CRCs, safe member
names, the published folders and image counts) and unpacks it into the layout
:func:`resablate.data.scan` reads. Everything happens in a hidden folder beside the target,
renamed into place last, so an interrupted fetch leaves no half dataset. Nothing here runs
unless the user asks for it: the rest of resablate never reaches the network.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from resablate.data import images
from resablate.errors import ConfigError, DataError

MARKER = ".resablate-fetch.json"
STAGING = ".resablate-fetch-"
_STALE_SECONDS = 24 * 3600.0
_CHUNK = 1 << 20
_KAGGLE_API = "https://www.kaggle.com/api/v1/datasets/download/"


@dataclass(frozen=True)
class PublicDataset:
    """A public dataset as published.

    Attributes:
        name: What users type (``resablate data fetch NAME``).
        title: Its published name.
        kaggle: The Kaggle dataset (``owner/slug``) the archive comes from.
        counts: Split folder -> class folder -> number of images, as published; the archive
            must match it exactly.
    """

    name: str
    title: str
    kaggle: str
    counts: Mapping[str, Mapping[str, int]]

    @property
    def url(self) -> str:
        """The archive's download address (Kaggle's API)."""
        return _KAGGLE_API + self.kaggle

    @property
    def page(self) -> str:
        """The dataset's Kaggle page, for a download by hand."""
        return f"https://www.kaggle.com/datasets/{self.kaggle}"


def _counts(**splits: dict[str, int]) -> Mapping[str, Mapping[str, int]]:
    return MappingProxyType({s: MappingProxyType(c) for s, c in splits.items()})


PUBLIC: Mapping[str, PublicDataset] = MappingProxyType(
    {
        "cifake": PublicDataset(
            "cifake",
            "CIFAKE: Real and AI-Generated Synthetic Images",
            "birdy654/cifake-real-and-ai-generated-synthetic-images",
            _counts(train={"FAKE": 50_000, "REAL": 50_000}, test={"FAKE": 10_000, "REAL": 10_000}),
        ),
        "food5k": PublicDataset(
            "food5k",
            "Food-5K (the Kaggle copy: one folder per class)",
            "trolukovich/food5k-image-dataset",
            _counts(
                training={"food": 1_500, "non_food": 1_500},
                validation={"food": 500, "non_food": 500},
                evaluation={"food": 500, "non_food": 500},
            ),
        ),
    }
)
"""The datasets :func:`fetch` knows, by name."""

Progress = Callable[[int, int | None], None]
"""Called as bytes arrive: (bytes so far, total bytes or None when the server does not say)."""


def public_dataset(name: str) -> PublicDataset:
    """The public dataset called ``name``.

    Raises:
        ConfigError: An unknown name (the message lists the known ones).
    """
    if name not in PUBLIC:
        raise ConfigError(f"unknown public dataset {name!r}; choose {', '.join(PUBLIC)}")
    return PUBLIC[name]


def fetch(
    name: str,
    to: str | os.PathLike[str],
    *,
    archive: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download (or take) a public dataset's archive, verify it and unpack it into ``to``.

    Args:
        name: A key of :data:`PUBLIC` (``"cifake"``, ``"food5k"``).
        to: The dataset folder to create; it must not exist, be empty, or hold this dataset
            from an earlier fetch (then nothing is done).
        archive: An archive downloaded by hand (zip or tar); nothing is downloaded then.
        progress: Told how many bytes have arrived.
        timeout: Seconds to wait for the server before giving up.

    Returns:
        The dataset folder, in the layout :func:`resablate.data.scan` reads.

    Raises:
        ConfigError: An unknown name.
        DataError: No connection (offline), Kaggle refusing the download, an interrupted
            download, or an archive that is corrupt or does not match the published dataset.
    """
    dataset = public_dataset(name)
    target = _check_target(Path(to).expanduser().resolve(), dataset)
    if _fetched(target) == dataset.name:
        return target
    if archive is not None:
        return install_archive(dataset, archive, target)
    with _staging(target) as staging:
        downloaded = staging / "archive"
        _download(dataset, downloaded, progress, timeout)
        return install_archive(dataset, downloaded, target)


def install_archive(
    dataset: PublicDataset, archive: str | os.PathLike[str], to: str | os.PathLike[str]
) -> Path:
    """Verify ``archive`` against ``dataset`` and unpack it into ``to``, atomically.

    The archive may hold the split folders at its top or inside one folder (as Kaggle's do).

    Raises:
        DataError: The archive is missing, not a zip or tar file, corrupt (a CRC mismatch, a
            truncated stream), holds a member outside itself, or its folders or image counts
            differ from the published ones; ``to`` is not empty and holds something else.
    """
    source = Path(archive).expanduser()
    if not source.is_file():
        raise DataError(f"archive {source} does not exist", field="archive")
    target = _check_target(Path(to).expanduser().resolve(), dataset)
    with _staging(target) as staging:
        unpacked = staging / "unpacked"
        _unpack(source, unpacked)
        root = _dataset_root(unpacked, dataset, source)
        _verify_counts(root, dataset, source)
        marker = {"dataset": dataset.name, "kaggle": dataset.kaggle, "archive": source.name}
        (root / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked); replaced by the verified tree
        os.replace(root, target)
    return target


def _fetched(folder: Path) -> str | None:
    """The public dataset an earlier fetch put in ``folder``, if any."""
    try:
        return str(json.loads((folder / MARKER).read_text())["dataset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_target(target: Path, dataset: PublicDataset) -> Path:
    if target.exists() and not target.is_dir():
        raise DataError(f"cannot unpack {dataset.name} into {target}: it is a file", field="to")
    if target.is_dir() and any(target.iterdir()) and _fetched(target) != dataset.name:
        raise DataError(
            f"refusing to unpack {dataset.name} into {target}: the folder is not empty; choose a "
            "new or empty folder",
            field="to",
        )
    return target


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A hidden folder beside ``target`` (same file system, so the final rename is atomic),
    removed afterwards; ones a killed fetch left a day ago or more are swept first."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - _STALE_SECONDS
    for stale in parent.glob(STAGING + "*"):
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale)
    folder = Path(tempfile.mkdtemp(prefix=STAGING, dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kaggle_token() -> str | None:
    """HTTP basic credentials from ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``kaggle.json``."""
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if not (user and key):
        config = Path(os.environ.get("KAGGLE_CONFIG_DIR", "~/.kaggle")).expanduser()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            stored = json.loads((config / "kaggle.json").read_text())
            user, key = stored["username"], stored["key"]
    if not (user and key):
        return None
    return base64.b64encode(f"{user}:{key}".encode()).decode()


def _download(
    dataset: PublicDataset, file: Path, progress: Progress | None, timeout: float
) -> None:
    request = urllib.request.Request(dataset.url, headers={"User-Agent": "resablate"})
    token = _kaggle_token()
    if token is not None:
        request.add_header("Authorization", f"Basic {token}")
    by_hand = f"download {dataset.page} yourself and pass the file as archive"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(file, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(received, total)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise DataError(
                f"Kaggle refused the download of {dataset.name} (HTTP {exc.code}): it needs a "
                "Kaggle API token (~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY); "
                f"or {by_hand}",
                field="archive",
            ) from None
        raise DataError(
            f"the download of {dataset.name} from {dataset.url} failed (HTTP {exc.code}); "
            f"{by_hand}",
            field="archive",
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {dataset.name}: no connection to {dataset.url} "
            f"({images.describe_error(reason)}); offline, {by_hand}",
            field="archive",
        ) from None
    if total is not None and received != total:
        raise DataError(
            f"the download of {dataset.name} stopped after {received:,} of {total:,} bytes; "
            "run it again",
            field="archive",
        )


def _unpack(archive: Path, into: Path) -> None:
    """Extract a zip (CRCs checked) or tar archive; members outside ``into`` are refused."""
    into.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as packed:
                broken = packed.testzip()
                if broken is not None:
                    raise DataError(f"archive {archive} is corrupt: {broken} fails its CRC check")
                for member in packed.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataError(f"archive {archive} holds {member!r}, outside itself")
                packed.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as packed:
                packed.extractall(into, filter="data")
        else:
            raise DataError(f"archive {archive} is neither a zip nor a tar file", field="archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"archive {archive} is corrupt: {images.describe_error(exc)}", field="archive"
        ) from None


def _dataset_root(unpacked: Path, dataset: PublicDataset, archive: Path) -> Path:
    """The folder of the archive holding the published split folders (its top or one below)."""
    wanted = {split.lower() for split in dataset.counts}
    level = [unpacked]
    for _ in range(3):
        for folder in level:
            if wanted <= {p.name.lower() for p in folder.iterdir() if p.is_dir()}:
                return folder
        level = [p for folder in level for p in folder.iterdir() if p.is_dir()]
    expected = ", ".join(f"{s}/" for s in dataset.counts)
    raise DataError(
        f"archive {archive} is not {dataset.title}: no folder holds {expected}", field="archive"
    )


def _verify_counts(root: Path, dataset: PublicDataset, archive: Path) -> None:
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for split, classes in dataset.counts.items():
        for class_name, expected in classes.items():
            folder = folders[split.lower()] / class_name
            found = (
                sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
                if folder.is_dir()
                else 0
            )
            if found != expected:
                raise DataError(
                    f"archive {archive} does not match {dataset.title}: {split}/{class_name} holds "
                    f"{found:,} images, the published set {expected:,}",
                    field="archive",
                )
