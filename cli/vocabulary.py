"""How ``train`` and ``grid`` read their command line: several values after one flag, and the
spellings of earlier releases.

An axis flag takes several values after it (``--depths 18 50 101``), as the studies write them;
repeating the flag (``--depths 18 --depths 50``) and commas (``--depths 18,50``) work too. The old
spellings (``--pretrained``, ``--seed``, ``--alpha``, ``--no-residual [--stages S]``) keep working
for one release: each is rewritten to the flag it is now, with a one-line warning on stderr.
"""

from __future__ import annotations

from collections.abc import Iterator

import click
from typer.core import TyperCommand

from resablate.errors import ConfigError
from resablate_cli import console

# Flags that take several values after them.
MULTI_VALUE_OPTIONS = (
    "--arch",
    "--depths",
    "--residual",
    "--residual-alpha",
    "--weights",
    "--freeze",
    "--seeds",
    "--baselines",
)
# Flags whose value may be left out -> the value they then take (``--print-spec`` = stdout).
OPTIONAL_VALUE_OPTIONS = {"--print-spec": "-"}
# Old spelling -> the flag it is now, with the same values.
RENAMED = {"--pretrained": "--weights", "--seed": "--seeds", "--alpha": "--residual-alpha"}
NO_RESIDUAL, STAGES = "--no-residual", "--stages"


def deprecated(old: str, new: str) -> None:
    """Tell the user, in one line on stderr, that ``old`` is spelled ``new`` now."""
    console.err.print(
        f"warning: {old} is deprecated; use {new} (the old spelling goes in the next release)",
        highlight=False,
        markup=False,
    )


def _is_option(arg: str) -> bool:
    if not arg.startswith("-"):
        return False
    try:
        float(arg)
    except ValueError:
        return True
    return False


def _options(args: list[str]) -> Iterator[tuple[str, str | None, list[str]]]:
    """Each option as ``(name, inline value, following values)``; other words as ``("", None,
    [word])``; everything from ``--`` on as one group."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            yield "", None, args[i:]
            return
        if not _is_option(arg):
            yield "", None, [arg]
            i += 1
            continue
        name, sep, inline = arg.partition("=")
        j = i + 1
        while j < len(args) and not _is_option(args[j]) and args[j] != "--":
            j += 1
        yield name, inline if sep else None, args[i + 1 : j]
        i = j


def _flag(name: str, inline: str | None) -> list[str]:
    """An option as it was written (``--name`` or ``--name=value``); nothing for plain words."""
    if not name:
        return []
    return [name if inline is None else f"{name}={inline}"]


def renew_spellings(args: list[str]) -> list[str]:
    """Rewrite the old spellings as the flags they are now, warning once per old flag.

    ``--no-residual`` becomes ``--residual off``; with ``--stages S`` (repeated or
    comma-separated) ``--residual off:S``.

    Raises:
        ConfigError: ``--stages`` without ``--no-residual``.
    """
    result: list[str] = []
    warned: set[str] = set()
    no_residual = False
    stages: list[str] = []
    for name, inline, values in _options(args):
        if name == NO_RESIDUAL:
            no_residual = True
            result.extend(values)
            continue
        if name == STAGES:
            stages.extend(([inline] if inline is not None else []) + values)
            continue
        if name in RENAMED:
            if name not in warned:
                warned.add(name)
                deprecated(name, RENAMED[name])
            name = RENAMED[name]
        result.extend(_flag(name, inline) + values)
    if stages and not no_residual:
        raise ConfigError(
            f"{STAGES} only applies together with {NO_RESIDUAL}; both are deprecated: use "
            "--residual off:STAGES"
        )
    if no_residual:
        plan = "off:" + ",".join(stages) if stages else "off"
        old = f"{NO_RESIDUAL} {STAGES} {','.join(stages)}" if stages else NO_RESIDUAL
        deprecated(old, f"--residual {plan}")
        result[:0] = ["--residual", plan]
    return result


def expand_multi_values(
    args: list[str], options: tuple[str, ...] = MULTI_VALUE_OPTIONS
) -> list[str]:
    """Rewrite ``--opt a b`` as ``--opt a --opt b`` (and ``--opt a,b`` likewise)."""
    from resablate.residual_plan import split_plans

    result: list[str] = []
    for name, inline, values in _options(args):
        if name not in options:
            result.extend(_flag(name, inline) + values)
            continue
        for text in ([inline] if inline is not None else []) + values:
            result.extend(item for part in split_plans(text) for item in (name, part))
    return result


def fill_optional_values(
    args: list[str], options: dict[str, str] = OPTIONAL_VALUE_OPTIONS
) -> list[str]:
    """Give a flag of ``options`` written without a value its implied one (``--print-spec``
    before another flag or at the end reads ``--print-spec -``)."""
    result: list[str] = []
    for name, inline, values in _options(args):
        implied = [options[name]] if name in options and inline is None and not values else []
        result.extend(_flag(name, inline) + implied + values)
    return result


class AxisCommand(TyperCommand):
    """A command whose axis options take several values after one flag, whose optional-value
    flags may go without one, and that reads the old spellings (``train`` and ``grid``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        renewed = fill_optional_values(renew_spellings(list(args)))
        return super().parse_args(ctx, expand_multi_values(renewed))
