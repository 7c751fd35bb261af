"""The paper tables (LaTeX, Markdown, CSV), ``resablate.report.load`` and their errors."""

from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path

import pytest
from test_report import make_store
from typer.testing import CliRunner

from resablate.errors import ConfigError, DataError
from resablate.grid.cell import Cell
from resablate.report import load
from resablate.report.build import build_report
from resablate.report.output import write_report
from resablate.report.stats import holm, seed_paired_t
from resablate_cli.app import app

DIVERGED = Cell.from_dict(dict(arch="resnet18", residual="off", weights="none", recipe="demo"))

# What the small store below must give, exactly (tests/golden_paper_tables.*, checked by eye).
GOLDEN = Path(__file__).parent / "golden_paper_tables"
MARKDOWN = GOLDEN.with_suffix(".md").read_text()
LATEX = GOLDEN.with_suffix(".tex").read_text()


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """2 archs × residual on/off × seeds 0, 1, all done, and one diverged cell."""
    extra = ((DIVERGED, "diverged", "loss became nan at step 3"),)
    return make_store(tmp_path / "grid", seeds=(0, 1), extra=extra)


def test_markdown_and_latex_paper_tables_exactly(small: Path, tmp_path: Path) -> None:
    report = build_report(small)
    md = write_report(report, "markdown", tmp_path / "out")
    tex = write_report(report, "latex", tmp_path / "paper.tex")
    assert md.path == tmp_path / "out" / "tables.md" and md.files == (md.path,)
    assert tex.path == tmp_path / "paper.tex"
    assert md.path.read_text() == MARKDOWN
    assert tex.path.read_text() == LATEX
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tables.md"]


def _cell_ids(arch: str, residual: str) -> str:
    ids = [
        Cell.from_dict(
            dict(arch=arch, residual=residual, weights="demo", recipe="demo", seed=s)
        ).cell_id
        for s in (0, 1)
    ]
    return '"[""' + '"", ""'.join(ids) + '""]"'


def test_csv_ablation_table_exactly(small: Path, tmp_path: Path) -> None:
    write_report(build_report(small), "csv", tmp_path / "csv")
    assert (tmp_path / "csv" / "ablation.csv").read_text() == (
        "table,metric,row,column,mean,half_width,n,values,p_value,b,c,reference,published,"
        "published_table,note,cell_ids,seed_difference,seed_p_value,seed_p_holm\n"
        "ablation,f1,ResNet-18,residual on · weights demo,0.91,0.12706204736174703,2,"
        f'"[0.9, 0.92]",,,,,,,,{_cell_ids("resnet18", "on")},,,\n'
        "ablation,f1,ResNet-18,residual off · weights demo,0.525,0.31765511840436766,2,"
        '"[0.5, 0.55]",0.0078125,8,0,residual on · weights demo,,,,'
        f"{_cell_ids('resnet18', 'off')},-0.385,0.024790828978125033,0.049581657956250066\n"
        "ablation,f1,ResNet-18,residual off · weights none,,,0,[],,,,,,,diverged,"
        f'"[""{DIVERGED.cell_id}""]",,,\n'
        "ablation,f1,ResNet-50,residual on · weights demo,0.94,0.12706204736174634,2,"
        f'"[0.93, 0.95]",,,,,,,,{_cell_ids("resnet50", "on")},,,\n'
        "ablation,f1,ResNet-50,residual off · weights demo,0.825,0.3176551184043669,2,"
        f'"[0.8, 0.85]",0.6875,4,2,residual on · weights demo,,,,{_cell_ids("resnet50", "off")}'
        ",-0.11499999999999999,0.08257119967969462,0.08257119967969462\n"
    )


def test_load_is_the_tidy_table(small: Path) -> None:
    frame = load(small)
    # 9 cells: each finished one has a test row and a val row (its history), the diverged one
    # only its test row.
    assert len(frame) == 17
    assert frame["split"].tolist().count("test") == 9
    on18 = Cell.from_dict(
        dict(arch="resnet18", residual="on", weights="demo", recipe="demo", seed=1)
    )
    rows = frame[frame["cell_id"] == on18.cell_id].set_index("split")
    assert rows.loc["test", "f1"] == 0.92 and rows.loc["test", "step"] == 8
    assert rows.loc["val", "f1"] == 0.92 and rows.loc["val", "step"] == 2
    assert rows.loc["val", "loss"] == pytest.approx(1 / 3)
    assert rows.loc["test", "loss"] == 0.3
    test = rows.loc["test"]
    assert (test["arch"], test["depth"], test["residual"], test["weights"]) == (
        "resnet18",
        18,
        "on",
        "demo",
    )
    assert (test["seed"], test["status"], test["params"], test["position"]) == (1, "done", 11e6, 1)
    assert set(frame.columns) >= {"dataset_fingerprint", "weights_sha256", "run_dir", "reason"}
    diverged = frame[frame["cell_id"] == DIVERGED.cell_id]
    assert diverged["split"].tolist() == ["test"]
    assert diverged["status"].tolist() == ["diverged"]
    assert diverged["f1"].isna().all()


def test_load_without_pandas_names_the_extra(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigError) as info:
        load(small)
    assert str(info.value) == (
        "loading results as a DataFrame needs pandas: pip install 'resablate[pandas]'"
    )


def test_cli_writes_paper_tables_and_refuses_an_unknown_format(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(small), "--format", "latex"])
    assert result.exit_code == 0, result.output
    target = small / "report" / "tables.tex"
    assert result.output.strip() == f"9 cells: 8 done, 1 diverged; wrote {target} (0 figures)"
    assert target.read_text() == LATEX
    result = runner.invoke(app, ["report", str(small), "--format", "xls"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown report format 'xls'; choose one of table, md, html, csv, json, latex, "
        "markdown (--format)"
    ]


def _fingerprint(store: Path, fingerprints: dict[int, str]) -> dict[str, list[str]]:
    """Record a dataset fingerprint per seed in the finished cells' environments (as a grid
    whose data changed between runs leaves them); returns the cell ids of each fingerprint."""
    cells: dict[str, list[str]] = {}
    with sqlite3.connect(store / "store.sqlite") as conn:
        rows = conn.execute(
            "SELECT cell_id, seed FROM cells WHERE status = 'done' ORDER BY position"
        )
        for cell_id, seed in rows.fetchall():
            conn.execute(
                "UPDATE cells SET environment = json_set(environment, '$.dataset_fingerprint', ?) "
                "WHERE cell_id = ?",
                (fingerprints[seed], cell_id),
            )
            cells.setdefault(fingerprints[seed], []).append(cell_id)
    return cells


def test_report_refuses_cells_of_changed_data_unless_allowed(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = _fingerprint(small, {0: "a" * 64, 1: "a" * 64})
    assert build_report(small).ablation is not None  # one fingerprint: reported as before
    cells = _fingerprint(small, {0: "a" * 64, 1: "b" * 64})
    assert sorted(same["a" * 64]) == sorted(cells["a" * 64] + cells["b" * 64])
    message = (
        "the cells of dataset demo trained on different contents (dataset fingerprints "
        f"{'a' * 12} (cells {', '.join(cells['a' * 64])}); "
        f"{'b' * 12} (cells {', '.join(cells['b' * 64])})): the report does not pool them; "
        "rerun the cells on one version of the data, or allow_mixed_data to report them anyway"
    )
    with pytest.raises(DataError) as info:
        build_report(small)
    assert str(info.value) == message and info.value.field == "allow_mixed_data"
    monkeypatch.setenv("COLUMNS", "1000")
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(small), "--format", "markdown"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message} (--allow-mixed-data)"]
    assert not (small / "report").exists()  # refused before anything is written
    result = runner.invoke(
        app, ["report", str(small), "--format", "markdown", "--allow-mixed-data"]
    )
    assert result.exit_code == 0, result.output
    assert (small / "report" / "tables.md").read_text() == MARKDOWN


def test_seed_paired_t_and_holm_match_scipy_and_hand_computation() -> None:
    ttest_rel = _scipy_ttest_rel()
    differences = [(2, 0.05), (0, 0.10), (1, -0.02)]
    test = seed_paired_t(differences)
    assert test is not None and test.n == 3
    assert test.differences == ((0, 0.10), (1, -0.02), (2, 0.05))
    expected = ttest_rel([0.10, -0.02, 0.05], [0.0, 0.0, 0.0])
    assert test.t == pytest.approx(expected.statistic, rel=1e-12)
    assert test.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert seed_paired_t([(0, 0.1)]) is None  # one seed: no test
    same = seed_paired_t([(0, 0.1), (1, 0.1)])
    assert same is not None and (same.t, same.p_value) == (math.inf, 0.0)
    # Holm: sorted 0.01, 0.02, 0.04 of m = 3 → 0.03, max(0.03, 0.04), max(0.04, 0.04).
    assert holm([0.04, 0.01, 0.02]) == pytest.approx((0.04, 0.03, 0.04))
    assert holm([0.5, 0.9]) == (1.0, 1.0)
    assert holm([]) == ()


def test_ablation_entries_carry_holm_corrected_seed_tests(small: Path) -> None:
    ttest_rel = _scipy_ttest_rel()
    table = build_report(small).ablation
    assert table is not None
    off18 = table.entry("ResNet-18", "residual off · weights demo")
    off50 = table.entry("ResNet-50", "residual off · weights demo")
    assert off18 is not None and off18.seed_test is not None
    assert off50 is not None and off50.seed_test is not None
    p18 = ttest_rel([0.50, 0.55], [0.90, 0.92]).pvalue
    p50 = ttest_rel([0.80, 0.85], [0.93, 0.95]).pvalue
    assert [seed for seed, _ in off18.seed_test.differences] == [0, 1]
    assert [d for _, d in off18.seed_test.differences] == pytest.approx([-0.40, -0.37])
    assert off18.seed_test.p_value == pytest.approx(p18, rel=1e-12)
    assert off18.seed_test.p_holm == pytest.approx(2 * p18, rel=1e-12)
    assert off50.seed_test.p_holm == pytest.approx(max(2 * p18, p50), rel=1e-12)
    assert off18.text().splitlines() == [
        "0.525 ± 0.318 (n=2)",
        "p = 0.008 vs residual on · weights demo",
        "seeds: Δ -0.385, Holm p = 0.050",
    ]
    on18 = table.entry("ResNet-18", "residual on · weights demo")
    assert on18 is not None and on18.seed_test is None  # the reference itself


def test_model_table_states_the_weights_each_configuration_loaded(small: Path) -> None:
    with sqlite3.connect(small / "store.sqlite") as conn:
        rows = conn.execute("SELECT cell_id, arch, seed FROM cells WHERE status = 'done'")
        for cell_id, arch, seed in rows.fetchall():
            # ResNet-50's seed 1 loaded another demo file than seed 0 (rebuilt in between).
            sha = "c" * 64 if arch == "resnet50" and seed == 1 else f"{arch}".ljust(64, "0")
            conn.execute(
                "UPDATE cells SET environment = json_set(environment, '$.weights_sha256', ?) "
                "WHERE cell_id = ?",
                (sha, cell_id),
            )
    models = build_report(small).models
    assert [(r.model, r.scenario, r.weights_used) for r in models.rows] == [
        ("ResNet-18", "residual on · weights demo", "demo · sha256 resnet180000"),
        ("ResNet-18", "residual off · weights demo", "demo · sha256 resnet180000"),
        (
            "ResNet-50",
            "residual on · weights demo",
            "demo · sha256 resnet500000; demo · sha256 cccccccccccc",
        ),
        (
            "ResNet-50",
            "residual off · weights demo",
            "demo · sha256 resnet500000; demo · sha256 cccccccccccc",
        ),
        ("ResNet-18", "residual off · weights none", None),  # diverged: nothing finished
    ]
    assert models.header()[14:] == ["ran on", "weights used"]
    assert models.display_rows()[0][15] == "demo · sha256 resnet180000"
    assert models.records()[0]["weights_used"] == "demo · sha256 resnet180000"


def _scipy_ttest_rel():  # type: ignore[no-untyped-def]
    """scipy's paired t-test, the reference (a runtime dependency, absent on a bare GPU machine:
    the test skips there)."""
    return pytest.importorskip("scipy.stats").ttest_rel
