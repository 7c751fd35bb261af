"""``resablate data fetch``: archives the tests build with the published folder structure are
verified and unpacked atomically; downloads from a local server; the real one marked network."""

from __future__ import annotations

import dataclasses
import http.server
import io
import socket
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from resablate.choices import PUBLIC_DATASETS
from resablate.data import fetch, scan
from resablate.errors import DataError
from resablate_cli.app import app

TINY = {
    "cifake": {"train": {"FAKE": 2, "REAL": 2}, "test": {"FAKE": 1, "REAL": 1}},
    "food5k": {
        "training": {"food": 2, "non_food": 2},
        "validation": {"food": 1, "non_food": 1},
        "evaluation": {"food": 1, "non_food": 1},
    },
}


@pytest.fixture(autouse=True)
def tiny_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """The published sets with a few images per folder (same names and folders)."""
    tiny = {
        name: dataclasses.replace(dataset, counts=TINY[name])
        for name, dataset in fetch.PUBLIC.items()
    }
    monkeypatch.setattr(fetch, "PUBLIC", tiny)


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 9, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _members(name: str, top: str = "") -> dict[str, bytes]:
    names = [
        f"{top}{split}/{cls}/{i:03d}.png"
        for split, classes in TINY[name].items()
        for cls, n in classes.items()
        for i in range(n)
    ]
    return {member: _png(10 * k) for k, member in enumerate(names)}  # each image different


def _zip(file: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(file, "w") as packed:
        for name, data in members.items():
            packed.writestr(name, data)
    return file


def _tar(file: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(file, "w:gz") as packed:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            packed.addfile(info, io.BytesIO(data))
    return file


def _fetch(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["data", "fetch", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_public_names_are_the_closed_set() -> None:
    assert tuple(fetch.PUBLIC) == PUBLIC_DATASETS


def test_a_cifake_zip_unpacks_into_the_cifake_layout(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "cifake.zip", _members("cifake"))
    to = tmp_path / "data" / "cifake"
    code, out, err = _fetch("cifake", "--archive", str(archive), "--to", str(to))
    assert (code, err) == (0, "")
    assert "layout cifake" in out and "classes 0=FAKE, 1=REAL" in out
    result = scan(to)
    assert result.class_counts == {"train": {"FAKE": 2, "REAL": 2}, "test": {"FAKE": 1, "REAL": 1}}
    assert sorted(p.name for p in to.parent.iterdir()) == ["cifake"]  # no staging left
    # Again: the dataset is there, nothing is unpacked or downloaded (no archive is read).
    archive.unlink()
    again = _fetch("cifake", "--archive", str(archive), "--to", str(to))
    assert (again[0], again[2]) == (0, "")
    assert fetch.fetch("cifake", to) == to


def test_a_food5k_tar_nested_in_a_folder_unpacks_into_the_food5k_layout(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "food.tar.gz", _members("food5k", top="Food-5K/"))
    to = fetch.install_archive(fetch.public_dataset("food5k"), archive, tmp_path / "food")
    result = scan(to)
    assert (result.layout, result.classes, list(result.splits)) == (
        "food5k",
        ("food", "non_food"),
        ["train", "val", "test"],
    )
    assert result.class_counts["test"] == {"food": 1, "non_food": 1}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            "count",
            "does not match CIFAKE: Real and AI-Generated Synthetic Images: "
            "test/REAL holds 0 images, the published set 1 (--archive)",
        ),
        ("crc", "is corrupt: test/FAKE/000.png fails its CRC check"),
        ("slip", "holds '../evil.png', outside itself"),
        ("text", "is neither a zip nor a tar file (--archive)"),
        (
            "layout",
            "is not CIFAKE: Real and AI-Generated Synthetic Images: no folder holds "
            "train/, test/ (--archive)",
        ),
    ],
)
def test_a_bad_archive_is_one_line_and_leaves_nothing(
    tmp_path: Path, damage: str, message: str
) -> None:
    members = _members("cifake")
    archive = tmp_path / "in" / "cifake.zip"
    archive.parent.mkdir()
    if damage == "count":
        del members["test/REAL/000.png"]
    if damage == "slip":
        members["../evil.png"] = _png(1)
    if damage == "layout":
        members = {name.replace("test/", "testing/"): data for name, data in members.items()}
    _zip(archive, members)
    if damage == "crc":
        data = bytearray(archive.read_bytes())
        at = data.index(members["test/FAKE/000.png"])  # stored uncompressed
        data[at + 40] ^= 0xFF
        archive.write_bytes(bytes(data))
    if damage == "text":
        archive.write_text("<html>sign in</html>")
    to = tmp_path / "out" / "cifake"
    code, _, err = _fetch("cifake", "--archive", str(archive), "--to", str(to))
    assert (code, err) == (2, f"error: archive {archive} {message}\n")
    assert list((tmp_path / "out").iterdir()) == []  # neither the dataset nor a staging folder


def test_a_folder_holding_something_else_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "cifake.zip", _members("cifake"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = _fetch("cifake", "--archive", str(archive), "--to", str(tmp_path / "busy"))
    assert (code, err) == (
        2,
        f"error: refusing to unpack cifake into {tmp_path / 'busy'}: the folder is not empty; "
        "choose a new or empty folder (--to)\n",
    )
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(fetch, "_KAGGLE_API", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    code, _, err = _fetch("cifake", "--to", str(tmp_path / "cifake"))
    kaggle = "birdy654/cifake-real-and-ai-generated-synthetic-images"
    assert (code, err) == (
        2,
        f"error: cannot download cifake: no connection to http://127.0.0.1:{port}/{kaggle} "
        f"([Errno 111] Connection refused); offline, download "
        f"https://www.kaggle.com/datasets/{kaggle} yourself and pass the file as archive "
        "(--archive)\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A local HTTP server standing in for Kaggle's API; ``state`` says what it answers."""
    state: dict[str, Any] = {"status": 200, "body": b"", "auth": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["auth"].append(self.headers.get("Authorization"))
            body = state["body"] if state["status"] == 200 else b"{}"
            self.send_response(int(state["status"]))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(fetch, "_KAGGLE_API", f"http://127.0.0.1:{httpd.server_port}/")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-token"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_download_is_verified_and_unpacked(
    tmp_path: Path, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server["body"] = _zip(tmp_path / "served.zip", _members("cifake")).read_bytes()
    seen: list[tuple[int, int | None]] = []
    monkeypatch.setenv("KAGGLE_USERNAME", "ada")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    to = fetch.fetch("cifake", tmp_path / "cifake", progress=lambda n, t: seen.append((n, t)))
    size = len(server["body"])
    assert seen[-1] == (size, size)
    assert server["auth"] == ["Basic YWRhOnNlY3JldA=="]  # ada:secret
    assert scan(to).class_counts["train"] == {"FAKE": 2, "REAL": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifake", "served.zip"]


def test_kaggle_refusing_is_one_line(tmp_path: Path, server: dict[str, Any]) -> None:
    server["status"] = 401
    with pytest.raises(DataError) as caught:
        fetch.fetch("food5k", tmp_path / "food")
    assert str(caught.value) == (
        "Kaggle refused the download of food5k (HTTP 401): it needs a Kaggle API token "
        "(~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY); or download "
        "https://www.kaggle.com/datasets/trolukovich/food5k-image-dataset yourself and pass "
        "the file as archive"
    )
    assert server["auth"] == [None]
    assert list(tmp_path.iterdir()) == []


def _online(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.network
@pytest.mark.parametrize("name", PUBLIC_DATASETS)
def test_the_published_archives_are_where_fetch_looks(name: str) -> None:
    if not _online("www.kaggle.com"):
        pytest.skip("offline: www.kaggle.com cannot be reached")
    dataset = fetch.public_dataset(name)
    request = urllib.request.Request(
        dataset.url, headers={"User-Agent": "resablate", "Range": "bytes=0-3"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            start = response.read(4)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            pytest.skip(f"Kaggle asks for an API token here (HTTP {exc.code})")
        raise
    assert start == b"PK\x03\x04"  # a zip archive
