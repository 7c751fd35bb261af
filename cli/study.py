"""How ``grid`` reads a study file (``--spec``), with the flags given on the command line taking
precedence, and writes the resolved study (``--print-spec [FILE]``)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from resablate_cli import console
from resablate_cli.cells import cell_fields

if TYPE_CHECKING:
    from resablate.grid.study import Study

#: ``grid``'s parameters that are execution options (an ``Execution`` field each).
EXECUTION_PARAMS = ("out", "device", "executor", "workers", "pack", "ray_address")
#: Spec fields spelled otherwise as a parameter of ``grid``.
_PARAM_OF = {"archs": "arch"}
#: The value ``--print-spec`` takes without a file: stdout.
STDOUT = "-"


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the parameter ``name`` was given on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def grid_study(ctx: typer.Context, spec_file: Path | None, **fields: Any) -> Study:
    """The study ``grid`` runs: the flags alone, or the study file with the flags given on the
    command line replacing its values (recipe overrides merged field by field).

    Args:
        ctx: The ``grid`` command's context.
        spec_file: The ``--spec`` file, or None.
        **fields: The spec fields the command computed (``family``, ``depths``, ``archs``,
            ``baselines``).
    """
    from resablate.grid.study import Execution, Study, read_study

    params: Mapping[str, Any] = ctx.params
    values = cell_fields(params, **fields)
    execution = {name: _plain(params[name]) for name in EXECUTION_PARAMS}
    if spec_file is None:
        from resablate.grid.spec import GridSpec

        spec = GridSpec(**{**values, "overrides": tuple(values["overrides"].items())})
        return Study(spec, Execution(**execution))
    given = {
        name: value
        for name, value in values.items()
        if name != "overrides" and _given(ctx, _PARAM_OF.get(name, name))
    }
    if fields.get("family") != params["family"]:  # --arch named the family (old spelling)
        given["family"] = fields["family"]
    given["overrides"] = values["overrides"]  # only the recipe flags given are in it
    chosen = {name: value for name, value in execution.items() if _given(ctx, name)}
    return read_study(spec_file, spec=given, execution=chosen)


def print_study(study: Study, target: str) -> None:
    """Write the resolved study: YAML on stdout for ``-``, else into the file ``target``."""
    from resablate.grid.study import dump_study, write_study

    if target == STDOUT:
        console.out.file.write(dump_study(study))
        console.out.file.flush()
        return
    written = write_study(study, Path(target).expanduser())
    console.err.print(f"wrote {written}", highlight=False, markup=False)
