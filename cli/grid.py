"""``resablate grid``: run an ablation grid (resumable), or dry-run it."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand

from resablate_cli import console
from resablate_cli.errors import EXIT_CELLS_NOT_DONE, EXIT_CODES_HELP
from resablate_cli.options import BnPolicy, Metric, Source, folder, show

# Axis options take several values after one flag (``--depths 18 50 101``), as the studies write
# them; repeating the flag (``--depths 18 --depths 50``) and commas (``--depths 18,50``) work too.
MULTI_VALUE_OPTIONS = (
    "--depths",
    "--residual",
    "--residual-alpha",
    "--pretrained",
    "--freeze",
    "--seeds",
    "--baselines",
)

EXAMPLES = (
    """
Examples:

  resablate grid --depths 18 50 --data demo --out runs/demo

  resablate grid --depths 18 50 101 152 --residual on off --pretrained imagenet none \\
      --data ~/data/cifake --recipe cifake --out runs/cifake

  resablate grid --depths 50 --residual on off:conv5_x --residual-alpha 1 0.5 0 --seeds 0 1 2

  resablate grid --depths 18 --freeze none conv1 conv1-2 conv1-3 conv1-4 all --recipe food

  resablate grid --baselines vgg16 efficientnet_b3 --dry-run

  resablate grid --depths 18 50 --data demo --log-gradflow --gradflow-every 5 --out runs/demo

Axes (the grid is their product; baselines skip the residual axis):

  --depths 18 34 50 101 152 · --residual on | off | off:conv4_x,conv5_x · --residual-alpha 1 0.5 0
  · --pretrained imagenet | demo | none | PATH · --freeze none conv1 conv1-2 conv1-3 conv1-4 all
  · --seeds 0 1 2 · --baselines vgg16 efficientnet_b3 efficientnet_b4 alexnet

Rerunning the same command with the same --out resumes: done cells are kept, interrupted ones
continue from their last checkpoint, failed ones rerun with --retry-failed.

"""
    + EXIT_CODES_HELP
)


def expand_multi_values(
    args: list[str], options: tuple[str, ...] = MULTI_VALUE_OPTIONS
) -> list[str]:
    """Rewrite ``--opt a b`` as ``--opt a --opt b`` (and ``--opt a,b`` likewise)."""
    result: list[str] = []
    current: str | None = None
    for arg in args:
        if arg == "--":
            current = None
            result.append(arg)
        elif arg.startswith("-") and not _is_number(arg):
            name, sep, value = arg.partition("=")
            current = name if name in options else None
            if current is not None and sep:
                result.extend(_values(current, value))
            elif current is None:
                result.append(arg)
        elif current is not None:
            result.extend(_values(current, arg))
        else:
            result.append(arg)
    return result


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _values(option: str, text: str) -> list[str]:
    from resablate.residual_plan import split_plans

    return [item for part in split_plans(text) for item in (option, part)]


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "amp=none"]`` → ``{"lr": 0.01, "amp": "none"}`` (values read as JSON if they
    parse, else kept as text)."""
    result: dict[str, Any] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not FIELD=VALUE", param_hint="--set")
        try:
            result[name.strip()] = json.loads(text)
        except ValueError:
            result[name.strip()] = text
    return result


class GridCommand(TyperCommand):
    """A command whose axis options accept several values after one flag."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_values(list(args)))


class Executor(StrEnum):
    """Where the cells run."""

    local = "local"
    ray = "ray"


_STATUS_STYLE = {
    "pending": "dim",
    "running": "bold cyan",
    "done": "green",
    "failed": "bold red",
    "diverged": "magenta",
    "skipped": "yellow",
}


class GridView:
    """Draws grid events: a live table on a terminal, one line per change otherwise."""

    def __init__(self, *, live: bool, metric: str) -> None:
        self.live_enabled = live
        self.metric = metric
        self.rows: dict[str, dict[str, str]] = {}
        self.live: Any = None
        self.last_progress = 0.0

    def __call__(self, event: object) -> None:
        from resablate.engine import StepProgress, TrainStarted
        from resablate.grid.events import CellFinished, CellProgress, CellStarted, GridStarted

        if isinstance(event, GridStarted):
            self.started(event)
        elif isinstance(event, CellStarted):
            self.update(event.cell_id, status="running", progress="starting", where=event.device)
            self.line(f"start    {event.cell_id} {event.label} on {event.device}")
        elif isinstance(event, CellProgress) and isinstance(
            event.event, TrainStarted | StepProgress
        ):
            step = getattr(event.event, "step", getattr(event.event, "start_step", 0))
            total = event.event.total_steps
            self.update(event.cell_id, progress=f"{step}/{total}")
            if isinstance(event.event, TrainStarted):
                for skipped in event.event.skipped_checkpoints:  # shown above a live table too
                    console.err.print(
                        f"warning: {event.cell_id} checkpoint skipped: {skipped}",
                        highlight=False,
                        markup=False,
                    )
                if event.event.start_step:
                    self.line(
                        f"resume   {event.cell_id} at step {step}/{total} from its checkpoint"
                    )
            now = time.monotonic()
            if not self.live_enabled and now - self.last_progress >= 10.0:
                self.last_progress = now
                self.line(f"progress {event.cell_id} step {step}/{total}")
        elif isinstance(event, CellFinished):
            row = event.row
            value = getattr(row, self.metric)
            shown = "" if value is None else f"{value:.4f}"
            self.update(event.cell_id, status=row.status, progress="", value=shown)
            why = f": {row.reason}" if row.reason else ""
            metric = f" {self.metric} {shown}" if shown else ""
            self.line(
                f"{row.status:<8} {event.cell_id} {self.rows[event.cell_id]['label']}{metric}{why}"
            )

    def started(self, event: Any) -> None:
        from resablate.grid.cell import Cell

        for note in event.notes:
            console.err.print(f"note: {note}", highlight=False, markup=False)
        for row in event.cells:
            value = getattr(row, self.metric)
            self.rows[row.cell_id] = {
                "label": Cell.from_dict(row.config).label,
                "status": row.status,
                "progress": "",
                "value": "" if value is None else f"{value:.4f}",
                "where": row.device or "",
            }
        finished = len(event.cells) - len(event.to_run)
        console.err.print(
            f"{len(event.cells)} cells in {event.out_dir}: {len(event.to_run)} to run, "
            f"{finished} already finished",
            highlight=False,
            markup=False,
        )
        if self.live_enabled and event.to_run:
            from rich.live import Live

            self.live = Live(self.table(), console=console.err, auto_refresh=False, transient=True)
            self.live.start()

    def update(self, cell_id: str, **values: str) -> None:
        self.rows[cell_id].update(values)
        if self.live is not None:
            self.live.update(self.table(), refresh=True)

    def line(self, text: str) -> None:
        if self.live is None:
            console.err.print(text, highlight=False, markup=False)

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="grid", title_justify="left")
        for name in ("id", "cell", "status", "progress", self.metric):
            table.add_column(name, justify="right" if name in ("progress", self.metric) else "left")
        for cell_id, row in self.rows.items():
            style = _STATUS_STYLE.get(row["status"], "")
            status = f"[{style}]{row['status']}[/]"
            table.add_row(cell_id, row["label"], status, row["progress"], row["value"])
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def grid(
    ctx: typer.Context,
    depths: Annotated[
        list[int] | None,
        typer.Option(
            "--depths", help="ResNet depths: 18 34 50 101 152. \\[default: 18 50 101 152]"
        ),
    ] = None,
    residual: Annotated[
        list[str] | None,
        typer.Option(
            "--residual",
            help="Residual plans: on, off, or stage sets like off:conv4_x,conv5_x. "
            "\\[default: on off]",
        ),
    ] = None,
    residual_alpha: Annotated[
        list[float] | None,
        typer.Option(
            "--residual-alpha",
            help="Shortcut scales for the plans that alter stages (1 = on, 0 = off), e.g. 1 0.5 0.",
        ),
    ] = None,
    pretrained: Annotated[
        list[str] | None,
        typer.Option(
            "--pretrained",
            help="Weights: imagenet, demo, none or a .pth/.safetensors path. \\[default: imagenet "
            "none; on demo data imagenet means the demo weights]",
        ),
    ] = None,
    freeze: Annotated[
        list[str] | None,
        typer.Option(
            "--freeze",
            help="Freeze plans: none conv1 conv1-2 conv1-3 conv1-4 all. \\[default: none]",
        ),
    ] = None,
    seeds: Annotated[
        list[int] | None, typer.Option("--seeds", help="Seeds, e.g. 0 1 2. \\[default: 0]")
    ] = None,
    baselines: Annotated[
        list[str] | None,
        typer.Option(
            "--baselines",
            help="Other architectures without the residual axis, e.g. vgg16 efficientnet_b3.",
        ),
    ] = None,
    arch: Annotated[str, typer.Option(help="Residual family the depths belong to.")] = "resnet",
    source: Annotated[
        Source, typer.Option(help="Where the models come from.")
    ] = Source.torchvision,
    data: Annotated[
        str, typer.Option(help="Dataset folder, or 'demo' for the embedded demo data (offline).")
    ] = "demo",
    recipe: Annotated[
        str | None,
        typer.Option(
            help="Recipe: cifake, food, demo. \\[default: demo on demo data, else cifake]"
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cap on optimiser steps per cell.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input side in pixels.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per micro-batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any other recipe field as FIELD=VALUE, e.g. --set checkpoint_every=50 "
            "(repeatable).",
        ),
    ] = None,
    bn: Annotated[BnPolicy, typer.Option(help="BatchNorm of frozen stages.")] = BnPolicy.frozen,
    out: Annotated[
        Path,
        typer.Option(parser=folder, help="Run directory: store, results.csv, one folder per cell."),
    ] = Path("runs/grid"),
    executor: Annotated[Executor, typer.Option(help="Where cells run.")] = Executor.local,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (executor ray); else a local Ray.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Local worker processes (default: one per visible GPU) or local Ray CPUs."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Device for local runs: cpu, cuda, cuda:N. \\[default: auto]")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed cells again.")
    ] = False,
    pack: Annotated[
        str,
        typer.Option(
            help="Train cells that share architecture, recipe, freeze plan and data as one packed "
            "model: auto (K chosen for the device: packs on a GPU, none on a CPU), off, or K. "
            "Same results up to float re-association; cell ids do not change.",
        ),
    ] = "auto",
    log_gradflow: Annotated[
        bool,
        typer.Option(
            "--log-gradflow",
            help="Log per-stage gradient norms to each cell's gradflow.jsonl (the report plots "
            "them); does not change cell ids.",
        ),
    ] = False,
    gradflow_every: Annotated[
        int,
        typer.Option(min=1, help="With --log-gradflow: record every N optimiser steps."),
    ] = 10,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the cells with their status, params, FLOPs and a time estimate; "
            "train and write nothing.",
        ),
    ] = False,
    metric: Annotated[Metric, typer.Option(help="Metric of the results table.")] = Metric.f1,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Run an ablation grid: depth × residual × pretrained × freeze × seed (resumable).

    Every cell is stored in OUT/store.sqlite before the first one trains; results.csv mirrors
    the store after every finished cell. A second process on the same --out is refused.
    """
    from resablate.grid.spec import OVERRIDE_FIELDS, GridSpec

    overrides = parse_settings(settings or [])
    overrides |= {
        name: ctx.params[name] for name in OVERRIDE_FIELDS if ctx.params[name] is not None
    }
    defaults = GridSpec.__dataclass_fields__
    axes: dict[str, Any] = {
        "depths": depths,
        "residual": residual,
        "weights": pretrained,
        "freeze": freeze,
        "seeds": seeds,
        "baselines": baselines,
    }
    spec = GridSpec(
        family=arch,
        source=source.value,
        residual_alpha=tuple(residual_alpha) if residual_alpha else None,
        recipe=recipe,
        data=data,
        overrides=tuple(overrides.items()),
        bn=bn.value,
        **{name: tuple(v) if v else defaults[name].default for name, v in axes.items()},
    )
    if dry_run:
        from resablate.grid.plan import plan_grid

        console.err.print("probing: a few training steps of each distinct model…", highlight=False)
        plan = plan_grid(spec, out, device=device, pack=pack, workers=workers)
        show(plan, as_json=json_output)
        return

    from resablate.diagnostics.gradflow import GradNormLogging
    from resablate.grid.runner import run_grid

    view = GridView(live=console.err.is_terminal and not json_output, metric=metric.value)
    try:
        summary = run_grid(
            spec,
            out,
            executor=executor.value,
            retry_failed=retry_failed,
            metric=metric.value,
            callback=view,
            device=device,
            workers=workers,
            ray_address=ray_address,
            step_hooks=[GradNormLogging(every=gradflow_every)] if log_gradflow else [],
            pack=pack,
        )
    except KeyboardInterrupt:
        view.close()
        console.err.print(
            f"the store in {out} is saved; rerun the same command to resume",
            highlight=False,
            markup=False,
        )
        raise  # the root group says "interrupted" and exits with 130
    finally:
        view.close()
    show(summary, as_json=json_output)
    if summary.not_done:
        raise typer.Exit(EXIT_CELLS_NOT_DONE)


def register(app: typer.Typer) -> None:
    """Add ``grid`` to the application."""
    app.command("grid", cls=GridCommand, epilog=EXAMPLES, no_args_is_help=False)(grid)
