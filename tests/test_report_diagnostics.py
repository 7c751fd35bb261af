"""Diagnostics in the report: gradient norms logged by ``grid --log-gradflow`` and lesion studies
saved by ``resablate lesion RUN_DIR`` show up when their files exist, and only then."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from grid_helpers import one_thread, write_tiny_dataset
from test_report_figures import png_size

from resablate.diagnostics.cka import CKAResult, save_cka
from resablate.diagnostics.gradflow import GradNormLogging
from resablate.diagnostics.lesion import LesionEntry, LesionResult, save_lesion
from resablate.report import figures as F
from resablate.report.build import build_report
from resablate.report.output import write_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18, residual on/off, two optimiser steps each, gradient norms at every step."""
    from resablate.grid.runner import run_grid
    from resablate.grid.spec import GridSpec

    root = tmp_path_factory.mktemp("diag-grid")
    spec = GridSpec(
        depths=(18,),
        residual=("on", "off"),
        weights=("none",),
        data=str(write_tiny_dataset(root / "data")),
        recipe="demo",
        overrides=(("max_steps", 2), ("image_size", 16), ("batch_size", 4)),
    )
    with one_thread():
        summary = run_grid(spec, root / "grid", device="cpu", step_hooks=[GradNormLogging(every=1)])
    assert summary.counts["done"] == 2, summary.counts
    return root / "grid"


def _lesion(label: str) -> LesionResult:
    entry = LesionEntry((), 0.75, 0.7, 0.5)
    singles = (LesionEntry(("layer1.0",), 0.5, 0.4, 0.9), LesionEntry(("layer2.0",), 0.25, 0.2, 2))
    return LesionResult(entry, singles, (), ("layer2.0",), 8, 0, label)


def _figure_names(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.glob("*.png")
        if p.stem.split("-")[0] in ("gradflow", "lesion", "cka")
    )


def test_sections_appear_only_with_their_files(grid: Path, tmp_path: Path) -> None:
    report = build_report(grid)
    logs = [Path(str(r.run_dir)) / "gradflow.jsonl" for r in report.cells]
    assert all(log.is_file() for log in logs)
    for log in logs:  # absent: no section, no figure
        log.rename(log.with_suffix(".off"))
    absent = write_report(report, "md", tmp_path / "absent", feature_maps=False)
    text = absent.path.read_text()
    assert "Gradient norm per stage" not in text and "Lesion studies" not in text
    assert _figure_names(absent.path.parent / "figures") == []

    for log in logs:
        log.with_suffix(".off").rename(log)
    first, second = (Path(str(r.run_dir)) for r in report.cells)
    save_lesion(_lesion(report.cells[0].cell_id), first)
    cka = CKAResult(("conv1", "fc"), ("conv1", "fc"), ((1.0, 0.25), (math.nan, 0.5)), 8, "A", "B")
    save_cka(cka, first, second)
    md = write_report(report, "md", tmp_path / "md", feature_maps=False)
    text = md.path.read_text()
    assert "## Gradient norm per stage over training" in text
    assert "## Lesion studies" in text
    folder = md.path.parent / "figures"
    assert _figure_names(folder) == ["cka-0.png", "gradflow-0.png", "lesion.png"]
    assert "## Representation similarity (CKA)" in text
    assert "(figures/cka-0.png)" in text
    assert png_size(folder / "gradflow-0.png") == (900, 360)
    assert png_size(folder / "lesion.png") == (600, 380)
    assert "(figures/gradflow-0.png)" in text and "(figures/lesion.png)" in text

    html = write_report(report, "html", tmp_path / "report.html", feature_maps=False)
    page = html.path.read_text()
    assert "<h2>Gradient norm per stage over training</h2>" in page
    assert "<h2>Lesion studies</h2>" in page
    assert page.count('alt="linear CKA · A vs B"') == 1
    assert page.count('alt="gradient norm per stage over training') == 1
    assert page.count('alt="lesion study: accuracy vs blocks deleted') == 1
    assert F.GRADFLOW_SIZE == (9.0, 3.6) and F.LESION_SIZE == (6.0, 3.8)
