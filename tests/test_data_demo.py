"""Demo data: layout, size, determinism, idempotence, no trivial colour cue, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from resablate import paths
from resablate.data import demo, demo_data, demo_proxy_data, scan
from resablate.errors import DataError
from resablate_cli.app import app


@pytest.fixture(scope="module")
def full_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data(tmp_path_factory.mktemp("demo") / "cifake-demo")


@pytest.fixture
def small_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "DEMO_COUNTS", {"train": 3, "test": 2})
    monkeypatch.setattr(demo, "PROXY_COUNTS", {"train": 2, "test": 1})


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.mark.slow
def test_demo_tree_layout_and_size(full_demo: Path) -> None:
    result = scan(full_demo, verify=True)
    assert result.layout == "cifake"
    assert result.classes == ("FAKE", "REAL")
    assert {k: dict(v) for k, v in result.class_counts.items()} == {
        "train": {"FAKE": 400, "REAL": 400},
        "test": {"FAKE": 160, "REAL": 160},
    }
    assert result.image_sizes.describe() == "all 32x32"
    assert result.bad_files == ()
    with Image.open(full_demo / "train" / "REAL" / "00000.png") as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    marker = json.loads((full_demo / demo.MARKER).read_text())
    assert marker == {
        "kind": "demo",
        "generator_version": demo.GENERATOR_VERSION,
        "seed": 0,
        "classes": ["FAKE", "REAL"],
        "images_per_class": {"train": 400, "test": 160},
    }


@pytest.mark.slow
def test_second_call_touches_nothing(full_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p: p.stat().st_mtime_ns for p in full_demo.rglob("*")}

    def no_writes(*args: object) -> None:
        raise AssertionError("demo_data wrote a file on a second call")

    monkeypatch.setattr(demo, "_write_png", no_writes)
    assert demo_data(full_demo) == full_demo
    assert {p: p.stat().st_mtime_ns for p in full_demo.rglob("*")} == before


@pytest.mark.slow
def test_colour_and_brightness_statistics_do_not_separate_the_classes(full_demo: Path) -> None:
    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for label, name in enumerate(("FAKE", "REAL")):
            for path in sorted((full_demo / split / name).iterdir()):
                pixels = np.asarray(Image.open(path), dtype=np.float64)
                rows.append(np.concatenate([pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))]))
                labels.append(label)
        return np.array(rows), np.array(labels)

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    linear_model = pytest.importorskip(
        "sklearn.linear_model", reason="scikit-learn is not installed"
    )
    classifier = linear_model.LogisticRegression(max_iter=2000).fit(x_train, y_train)
    assert classifier.score(x_test, y_test) < 0.6  # per-channel mean/std: near chance


def test_sources_are_disjoint() -> None:
    assert not set(demo.TRAIN_PHOTOS) & set(demo.TEST_PHOTOS)
    assert not set(demo.PROXY_CLASSES) & (set(demo.TRAIN_PHOTOS) | set(demo.TEST_PHOTOS))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path, small_counts: None) -> None:
    first = _files(demo_data(tmp_path / "a", seed=3))
    assert len(first) == 10
    assert _files(demo_data(tmp_path / "b", seed=3)) == first
    other = _files(demo_data(tmp_path / "c", seed=4))
    assert other.keys() == first.keys() and other != first


def test_another_seed_replaces_an_earlier_tree(tmp_path: Path, small_counts: None) -> None:
    root = demo_data(tmp_path / "d", seed=0)
    seed0 = _files(root)
    demo_data(root, seed=1)
    assert json.loads((root / demo.MARKER).read_text())["seed"] == 1
    assert _files(root) == _files(demo_data(tmp_path / "e", seed=1)) != seed0
    assert [p.name for p in root.iterdir() if p.name.startswith(demo.STAGING)] == []


def test_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(
        DataError, match=r"^refusing to write demo data into .*: the folder is not empty"
    ):
        demo_data(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_an_interrupted_write_is_redone(tmp_path: Path, small_counts: None) -> None:
    root = tmp_path / "cut"
    (root / "train" / "REAL").mkdir(parents=True)
    (root / "train" / "REAL" / "00000.png").write_bytes(b"half")
    (root / demo.LOCK).touch()  # what a killed first call leaves: its lock, part of a split
    demo_data(root)
    assert _files(root) == _files(demo_data(tmp_path / "whole"))


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=r"^cannot write demo data into .*f: it is a file"):
        demo_data(tmp_path / "f")


def test_default_root_is_in_the_cache(small_counts: None) -> None:
    assert demo_data() == paths.cache_dir("demo")
    assert demo_data(seed=2) == paths.cache_dir("demo-seed2")


def test_proxy_task(tmp_path: Path, small_counts: None) -> None:
    root = demo_proxy_data(tmp_path / "proxy")
    result = scan(root, verify=True)
    assert result.layout == "cifake"
    assert result.classes == demo.PROXY_CLASSES
    assert {k: set(v.values()) for k, v in result.class_counts.items()} == {
        "train": {2},
        "test": {1},
    }
    assert result.image_sizes.describe() == "all 32x32"


def test_cli_demo_data(tmp_path: Path, small_counts: None) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["demo-data", str(tmp_path / "out"), "--seed", "1"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "layout cifake   classes 0=FAKE, 1=REAL" in result.stdout
    assert "│ train │ 3    │ 3    │ 6     │" in result.stdout
    proxy = runner.invoke(
        app, ["demo-data", str(tmp_path / "proxy"), "--proxy"], env={"COLUMNS": "200"}
    )
    assert proxy.exit_code == 0, proxy.output
    assert "classes 0=brick, 1=cell, 2=grass, 3=gravel, 4=moon, 5=page" in proxy.stdout
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    refused = runner.invoke(app, ["demo-data", str(tmp_path / "busy")])
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: refusing to write demo data into ")
