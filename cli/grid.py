"""``resablate grid``: run an ablation grid (resumable), or dry-run it."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from resablate.choices import CellStatus
from resablate_cli import console
from resablate_cli.cells import (
    AmpOption,
    BatchSizeOption,
    BnOption,
    CompileOption,
    DataOption,
    DeviceOption,
    EpochsOption,
    FreezeOption,
    GradAccumOption,
    GridArchOption,
    GridResidualOption,
    GridWeightsOption,
    ImageSizeOption,
    JsonOption,
    LrOption,
    MaxStepsOption,
    RecipeOption,
    ResidualAlphaOption,
    SeedsOption,
    SettingsOption,
    StorageSizeOption,
    cell_spec,
    device_of,
)
from resablate_cli.options import BnPolicy, Metric, Source, SourceOption, show
from resablate_cli.vocabulary import AxisCommand, deprecated

EXAMPLES = """
Examples:

  resablate grid --depths 18 50 --data demo --out runs/demo

  resablate grid --family cifar_resnet --depths 20 32 44 56 --residual on off --weights none \\
      --seeds 0 1 2 --recipe cifar_demo --data demo --pack 6 --out runs/demo

  resablate grid --depths 18 50 101 152 --residual on off --weights imagenet none \\
      --data ~/data/cifake --recipe cifake --out runs/cifake

  resablate grid --arch resnet18 --arch resnet50 --residual on off:conv5_x \\
      --residual-alpha 1 0.5 0 --seeds 0 1 2

  resablate grid --depths 18 --freeze none conv1 conv1-2 conv1-3 conv1-4 all --recipe food

  resablate grid --baselines vgg16 efficientnet_b3 --dry-run

  resablate grid --depths 18 50 --data demo --log-gradflow --gradflow-every 5 --out runs/demo

Axes (the grid is their product; baselines skip the residual axis):

  --depths 18 34 50 101 152 (of --family resnet; 20 32 44 56 of --family cifar_resnet)
  · --arch resnet18 resnext50_32x4d ...
  · --residual on | off | off:conv4_x,conv5_x · --residual-alpha 1 0.5 0
  · --weights imagenet | demo | none | PATH · --freeze none conv1 conv1-2 conv1-3 conv1-4 all
  · --seeds 0 1 2 · --baselines vgg16 efficientnet_b3 efficientnet_b4 alexnet

The same cell options as resablate train; recipe fields: the named flags or --set FIELD=VALUE.
Rerunning the same command with the same --out resumes: done cells are kept, interrupted ones
continue from their last checkpoint, failed ones rerun with --retry-failed.
"""


def split_families(archs: list[str], source: str) -> tuple[str | None, list[str]]:
    """``--arch`` values as (the family among them, the architectures): ``--arch resnet`` named
    the family in earlier releases (``--family`` now; a deprecation warning says so)."""
    from resablate.families import RESNET_DEPTHS, list_architectures

    known = set(list_architectures(source))
    families = [
        a
        for a in archs
        if a.lower() not in known and any(f"{a.lower()}{d}" in known for d in RESNET_DEPTHS)
    ]
    if not families:
        return None, archs
    family = families[0]
    deprecated(f"--arch {family} (a family)", f"--family {family}")
    return family, [a for a in archs if a != family]


class Executor(StrEnum):
    """Where the cells run."""

    local = "local"
    ray = "ray"


_STATUS_STYLE = {
    CellStatus.PENDING: "dim",
    CellStatus.RUNNING: "bold cyan",
    CellStatus.DONE: "green",
    CellStatus.FAILED: "bold red",
    CellStatus.DIVERGED: "magenta",
    CellStatus.SKIPPED: "yellow",
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
            if isinstance(event.event, TrainStarted) and event.event.start_step:
                self.line(f"resume   {event.cell_id} at step {step}/{total} from its checkpoint")
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
        for note in event.notes:
            console.err.print(f"note: {note}", highlight=False, markup=False)
        for row in event.cells:
            value = getattr(row, self.metric)
            self.rows[row.cell_id] = {
                "label": row.cell.label,
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
            "--depths",
            help="Depths of the family: 18 34 50 101 152 (resnet), 20 32 44 56 "
            "(cifar_resnet). \\[default: 18 50 101 152 unless --arch names the architectures]",
        ),
    ] = None,
    family: Annotated[
        str,
        typer.Option(
            "--family",
            help="Residual family the depths belong to: resnet, or cifar_resnet (He et al. "
            "2016's CIFAR ResNets, three stages).",
        ),
    ] = "resnet",
    arch: GridArchOption = None,
    residual: GridResidualOption = None,
    residual_alpha: ResidualAlphaOption = None,
    weights: GridWeightsOption = None,
    freeze: FreezeOption = None,
    seeds: SeedsOption = None,
    baselines: Annotated[
        list[str] | None,
        typer.Option(
            "--baselines",
            help="Other architectures without the residual axis, e.g. vgg16 efficientnet_b3.",
        ),
    ] = None,
    source: SourceOption = Source.torchvision,
    data: DataOption = "demo",
    recipe: RecipeOption = None,
    settings: SettingsOption = None,
    epochs: EpochsOption = None,
    lr: LrOption = None,
    batch_size: BatchSizeOption = None,
    grad_accum: GradAccumOption = None,
    max_steps: MaxStepsOption = None,
    image_size: ImageSizeOption = None,
    storage_size: StorageSizeOption = None,
    amp: AmpOption = None,
    compile_model: CompileOption = None,
    bn: BnOption = BnPolicy.frozen,
    out: Annotated[
        Path, typer.Option(help="Run directory: store, results.csv, one folder per cell.")
    ] = Path("runs/grid"),
    device: DeviceOption = "auto",
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
            help="Store the cells and print them with params, FLOPs and a time estimate; "
            "train nothing.",
        ),
    ] = False,
    metric: Annotated[Metric, typer.Option(help="Metric of the results table.")] = Metric.f1,
    json_output: JsonOption = False,
) -> None:
    """Run an ablation grid: architecture × residual × weights × freeze × seed (resumable).

    Every cell is stored in OUT/store.sqlite before the first one trains; results.csv mirrors
    the store after every finished cell. A second process on the same --out is refused.
    """
    from resablate.grid.spec import GridSpec

    named_family, archs = split_families(arch or [], source.value)
    spec = cell_spec(
        ctx.params,
        family=named_family or family,
        depths=tuple(depths or (() if archs else GridSpec.depths)),
        archs=tuple(archs),
        baselines=tuple(baselines or ()),
    )
    if dry_run:
        from resablate.grid.plan import plan_grid

        console.err.print("probing: a few training steps of each distinct model…", highlight=False)
        plan = plan_grid(spec, out, device=device_of(ctx.params))
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
            device=device_of(ctx.params),
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


def register(app: typer.Typer) -> None:
    """Add ``grid`` to the application."""
    app.command("grid", cls=AxisCommand, epilog=EXAMPLES, no_args_is_help=False)(grid)
