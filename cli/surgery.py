"""``resablate surgery``: drop (or scale) residual connections and show what changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from resablate_cli import console
from resablate_cli.options import (
    InputSizeOption,
    JsonOption,
    Source,
    SourceOption,
    show,
    split_values,
)

if TYPE_CHECKING:
    from rich.table import Table

    from resablate.surgery import SurgeryCounts


def surgery(
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="ARCH",
            help="Model, e.g. resnet152, timm:resnetv2_50 or package.module:callable (see "
            "`count`); further stage names of --stages.",
        ),
    ],
    no_residual: Annotated[
        bool,
        typer.Option("--no-residual", help="Drop the residual connections: act(main(x))."),
    ] = False,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", help="Scale the shortcuts instead: act(main(x) + ALPHA·x)."),
    ] = None,
    stages: Annotated[
        list[str] | None,
        typer.Option(
            "--stages",
            help="Stages to operate on (conv2_x..conv5_x or layer1..layer4); default all. "
            "Repeat the option or list several values.",
        ),
    ] = None,
    source: SourceOption = Source.torchvision,
    input_size: InputSizeOption = 224,
    json: JsonOption = False,
) -> None:
    """Remove residual connections and compare parameters and FLOPs before and after.

    Counts use a 1000-class head and batch 1 (as the papers quote them); FLOPs are fvcore's
    multiply-adds. The idle projection shortcuts are reported as inactive parameters.

    Example: [bold]resablate surgery --no-residual resnet152 --stages conv4_x conv5_x[/]
    """
    from resablate.errors import ConfigError
    from resablate.surgery import surgery_counts

    if no_residual == (alpha is not None):
        raise ConfigError("pass exactly one of --no-residual or --alpha")
    arch, stage_list = _split_words(words, stages)
    result = surgery_counts(
        arch,
        alpha=0.0 if alpha is None else alpha,
        stages=stage_list,
        source=source.value,
        input_size=(3, input_size, input_size),
    )
    if json:
        show(result, as_json=True)
    else:
        console.out.print(surgery_table(result))


def surgery_table(result: SurgeryCounts) -> Table:
    """The table ``resablate surgery`` prints: per stage, blocks rewired, params, GFLOPs."""
    from rich.table import Table

    from resablate.counting import uncounted_note
    from resablate.model_spec import FACTORY

    data = result.to_dict()
    what = "dropped" if result.alpha == 0.0 else f"scaled by {result.alpha:g}"
    size = "×".join(str(s) for s in result.before.input_size)
    head = "" if result.source == FACTORY else ", 1000-class head"  # a factory has its own
    table = Table(
        title=f"{result.arch} ({result.source}): residual connections {what} in "
        f"{', '.join(result.stages)}; input {size}, batch 1{head}",
        caption=uncounted_note(result.before.uncounted_ops),
    )
    table.add_column("stage")
    for column in ("blocks rewired", "params", "active params", "GFLOPs"):
        table.add_column(column, justify="right")

    def arrow(before: str, after: str) -> str:
        return before if before == after else f"{before} -> {after}"

    def params(before: int, after: int) -> str:
        return arrow(f"{before:,}", f"{after:,}")

    def gflops(before: int, after: int) -> str:
        return arrow(f"{before / 1e9:.3f}", f"{after / 1e9:.3f}")

    for row in data["per_stage"]:
        table.add_row(
            row["stage"],
            str(row["blocks_rewired"]),
            f"{row['params']:,}",
            params(row["active_params_before"], row["active_params_after"]),
            gflops(row["flops_before"], row["flops_after"]),
        )
    table.add_row(
        "total",
        f"{data['blocks_rewired']} / {data['blocks_total']}",
        f"{data['params']:,}",
        params(data["active_params_before"], data["active_params"]),
        gflops(data["flops_before"], data["flops_after"]),
        style="bold",
    )
    return table


def _split_words(words: list[str], stages: list[str] | None) -> tuple[str, list[str] | None]:
    """Tell the architecture from stage names: ``--stages conv4_x conv5_x`` leaves extra words.

    Click options take one value each, so the words after the first stage arrive as positional
    arguments; with ``--stages`` given, every positional word that names a stage is a stage and
    the one left is the architecture. Comma-separated values are accepted too.
    """
    from resablate.errors import ConfigError
    from resablate.families import canonical_stage

    if stages is None:
        if len(words) > 1:
            raise ConfigError(f"unexpected argument(s): {' '.join(words[1:])}")
        return words[0], None

    def is_stage(word: str) -> bool:
        try:
            canonical_stage(word)
        except ConfigError:
            return False
        return True

    chosen = split_values(stages)
    archs = [w for w in words if not is_stage(w)]
    chosen += [w for w in words if is_stage(w)]
    if len(archs) != 1:
        names = " ".join(archs) if archs else "none"
        raise ConfigError(f"name exactly one architecture (found: {names})")
    return archs[0], chosen


def register(app: typer.Typer) -> None:
    """Add ``surgery`` to the application."""
    app.command("surgery")(surgery)
