"""``resablate surgery``: drop (or scale) residual connections and show what changes."""

from __future__ import annotations

from typing import Annotated

import typer

from resablate_cli.options import (
    InputSizeOption,
    JsonOption,
    Source,
    SourceOption,
    show,
    split_values,
)


def surgery(
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="ARCH",
            help="Architecture, e.g. resnet152 (see `count`); further stage names of --stages.",
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
    show(result, as_json=json)


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
