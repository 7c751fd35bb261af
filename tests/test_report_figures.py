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
    "seed-curves": (
        lambda p: F.seed_curves_figure(
            {
                "train loss": [
                    F.CurveBand(
                        "ResNet-20", "residual on", (4, 8), (0.6, 0.4), (0.5, 0.3), (0.7, 0.5), 3
                    ),
                    F.CurveBand(
                        "ResNet-20", "residual off", (4, 8), (0.7, 0.6), (0.6, 0.5), (0.8, 0.7), 3
                    ),
                ],
                "test accuracy": [],
            },
            p,
        ),
        F.SEED_CURVES_SIZE,
    ),
    "bars": (
        lambda p: F.bars_figure(
            {"final train loss": [F.Bar("ResNet-20", "residual on", t_interval([0.3, 0.4]))]}, p
        ),
        F.BARS_SIZE,
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
    with pytest.raises(ConfigError, match="no seed-averaged curves to plot"):
        F.seed_curves_figure({"train loss": []}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="no final values to plot"):
        F.bars_figure({}, tmp_path / "x.png")


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


# --- seed-averaged curves and bars ---------------------------------------------------------------

CURVE_STEPS = tuple(range(6, 61, 6))  # ten evaluations, as the demo's recipe gives
# Final train loss per (depth, residual), reached from 9/8 higher in steps of 1/8; the seeds add
# -0.25, 0 and +0.25 (dyadic values: the mean over the three seeds is exact).
BASE_LOSS = {(20, "on"): 0.5, (20, "off"): 0.625, (56, "on"): 0.5, (56, "off"): 1.0}
SEED_SHIFT = {0: -0.25, 1: 0.0, 2: 0.25}


def _mean_loss(key: tuple[int, str], step: int) -> float:
    return BASE_LOSS[key] + (CURVE_STEPS[-1] - step) / 48


def _train_loss(depth: int, residual: str, seed: int, step: int) -> float:
    return _mean_loss((depth, residual), step) + SEED_SHIFT[seed]


def _curve_store(out: Path) -> Path:
    from resablate.grid.cell import Cell
    from resablate.grid.store import ResultStore

    cells = [
        Cell.from_dict(
            dict(arch=f"cifar_resnet{d}", residual=r, weights="none", recipe="demo", seed=s)
        )
        for d in (20, 56)
        for r in ("on", "off")
        for s in SEED_SHIFT
    ]
    with ResultStore(out) as store:
        store.set_spec({"family": "cifar_resnet", "depths": [20, 56], "seeds": list(SEED_SHIFT)})
        store.sync_cells(cells, run_dirs={c.cell_id: str(out / c.cell_id) for c in cells})
        for cell in cells:
            depth, residual, seed = int(cell.arch[12:]), cell.residual.text, cell.seed
            accuracy = 0.75 - SEED_SHIFT[seed] / 2 - (0.25 if residual == "off" else 0.0)
            history = []
            for step in CURVE_STEPS:
                loss = _train_loss(depth, residual, seed, step)
                history += [
                    {"step": step, "epoch": step / 25, "split": "train", "loss": loss,
                     "accuracy": 1.0 - loss / 2},
                    {"step": step, "epoch": step / 25, "split": "test", "loss": loss,
                     "accuracy": accuracy, "f1": accuracy},
                ]  # fmt: skip
            store.record_result(
                cell.cell_id,
                "done",
                metrics={"f1": accuracy, "accuracy": accuracy, "loss": 0.5},
                values={"steps": CURVE_STEPS[-1]},
                evaluations=history,
            )
    return out


@pytest.fixture(scope="module")
def curve_report(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_report(_curve_store(tmp_path_factory.mktemp("curves") / "grid"))


def _groups_and_histories(report):  # type: ignore[no-untyped-def]
    from resablate.report.figure_data import history_records
    from resablate.report.tables import group_cells

    results = report.results
    groups = group_cells(results.final)
    histories = {r.cell_id: history_records(results.histories[r.cell_id]) for r in report.cells}
    return groups, histories


def test_seed_curves_are_the_means_and_ranges_over_seeds(curve_report) -> None:  # type: ignore[no-untyped-def]
    from resablate.report.figure_data import seed_curves

    groups, histories = _groups_and_histories(curve_report)
    panels = seed_curves(groups, histories)
    assert list(panels) == ["train loss", "train accuracy", "test accuracy"]
    lines = panels["train loss"]
    assert [(line.category, line.variant, line.seeds) for line in lines] == [
        ("ResNet-20", "residual on", 3),
        ("ResNet-20", "residual off", 3),
        ("ResNet-56", "residual on", 3),
        ("ResNet-56", "residual off", 3),
    ]
    for line, key in zip(lines, [(20, "on"), (20, "off"), (56, "on"), (56, "off")], strict=True):
        assert line.steps == CURVE_STEPS
        assert len(line.steps) >= 10
        assert line.mean == tuple(_mean_loss(key, s) for s in CURVE_STEPS)
        assert line.low == tuple(_mean_loss(key, s) - 0.25 for s in CURVE_STEPS)
        assert line.high == tuple(_mean_loss(key, s) + 0.25 for s in CURVE_STEPS)
    assert panels["test accuracy"][1].mean == (0.5,) * 10
    assert (panels["test accuracy"][1].low, panels["test accuracy"][1].high) == (
        (0.375,) * 10,
        (0.625,) * 10,
    )


def test_final_bars_hold_each_configurations_seeds(curve_report) -> None:  # type: ignore[no-untyped-def]
    from resablate.report.figure_data import final_bars

    groups, histories = _groups_and_histories(curve_report)
    panels = final_bars(groups, histories, "accuracy")
    assert list(panels) == ["final train loss", "test accuracy"]
    losses = {(b.category, b.variant): b.value for b in panels["final train loss"]}
    assert losses[("ResNet-56", "residual off")].values == (0.75, 1.0, 1.25)
    assert losses[("ResNet-56", "residual off")].mean == 1.0
    assert losses[("ResNet-20", "residual on")].mean == 0.5
    expected = t_interval([0.75, 1.0, 1.25])
    assert losses[("ResNet-56", "residual off")].half_width == expected.half_width
    accuracy = {(b.category, b.variant): b.value for b in panels["test accuracy"]}
    assert accuracy[("ResNet-20", "residual off")].values == (0.625, 0.5, 0.375)
    assert accuracy[("ResNet-20", "residual off")].mean == 0.5


def test_report_draws_the_seed_figures(curve_report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from resablate.report.figure_data import report_figures

    sections = {s.title: s for s in report_figures(curve_report, tmp_path, feature_maps=False)}
    curves = sections["Seed-averaged training curves"].figures
    bars = sections["Final values over seeds"].figures
    assert [f.path.name for f in curves] == ["seed-curves-0.png"]
    assert [f.path.name for f in bars] == ["final-bars-0.png"]
    assert png_size(curves[0].path) == _px(F.SEED_CURVES_SIZE)
    assert png_size(bars[0].path) == _px(F.BARS_SIZE)
    assert curves[0].title.startswith("seed-averaged curves · weights none;")
