"""Output folders are checked before any work: a file, a path below a file or a read-only place
is one line and exit 2, never an internal error after the data was decoded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grid_helpers import tiny_grid_args, write_tiny_dataset
from readonly import run_read_only
from test_report import make_store
from typer.testing import CliRunner

from resablate.errors import ConfigError
from resablate.paths import output_dir
from resablate_cli.app import app


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any dataset scan fail loudly: the output check must come first."""

    def scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was scanned before the output folder was checked")

    monkeypatch.setattr("resablate.data.scan", scan)


def _commands(data: Path, out: Path) -> dict[str, list[str]]:
    return {
        "grid": tiny_grid_args(data, out),
        "train": ["train", "--arch", "resnet18", "--data", str(data), "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["grid", "train"])
def test_out_that_is_a_file_or_below_one_is_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    data = write_tiny_dataset(tmp_path / "data", per_class=2)
    _no_work(monkeypatch)
    (tmp_path / "file").write_text("x")
    for out, message in (
        (tmp_path / "file", f"error: output folder {tmp_path / 'file'} is a file, not a folder"),
        (
            tmp_path / "file" / "run",
            f"error: output folder {tmp_path / 'file' / 'run'} cannot be created: "
            f"{tmp_path / 'file'} is not a folder",
        ),
    ):
        result = CliRunner().invoke(app, _commands(data, out)[command])
        assert (result.exit_code, result.stderr) == (2, message + "\n")


def test_output_dir_creates_parents_and_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    assert output_dir(tmp_path / "a" / "b", "run directory") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checked, not created: a failed run leaves nothing
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"^run directory .*/f is a file, not a folder$"):
        output_dir(tmp_path / "f", "run directory")


_CLI = """
import json, sys
from typer.testing import CliRunner
from resablate_cli.app import app
runs = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[1])]
print(json.dumps([[r.exit_code, r.stdout, r.stderr] for r in runs]))
"""


def test_report_and_grid_in_a_read_only_place(tmp_path: Path) -> None:
    store = make_store(tmp_path / "archive" / "grid")
    data = write_tiny_dataset(tmp_path / "data", per_class=4)
    elsewhere = tmp_path / "elsewhere"
    report = ["report", str(store)]
    calls = [
        report,
        [*report, "--format", "json"],
        [*report, "--format", "csv", "--out", str(elsewhere / "csv")],
        [*report, "--format", "md", "--no-figures", "--out", str(elsewhere / "md")],
        [*report, "--format", "html", "--no-figures", "--out", str(elsewhere / "r.html")],
        [*report, "--format", "csv"],
        tiny_grid_args(data, tmp_path / "archive" / "new"),
        tiny_grid_args(data, store),
    ]
    done = run_read_only(tmp_path / "archive", ["python", "-c", _CLI, json.dumps(calls)])
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [code for code, _, _ in results] == [0, 0, 0, 0, 0, 2, 2, 2]
    assert "ResNet-18" in results[0][1]
    assert json.loads(results[1][1])["summary"] == "12 cells: 12 done"
    assert sorted(p.name for p in (elsewhere / "csv").iterdir())[:1] == ["ablation.csv"]
    assert (elsewhere / "md" / "report.md").is_file() and (elsewhere / "r.html").is_file()
    archive = tmp_path / "archive"
    assert [stderr for _, _, stderr in results[5:]] == [
        f"error: cannot create report folder {store / 'report'}: read-only file system; write "
        "the report elsewhere (--out)\n",
        f"error: cannot create output folder {archive / 'new'}: read-only file system\n",
        f"error: cannot write to output folder {store}: read-only file system\n",
    ]


@pytest.mark.parametrize("command", ["lesion", "compare-features", "gradflow"])
def test_diagnostic_outputs_are_checked_before_any_work(tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("x")
    figure = tmp_path / "file" / "figure.png"
    run = tmp_path / "missing-run"
    args = {
        "lesion": ["lesion", str(run), "--out", str(figure)],
        "compare-features": ["compare-features", str(run), str(run), "--out", str(figure)],
        "gradflow": ["gradflow", "--arch", "resnet18", "--out", str(figure)],
    }[command]
    result = CliRunner().invoke(app, args)
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: figure folder {tmp_path / 'file'} is a file, not a folder\n",
    )
    if command != "gradflow":  # --save writes into the run directory: checked first too
        result = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "f.png")])
        assert result.exit_code == 2
    if command == "lesion":
        result = CliRunner().invoke(app, ["lesion", str(tmp_path / "file")])
        assert result.stderr == (
            f"error: run directory {tmp_path / 'file'} is a file, not a folder "
            "(--no-save: only print the result)\n"
        )


@pytest.mark.parametrize("command", ["grid", "train"])
def test_an_empty_or_too_long_out_or_data_is_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    data = write_tiny_dataset(tmp_path / "data", per_class=2)
    _no_work(monkeypatch)
    monkeypatch.chdir(tmp_path)  # an empty path would be the working directory
    long = tmp_path / ("a" * 300)
    for args, message in (
        (["--out", ""], "Invalid value for '--out': an empty path names no folder"),
        (
            ["--out", str(long)],
            f"error: output folder {tmp_path / ('a' * 16)}… cannot be created: its name is 300 "
            "bytes long, longer than the 255 bytes the file system allows",
        ),
        (["--data", ""], "error: the dataset folder is an empty path; name a folder (--data)"),
    ):
        for dry_run in ([], ["--dry-run"]) if command == "grid" else ([],):
            given = [*_commands(data, tmp_path / "out")[command], *args, *dry_run]
            result = CliRunner().invoke(app, given, env={"COLUMNS": "200"})
            assert result.exit_code == 2, result.output
            assert message in " ".join(result.stderr.split())
            assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_output_dir_refuses_an_empty_path_and_names_too_long_for_the_file_system(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"^run directory is an empty path; name a folder"):
        output_dir("", "run directory")
    with pytest.raises(ConfigError, match=r"^run directory .*/x/bbbbbbbbbbbbbbbb… cannot be"):
        output_dir(tmp_path / "x" / ("b" * 256) / "c", "run directory")
    deep = tmp_path.joinpath(*["c" * 200] * 25)
    with pytest.raises(ConfigError, match=r"its path is \d+ bytes long, the file system allows"):
        output_dir(deep, "run directory")
    assert output_dir(tmp_path / ("d" * 255)) == tmp_path / ("d" * 255)
