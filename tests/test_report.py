"""Report tables and statistics from a store with known per-sample predictions."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_engine_devices import CPU_EXECUTION
from typer.testing import CliRunner

from resablate.errors import ConfigError, StoreError
from resablate.grid.cell import Cell
from resablate.grid.store import ResultStore
from resablate.report.build import build_report
from resablate.report.published import published
from resablate.report.stats import (
    discordant_counts,
    mcnemar_exact,
    mcnemar_p_value,
    paired_mcnemar,
    t_interval,
)
from resablate_cli.app import app


def scipy_stats():
    """scipy.stats, the reference the statistics are checked against (a dev dependency: imported
    when a test needs it, so that collecting the tests, e.g. ``pytest -m gpu``, does not)."""
    return pytest.importorskip("scipy.stats", reason="scipy is not installed")


N_TEST = 20
LABELS = [i % 2 for i in range(N_TEST)]
SEEDS = (0, 1, 2)
# Known F1 per (arch, residual, seed); the tables must reproduce their means and intervals.
F1 = {
    ("resnet18", "on"): (0.90, 0.92, 0.94),
    ("resnet18", "off"): (0.50, 0.55, 0.62),
    ("resnet50", "on"): (0.93, 0.95, 0.91),
    ("resnet50", "off"): (0.80, 0.85, 0.90),
}


def _preds(arch: str, residual: str, seed: int) -> list[int]:
    """Predictions with designed discordant pairs against the residual-on reference.

    resnet18: the reference is always right; without residuals 4 images per seed are wrong
    → b = 12, c = 0 pooled (significant). resnet50, seed 0 only: the reference is wrong on
    images 0, 1 that the ablated cell gets right (c = 2) and right on 2..5 that it gets
    wrong (b = 4) → p = 0.6875 (not significant).
    """
    preds = list(LABELS)
    flip: list[int] = []
    if arch == "resnet18" and residual == "off":
        flip = [4 * seed + k for k in range(4)]
    if arch == "resnet50" and seed == 0:
        flip = [0, 1] if residual == "on" else [2, 3, 4, 5]
    for i in flip:
        preds[i] = 1 - preds[i]
    return preds


def _test_images(folder: Path) -> list[str]:
    """Tiny PNG test images laid out as ``test/<class>/<i>.png`` (class names from folders)."""
    paths = []
    for i, y in enumerate(LABELS):
        path = folder / "test" / ("REAL" if y else "FAKE") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((8, 8, 3), 40 + 10 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


EXECUTION = {
    "resnet18": CPU_EXECUTION,
    "resnet50": {
        **CPU_EXECUTION,
        **{"device": "cuda:1", "device_name": "Fake H100", "gpu_count": 2, "amp": "bf16"},
        **{"channels_last": True, "tf32": True, "cudnn_benchmark": True},
    },
}


def make_store(
    out: Path, *, extra: tuple[tuple[Cell, str, str], ...] = (), seeds: tuple[int, ...] = SEEDS
) -> Path:
    """A store of 2 archs × residual on/off × ``seeds`` (demo weights), all done, plus ``extra``
    cells given as (cell, status, reason)."""
    paths = _test_images(out.parent / f"{out.name}-data")
    cells = [
        Cell.from_dict(dict(arch=arch, residual=residual, weights="demo", recipe="demo", seed=seed))
        for (arch, residual) in F1
        for seed in seeds
    ]
    every = cells + [c for c, _, _ in extra]
    with ResultStore(out) as store:
        store.set_spec({"archs": ["resnet18", "resnet50"], "seeds": list(SEEDS)})
        store.sync_cells(every, run_dirs={c.cell_id: str(out / c.cell_id) for c in every})
        for cell in cells:
            preds = _preds(cell.arch, cell.residual.text, cell.seed)
            f1 = F1[(cell.arch, cell.residual.text)][cell.seed]
            store.record_result(
                cell.cell_id,
                "done",
                metrics={
                    "f1": f1,
                    "accuracy": f1 + 0.01,
                    "precision": 0.9,
                    "recall": 0.8,
                    "loss": 0.3,
                },
                values={
                    "params": 11_000_000,
                    "active_params": 10_000_000,
                    "flops": 2 * 10**9,
                    "train_seconds": 10.0 + cell.seed,
                    "images_per_second": 100.0,
                    "steps": 8,
                },
                environment={
                    "torch": "2.x",
                    "device": "cpu",
                    "seed": cell.seed,
                    "execution": EXECUTION[cell.arch],
                },
                evaluations=[
                    {"step": s, "epoch": s / 4, "split": "val", "loss": 1 / (s + 1), "f1": f1}
                    for s in (1, 2)
                ],
                predictions=[
                    {
                        "index": i,
                        "path": paths[i],
                        "label": y,
                        "pred": p,
                        "prob": 0.8 if p else 0.2,
                    }
                    for i, (y, p) in enumerate(zip(LABELS, preds, strict=True))
                ],
            )
        for cell, status, reason in extra:
            if status != "pending":
                store.record_result(cell.cell_id, status, reason=reason)
    return out


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return make_store(
        tmp_path / "grid",
        extra=(
            (
                Cell.from_dict(
                    dict(arch="resnet18", residual="off", weights="none", recipe="demo")
                ),
                "diverged",
                "loss became nan at step 3",
            ),
            (
                Cell.from_dict(dict(arch="resnet18", residual="on", weights="none", recipe="demo")),
                "pending",
                "",
            ),
        ),
    )


# ------------------------------------------------------------------------------ statistics


def test_t_interval_matches_hand_computation() -> None:
    values = F1[("resnet18", "off")]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    expected = scipy_stats().t.ppf(0.975, 2) * sd / math.sqrt(3)
    result = t_interval(values)
    assert result.mean == pytest.approx(mean, abs=1e-15)
    assert result.half_width == pytest.approx(expected, rel=1e-12)
    assert result.low == pytest.approx(mean - expected, rel=1e-12)
    assert result.n == 3
    assert result.format() == f"{mean:.3f} ± {expected:.3f} (n=3)"


def test_single_seed_has_no_interval_and_says_so() -> None:
    result = t_interval([0.75])
    assert result.half_width is None and result.low is None
    assert result.format() == "0.750 (n=1, no interval)"
    with pytest.raises(ConfigError, match="at least one value"):
        t_interval([])


@pytest.mark.parametrize(("b", "c"), [(12, 0), (4, 2), (30, 14), (7, 7), (0, 0), (1, 0)])
def test_mcnemar_matches_scipy_binomtest(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else scipy_stats().binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_p_value(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_p_value(c, b) == mcnemar_p_value(b, c)


def test_mcnemar_significant_and_not() -> None:
    assert mcnemar_exact(12, 0).p_value == pytest.approx(2 / 2**12, rel=1e-15)  # 0.000488
    assert mcnemar_exact(4, 2).p_value == pytest.approx(44 / 64, rel=1e-15)  # 0.6875


def test_paired_mcnemar_pools_discordant_counts_over_seeds() -> None:
    labels = [0, 1, 0, 1]
    assert discordant_counts(labels, [0, 1, 0, 1], [1, 1, 0, 0]) == (2, 0)
    result = paired_mcnemar(
        [(0, labels, [0, 1, 0, 1], [1, 1, 0, 0]), (1, labels, [1, 1, 0, 1], [0, 1, 1, 1])]
    )
    assert (result.b, result.c, result.n_pairs) == (3, 1, 8)
    assert result.per_seed == ((0, 2, 0), (1, 1, 1))
    assert result.p_value == pytest.approx(scipy_stats().binomtest(3, 4, 0.5).pvalue, rel=1e-12)
    with pytest.raises(ConfigError, match="differ in length"):
        discordant_counts([0, 1], [0], [0, 1])


# ------------------------------------------------------------------------------ tables


def test_ablation_table_values_intervals_and_tests(store_dir: Path) -> None:
    report = build_report(store_dir, metric="f1")
    table = report.ablation
    assert table is not None
    assert table.rows == ("ResNet-18", "ResNet-50")
    assert table.columns == (
        "residual on · weights demo",
        "residual off · weights demo",
        "residual off · weights none",
        "residual on · weights none",
    )
    off18 = table.entry("ResNet-18", "residual off · weights demo")
    assert off18 is not None and off18.value is not None and off18.test is not None
    expected = t_interval(F1[("resnet18", "off")])
    assert off18.value.mean == expected.mean
    assert off18.value.half_width == expected.half_width
    assert (off18.test.b, off18.test.c) == (12, 0)
    assert off18.test.per_seed == ((0, 4, 0), (1, 4, 0), (2, 4, 0))
    assert off18.test.p_value == pytest.approx(
        scipy_stats().binomtest(12, 12, 0.5).pvalue, rel=1e-12
    )
    assert off18.reference == "residual on · weights demo"
    assert "p < 0.001 vs residual on · weights demo" in off18.text()

    off50 = table.entry("ResNet-50", "residual off · weights demo")
    assert off50 is not None and off50.test is not None
    assert (off50.test.b, off50.test.c) == (4, 2)
    assert off50.test.p_value == pytest.approx(scipy_stats().binomtest(4, 6, 0.5).pvalue, rel=1e-12)
    assert "p = 0.688" in off50.text()

    on18 = table.entry("ResNet-18", "residual on · weights demo")
    assert on18 is not None and on18.test is None and on18.reference is None

    # A diverged cell: no value, its status says why; its reference exists but is pending.
    diverged = table.entry("ResNet-18", "residual off · weights none")
    assert diverged is not None and diverged.value is None and diverged.note == "diverged"
    assert diverged.test is None
    pending = table.entry("ResNet-18", "residual on · weights none")
    assert pending is not None and pending.note == "pending"
    # No ResNet-50 cell without pretrained weights: an empty slot, shown as "—", never 0.
    assert table.entry("ResNet-50", "residual on · weights none") is None
    row50 = table.display_rows()[1]
    assert row50[3].startswith("—") and row50[4].startswith("—")
    assert report.freeze is None


def test_model_table_and_problems(store_dir: Path) -> None:
    report = build_report(store_dir, metric="accuracy")
    first = report.models.rows[0]
    assert (first.model, first.scenario, first.seeds) == (
        "ResNet-18",
        "residual on · weights demo",
        "3/3",
    )
    assert first.gflops == 2.0
    assert first.train_seconds == 11.0
    f1 = first.metrics["f1"]
    assert f1 is not None and f1.mean == pytest.approx(0.92, abs=1e-12)
    record = report.models.records()[0]
    assert record["params"] == 11_000_000 and record["f1"] == pytest.approx(0.92, abs=1e-12)
    # What ran is in the model table (it differs between the rows, so not in the environment).
    gpu = "Fake H100 (cuda:1 of 2) · bf16 · channels_last · tf32 · cudnn.benchmark"
    assert [(r.model, r.seeds, r.ran_on) for r in report.models.rows] == [
        ("ResNet-18", "3/3", "cpu · fp32"),
        ("ResNet-18", "3/3", "cpu · fp32"),
        ("ResNet-50", "3/3", gpu),
        ("ResNet-50", "3/3", gpu),
        ("ResNet-18", "0/1", None),  # the diverged cell: nothing finished
        ("ResNet-18", "0/1", None),  # the pending cell
    ]
    assert report.models.header()[14] == "ran on" and record["ran_on"] == "cpu · fp32"
    assert report.models.display_rows()[0][14] == "cpu · fp32"
    problems = {p.status: p.reason for p in report.problems.problems}
    assert problems == {
        "diverged": "loss became nan at step 3",
        "pending": "not run yet (grid not finished)",
    }
    assert report.status_counts["done"] == 12
    assert report.environment == {"device": "cpu", "torch": "2.x"}  # "seed" varies: left out
    assert report.spec == {"archs": ["resnet18", "resnet50"], "seeds": [0, 1, 2]}


def test_compare_places_published_numbers_and_leaves_gaps_empty(store_dir: Path) -> None:
    report = build_report(store_dir, compare="cifake")
    table = report.ablation
    assert table is not None and table.compare == "cifake"
    on18 = table.entry("ResNet-18", "residual on · weights demo")
    off18 = table.entry("ResNet-18", "residual off · weights demo")
    none18 = table.entry("ResNet-18", "residual on · weights none")
    assert on18 is not None and on18.published is not None
    assert (on18.published.value, on18.published.table) == (0.928, "table7")
    assert off18 is not None and off18.published is not None and off18.published.value == 0.498
    assert none18 is not None and none18.published is None  # the paper never reported it
    header = table.header()
    assert header[1:3] == ["residual on · weights demo", "cifake published"]
    row = table.display_rows()[0]
    assert row[2] == "0.928 (table7)" and row[8] == "—"
    assert any("Table 4 and Table 5" in n for n in table.notes)
    model = report.models.rows[0]
    assert {k: (v.value, v.table) for k, v in model.published.items()} == {
        "f1": (0.928, "table7"),
        "loss": (0.19, "table7"),
        "params_m": (11.7, "table2"),
    }


def test_published_data_as_printed() -> None:
    cifake = published("cifake")
    assert cifake.lookup("f1", arch="resnet152", residual="off", pretrained=True).value == 0.592
    pub = cifake.lookup("accuracy", arch="resnet152", residual="off", pretrained=True)
    assert pub is not None and (pub.value, pub.table) == (0.7226, "table4")
    assert cifake.lookup("accuracy", arch="resnet18", residual="on", pretrained=False) is None
    food = published("food5k")
    value = food.lookup(
        "accuracy", arch="resnet18", residual="on", pretrained=True, freeze="conv1-2"
    )
    assert value is not None and value.value == 0.988
    assert "Food-5K" in food.source
    with pytest.raises(ConfigError, match="cifake, food5k"):
        published("imagenet")


def test_freeze_table_rows_plans_columns_archs(tmp_path: Path) -> None:
    extra = tuple(
        (
            Cell.from_dict(
                dict(arch="resnet18", weights="demo", freeze=plan, recipe="demo", seed=0)
            ),
            "skipped",
            "weights missing",
        )
        for plan in ("conv1-2", "all")
    )
    report = build_report(make_store(tmp_path / "g", extra=extra), compare="food5k")
    table = report.freeze
    assert table is not None
    assert table.rows == ("none", "conv1-2", "all")
    assert table.columns == ("ResNet-18", "ResNet-50")
    none18 = table.entry("none", "ResNet-18")
    assert none18 is not None and none18.value is not None
    assert none18.value.mean == pytest.approx(0.93, abs=1e-12)  # accuracy = f1 + 0.01
    assert none18.published is not None and none18.published.value == 0.981
    frozen = table.entry("conv1-2", "ResNet-18")
    assert frozen is not None and frozen.note == "skipped" and frozen.published.value == 0.988
    assert table.entry("all", "ResNet-50") is None


def test_unknown_metric_and_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results store"):
        build_report(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        build_report(tmp_path / "nope")
    make_store(tmp_path / "g")
    with pytest.raises(ConfigError, match="unknown metric 'auc'"):
        build_report(tmp_path / "g", metric="auc")


# ------------------------------------------------------------------------------ CLI


def test_cli_table_and_json(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Through COLUMNS, not Console.width: monkeypatch would restore the width by assigning it,
    # which pins the shared console to that width for every later test.
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, ["report", str(store_dir), "--compare", "cifake"])
    assert result.exit_code == 0, result.output
    assert "ResNet-18" in result.output and "p < 0.001" in result.output
    assert "cifake published" in result.output
    result = CliRunner().invoke(app, ["report", str(store_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"summary": "14 cells: 12 done, 1 pending, 1 diverged"' in result.output


def test_cli_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the line may wrap on a narrow terminal only
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: no results store in {tmp_path} (expected store.sqlite; run a grid into that "
        "folder first)"
    ]
    store = make_store(tmp_path / "g") / "store.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA user_version = 99")
    result = runner.invoke(app, ["report", str(tmp_path / "g")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "newer resablate (store format 99" in lines[0]
    assert "Traceback" not in result.output


def test_cli_writes_html_file_without_figures(store_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "study.html"
    result = CliRunner().invoke(
        app, ["report", str(store_dir), "--format", "html", "--out", str(target), "--no-figures"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {target} (0 figures)" in " ".join(result.output.split())
    html = target.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<img" not in html
    assert "loss became nan at step 3" in html
    assert sorted(p.name for p in target.parent.iterdir()) == ["study.html"]


def test_compare_puts_no_published_number_beside_a_scaled_residual(tmp_path: Path) -> None:
    scaled = Cell.from_dict(
        dict(arch="resnet18", residual="off", residual_alpha=0.5, weights="demo", recipe="demo")
    )
    store = make_store(tmp_path / "grid", extra=((scaled, "pending", ""),))
    table = build_report(store, compare="cifake").ablation
    assert table is not None
    off18 = table.entry("ResNet-18", "residual off · weights demo")
    half18 = table.entry("ResNet-18", "residual ×0.5 · weights demo")
    assert off18 is not None and off18.published is not None and off18.published.value == 0.498
    # The paper removed the shortcuts; a cell that halves them is not the cell it reported.
    assert half18 is not None and half18.published is None
