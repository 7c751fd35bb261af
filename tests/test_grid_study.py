"""Study files: ``resablate grid --spec study.yaml``, ``--print-spec``, flags over the file,
one-line errors naming the file, the line and the key, and the store's record of the study."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from grid_helpers import one_thread, write_tiny_dataset
from typer.testing import CliRunner

from resablate.errors import ConfigError
from resablate.grid.spec import GridSpec
from resablate.grid.store import ResultStore
from resablate.grid.study import Execution, Study, dump_study, read_study
from resablate_cli.app import app

runner = CliRunner()

STUDY = """\
# The CIFAKE study's 3 x 2 table, two seeds, a short recipe.
depths: [18, 50]
archs: vgg16
residual: [on, off]
weights: none
seeds: [0, 1]
recipe: demo
overrides: {max_steps: 3, image_size: 16}
execution:
  out: runs/study
  device: cpu
  pack: off
"""


def _write(folder: Path, text: str, name: str = "study.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_study_file_describes_the_grid_and_how_it_runs(tmp_path: Path) -> None:
    study = read_study(_write(tmp_path, STUDY))
    assert study.spec == GridSpec(
        depths=(18, 50),
        archs=("vgg16",),
        residual=("on", "off"),  # YAML 1.2 booleans: on/off stay the plans
        weights=("none",),
        seeds=(0, 1),
        recipe="demo",
        overrides=(("max_steps", 3), ("image_size", 16)),
    )
    assert study.execution == Execution(out="runs/study", device="cpu", pack="off")
    assert len(study.spec.cells()) == 2 * 2 * 2 + 2  # vgg16 takes residual on only
    # Values given elsewhere (the flags) win; recipe overrides merge field by field.
    changed = read_study(
        tmp_path / "study.yaml",
        spec={"seeds": (5,), "overrides": {"max_steps": 7}},
        execution={"pack": "2"},
    )
    assert changed.spec.seeds == (5,)
    assert dict(changed.spec.overrides) == {"max_steps": 7, "image_size": 16}
    assert (changed.execution.pack, changed.execution.device) == (2, "cpu")
    # Only archs: no depths (as on the command line); an empty file is every default.
    assert read_study(_write(tmp_path, "archs: [resnet18]\n")).spec.depths == ()
    assert read_study(_write(tmp_path, "")) == Study(GridSpec(), Execution())


def test_print_spec_reads_back_to_the_same_cells(tmp_path: Path) -> None:
    args = ["grid", "--depths", "18", "--arch", "vgg16", "--residual", "on", "off:conv5_x"]
    args += ["--residual-alpha", "0", "0.5", "--weights", "none", "demo", "--freeze", "conv1"]
    args += ["--seeds", "0", "1", "--set", "max_steps=3", "--pack", "off", "--out", "runs/x"]
    result = runner.invoke(app, [*args, "--dry-run", "--print-spec"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    printed = _write(tmp_path, result.stdout, "printed.yaml")
    study = read_study(printed)
    from_flags = GridSpec(
        depths=(18,),
        archs=("vgg16",),
        residual=("on", "off:conv5_x"),
        residual_alpha=(0.0, 0.5),
        weights=("none", "demo"),
        freeze=("conv1",),
        seeds=(0, 1),
        overrides=(("max_steps", 3),),
    )
    assert [c.cell_id for c in study.spec.cells()] == [c.cell_id for c in from_flags.cells()]
    assert study.execution == Execution(out="runs/x", pack="off")
    assert dump_study(study) == result.stdout
    again = runner.invoke(app, ["grid", "--spec", str(printed), "--print-spec"])
    assert again.exit_code == 0, again.output
    assert again.stdout == result.stdout
    # --print-spec FILE: JSON for .json, read back the same
    target = tmp_path / "printed.json"
    written = runner.invoke(app, ["grid", "--spec", str(printed), "--print-spec", str(target)])
    assert written.exit_code == 0, written.output
    assert written.stderr == f"wrote {target}\n"
    assert read_study(target) == study
    assert json.loads(target.read_text()) == study.to_dict()
    assert not (tmp_path / "runs").exists()


def test_flags_given_override_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, STUDY)
    # --print-spec at the end, without a value: stdout
    result = runner.invoke(
        app,
        [
            *("grid", "--spec", str(path), "--seeds", "3", "--max-steps", "9"),
            *("--device", "auto", "--out", "elsewhere", "--print-spec"),
        ],
    )
    assert result.exit_code == 0, result.output
    study = read_study(_write(tmp_path, result.stdout, "resolved.yaml"))
    assert study.spec.seeds == (3,)
    assert study.spec.depths == (18, 50)
    assert dict(study.spec.overrides) == {"max_steps": 9, "image_size": 16}
    assert study.execution == Execution(out="elsewhere", device="auto", pack="off")


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        (
            "depths: [18]\ndepht: [50]\n",
            "study.yaml",
            "{path}:2: unknown key 'depht'; keys: family, source, depths, archs, residual, "
            "residual_alpha, weights, freeze, seeds, baselines, recipe, data, overrides, bn, "
            "execution",
        ),
        (
            "depths: [18]\nexecution:\n  device: cpu\n  packs: 4\n",
            "study.yaml",
            "{path}:4: unknown key 'packs'; keys: out, device, executor, workers, pack, "
            "ray_address",
        ),
        (
            "depths: [18]\nfreeze: [none, conv9]\n",
            "study.yaml",
            "{path}:2: freeze: unknown freeze plan 'conv9'; plans: none, conv1, conv1-2, "
            "conv1-3, conv1-4, all",
        ),
        (
            "depths: [18, 77]\n",
            "study.yaml",
            "{path}:1: depths: depth 77: unknown architecture 'resnet77'",
        ),
        (
            "depths: [18]\nexecution:\n  pack: many\n",
            "study.yaml",
            "{path}:3: execution.pack: pack 'many' is not valid; use auto, off or a number of "
            "cells (2, 4)",
        ),
        (
            "depths: [18]\noverrides:\n  lr: -1\n",
            "study.yaml",
            "{path}: recipe field lr=-1 must be > 0",
        ),
        (
            '{\n  "depths": [18],\n  "seeds": [-1]\n}\n',
            "study.json",
            "{path}:3: seeds: seed -1 is not a non-negative integer",
        ),
        ("depths: [18\n", "study.yaml", "{path}:2: not valid YAML: expected ',' or ']'"),
        ('{"depths": [18,]}', "study.json", "{path}:1: not valid JSON: Expecting value"),
        ("- 18\n", "study.yaml", "{path}: a study file holds a mapping of keys"),
        ("depths: [18]\n", "study.toml", "study file {path} must end in .yaml, .yml or .json"),
    ],
)
def test_bad_study_files_are_one_line(tmp_path: Path, text: str, name: str, message: str) -> None:
    path = _write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        read_study(path)
    assert str(info.value).startswith(message.format(path=path))
    result = runner.invoke(app, ["grid", "--spec", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message.format(path=path)}")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_bad_flag_over_a_file_names_the_flag(tmp_path: Path) -> None:
    path = _write(tmp_path, STUDY)
    result = runner.invoke(app, ["grid", "--spec", str(path), "--freeze", "conv9", "--dry-run"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown freeze plan 'conv9'")
    assert result.stderr.rstrip().endswith("(--freeze)")
    missing = tmp_path / "none.yaml"
    result = runner.invoke(app, ["grid", "--spec", str(missing)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: cannot read study file {missing}: No such file or directory (--spec)\n"
    )


def test_the_store_records_the_resolved_study(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    study = f"""\
        depths: [18]
        residual: [on, off]
        weights: [none]
        recipe: demo
        data: {data}
        overrides: {{max_steps: 2, image_size: 16, batch_size: 4}}
        execution: {{out: {tmp_path / "out"}, device: cpu}}
        """
    path = _write(tmp_path, study)
    with one_thread():
        result = runner.invoke(app, ["grid", "--spec", str(path)])
    assert result.exit_code == 0, result.output
    expected = read_study(path)
    with ResultStore.open(tmp_path / "out") as store:
        assert store.spec() == json.loads(json.dumps(expected.to_dict()))
        rows = store.cells()
        recorded = _write(tmp_path, json.dumps(store.spec()), "recorded.json")
    assert [(row.status, row.steps) for row in rows] == [("done", 2), ("done", 2)]
    assert [row.cell_id for row in rows] == [c.cell_id for c in read_study(recorded).spec.cells()]
