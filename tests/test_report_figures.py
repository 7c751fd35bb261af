"""Report figures (valid PNGs of the expected size) and the written report files."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_report import make_store

from resablate.report import figures as F
from resablate.report.build import build_report
from resablate.report.output import write_report
from resablate.report.stats import t_interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _px(size: tuple[float, float]) -> tuple[int, int]:
    return round(size[0] * F.DPI), round(size[1] * F.DPI)


_RNG = np.random.default_rng(0)
_HISTORY = [
    {"step": s, "split": split, "loss": 1 / (s + 1), "f1": s / 10}
    for s in range(1, 5)
    for split in ("train", "val")
]
FIGURES: dict[str, tuple[Callable[[Path], F.FigureFile], tuple[float, float]]] = {
    "curves": (lambda p: F.curves_figure(_HISTORY, p, title="resnet18"), F.CURVES_SIZE),
    "lr": (lambda p: F.lr_schedule_figure([0.1, 0.2, 0.1, 0.0], p), F.LR_SIZE),
    "confusion": (
        lambda p: F.confusion_figure([[5, 1], [2, 4]], ["FAKE", "REAL"], p),
        F.CONFUSION_SIZE,
    ),
    "gallery": (
        lambda p: F.gallery_figure(
            [F.GallerySample(_RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8), "REAL", "FAKE", 0.9)]
            * 3,
            p,
        ),
        F.GALLERY_SIZE,
    ),
    "gallery-empty": (lambda p: F.gallery_figure([], p), F.GALLERY_SIZE),
    "features": (
        lambda p: F.feature_maps_figure(
            {
                "residual on": {"conv1": _RNG.random((4, 8, 8))},
                "residual off": {"conv1": _RNG.random((4, 8, 8)), "conv2_x": np.zeros((2, 4, 4))},
            },
            p,
        ),
        F.FEATURES_SIZE,
    ),
    "depth": (
        lambda p: F.depth_figure(
            {"residual on": [(18, t_interval([0.9, 0.92])), (50, t_interval([0.95]))]}, p
        ),
        F.DEPTH_SIZE,
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_is_png_of_expected_size(name: str, tmp_path: Path) -> None:
    draw, size = FIGURES[name]
    figure = draw(tmp_path / f"{name}.png")
    assert png_size(figure.path) == _px(size) == (figure.width, figure.height)
    assert list(tmp_path.iterdir()) == [figure.path]  # written atomically: no temp file left


def test_figure_input_errors_are_one_line(tmp_path: Path) -> None:
    from resablate.errors import ConfigError

    with pytest.raises(ConfigError, match="not 2×2"):
        F.confusion_figure([[1, 2, 3]], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ConfigError, match=r"\[C, H, W\]"):
        F.feature_maps_figure({"on": {"conv1": np.zeros((4, 4))}}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="no evaluation history"):
        F.curves_figure([], tmp_path / "x.png")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One store, written once as HTML and Markdown (figures drawn once per format)."""
    root = tmp_path_factory.mktemp("report")
    store = make_store(root / "grid", seeds=(0,))
    report = build_report(store, compare="cifake")
    html = write_report(report, "html", root / "html")
    stale = root / "md" / "figures" / "curves-000000000000.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier report's figure")
    md = write_report(report, "md", root / "md")
    assert not stale.exists()
    return {"html": html.path, "md": md.path, "grid": store}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sources: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.sources += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_and_holds_the_tables(written: dict[str, Path]) -> None:
    page = written["html"]
    assert page.name == "report.html"
    assert sorted(p.name for p in page.parent.iterdir()) == ["report.html"]
    html = page.read_text()
    # Base64 figure data is opaque; everything else must not reference the network.
    outside_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", html)
    assert "http" not in outside_data.lower()
    parser = _Collector()
    parser.feed(html)
    parser.close()
    assert parser.sources and all(s.startswith("data:image/png;base64,") for s in parser.sources)
    assert parser.tags.count("img") == len(parser.sources)
    assert parser.tags.count("table") == 3  # ablation, models, cells (the grid froze nothing)
    text = " ".join(parser.text)
    for expected in (
        "Ablation: f1 by depth",
        "ResNet-18",
        "p = 0.125 vs residual on · weights demo",  # one seed: b = 4, c = 0
        "0.928 (table7)",
        "Cells without a result",
        "Grid spec",
        "Environment",
        "Misclassified test images",
        "Learning-rate schedule",
        "f1 vs depth",
    ):
        assert expected in text, expected
    for src in parser.sources:
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == PNG_SIGNATURE


def test_markdown_links_relative_figures(written: dict[str, Path]) -> None:
    page = written["md"]
    text = page.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all(link.startswith("figures/") for link in links)
    for link in links:
        assert png_size(page.parent / link)[0] > 0
    assert "| model | residual on · weights demo | cifake published |" in text
    assert "http" not in text


def test_csv_and_json_outputs(written: dict[str, Path], tmp_path: Path) -> None:
    report = build_report(written["grid"])
    csvs = write_report(report, "csv", tmp_path / "csv")
    assert sorted(p.name for p in csvs.files) == ["ablation.csv", "cells.csv", "models.csv"]
    header = (tmp_path / "csv" / "ablation.csv").read_text().splitlines()[0]
    assert header.startswith("table,metric,row,column,mean,half_width,n,values,p_value")
    out = write_report(report, "json", tmp_path / "r.json")
    data = json.loads(out.path.read_text())
    assert data["ablation"]["rows"] == ["ResNet-18", "ResNet-50"]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_report_html_in_headless_chromium(written: dict[str, Path], tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            "--enable-logging=stderr",
            "--v=0",
            written["html"].as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    assert png_size(shot) == (1280, 2000)
