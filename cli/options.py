"""What the commands share: choice enums built from the library's constants, common options,
list splitting, result output, and the flag each library field is spelled as on the command line.

A command imports its shared options from here instead of defining them again; the choices
follow the library (a new source or metric appears everywhere at once). Nothing here imports
torch, so ``resablate --help`` stays fast.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from resablate.choices import BN_POLICIES, LESION_METRICS, METRICS_SHOWN, PUBLIC_DATASETS, SOURCES
from resablate_cli import console


def choices(name: str, values: tuple[str, ...], doc: str) -> type[StrEnum]:
    """A ``StrEnum`` whose members are ``values`` (member name = value), for Typer choices."""
    enum = StrEnum(name, {value: value for value in values})  # type: ignore[misc]
    enum.__doc__ = doc
    enum.__module__ = __name__
    return enum


Source = choices("Source", SOURCES, "Where the architectures come from.")
BnPolicy = choices("BnPolicy", BN_POLICIES, "BatchNorm policy of frozen stages.")
Metric = choices("Metric", METRICS_SHOWN, "The metric of a results table.")
LesionMetric = choices("LesionMetric", LESION_METRICS, "Metric of a lesion figure.")
PublicDataset = choices("PublicDataset", PUBLIC_DATASETS, "A public dataset to download.")

SourceOption = Annotated[Source, typer.Option("--source", help="Model source.")]
InputSizeOption = Annotated[
    int, typer.Option("--input-size", min=1, help="Image side for FLOPs, in pixels.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]

# Library fields whose command-line flag is not ``--`` + the field with dashes (one spelling in
# every command).
_FLAGS = {"out_dir": "--out", "archs": "--arch", "seed": "--seeds", "trackers": "--track"}


def flag(field: str) -> str:
    """The command-line flag of a library argument or config field (``residual_alpha`` →
    ``--residual-alpha``; ``archs`` → ``--arch``; ``out_dir`` → ``--out``)."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def folder(text: str | Path) -> Path:
    """Parse a folder option (``parser=folder``; Typer passes the default as it is): an empty
    value is refused, not read as the working directory (``Path("")`` is ``.``)."""
    if not str(text).strip():
        raise typer.BadParameter("an empty path names no folder; give one, e.g. runs/study")
    return Path(text)


def split_values(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated option values as one list (``[]`` when none given)."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def show(
    result: Any, *, as_json: bool, figure: Path | None = None, notes: tuple[str, ...] = ()
) -> None:
    """Print a library result: its ``to_dict()`` as JSON on stdout, or its rich rendering.

    ``notes`` go to stderr first (as warnings), the figure written last.
    """
    for note in notes:
        console.err.print(f"warning: {note}", markup=False, highlight=False)
    if as_json:
        console.print_json(result.to_dict())
    else:
        console.out.print(result)
    if figure is not None:
        console.err.print(f"wrote {figure}")


def check_outputs(*, figure: Path | None = None, run_dir: Path | None = None) -> None:
    """Check, before any work, that a diagnostic can write its figure (``--out``) and, with
    ``--save``, into the run directory; one line naming the folder otherwise."""
    from resablate.errors import ConfigError
    from resablate.paths import output_dir

    if figure is not None:
        output_dir(figure.expanduser().parent, "figure folder")
    if run_dir is not None:
        try:
            output_dir(run_dir, "run directory")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (--no-save: only print the result)") from None
