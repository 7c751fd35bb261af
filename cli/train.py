"""``resablate train``: train and evaluate one cell (the same path the grid runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

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
    ImageSizeOption,
    JsonOption,
    KeepCheckpointsOption,
    LrOption,
    MaxStepsOption,
    QuietOption,
    RecipeOption,
    ResidualAlphaOption,
    SeedsOption,
    SettingsOption,
    StorageSizeOption,
    TrackOption,
    TrainArchOption,
    TrainOutOption,
    TrainResidualOption,
    TrainWeightsOption,
    cell_spec,
    device_of,
    grid_tracking,
)
from resablate_cli.errors import EXIT_CELLS_NOT_DONE
from resablate_cli.options import BnPolicy, Source, SourceOption
from resablate_cli.vocabulary import AxisCommand

if TYPE_CHECKING:
    from resablate.grid.spec import GridSpec
    from resablate.grid.store import CellRow

# A cell trained by ``train`` alone: one value on every axis.
TRAIN_DEFAULTS = {"residual": ("on",), "weights": ("none",)}
RESUME_RETIRED = (
    "warning: {flag} is deprecated and has no effect: train resumes as grid does (finished "
    "cells are kept, interrupted ones continue from their last checkpoint); to start over, "
    "give a new --out"
)


class TrainView:
    """Draws a grid's events as ``train`` shows them: each cell's model summary, then a rich
    progress bar per cell (terminal) or plain log lines (otherwise)."""

    def __init__(self, *, plain: bool, summary: bool = True, quiet: bool = False) -> None:
        self.plain = plain or quiet
        self.summary = summary and not quiet
        self.quiet = quiet
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        self.several = False
        self.last_line = 0.0
        self.begun = time.monotonic()

    def __call__(self, event: object) -> None:
        from resablate.engine import Evaluated, StepProgress, TrainFinished, TrainStarted
        from resablate.grid.events import (
            CellProgress,
            DemoWeightsPretraining,
            DemoWeightsReady,
            GridStarted,
        )
        from resablate.grid.job import CellPrepared

        if isinstance(event, GridStarted):
            self.started(event)
            return
        if not isinstance(event, CellProgress):
            return
        cell_id, inner = event.cell_id, event.event
        if isinstance(inner, DemoWeightsPretraining):
            self.log(
                cell_id,
                f"pre-training the demo weights of {inner.arch} on the proxy task (once per "
                "architecture, on the CPU; cached for every later run)",
            )
        elif isinstance(inner, DemoWeightsReady):
            self.log(cell_id, f"demo weights ready in {inner.seconds:.0f} s: {inner.path}")
        elif isinstance(inner, CellPrepared):
            if self.summary:
                render_prepared(inner)
        elif isinstance(inner, TrainStarted):
            self.start(cell_id, inner)
        elif isinstance(inner, StepProgress):
            self.step(cell_id, inner)
        elif isinstance(inner, Evaluated) and inner.record.split != "train":
            r = inner.record
            self.log(
                cell_id,
                f"eval {r.split} @ step {r.step}: loss {r.loss:.4f}  acc {r.accuracy:.4f}  "
                f"f1 {r.f1:.4f}",
            )
        elif isinstance(inner, TrainFinished):
            self.tasks.pop(cell_id, None)
            if not self.tasks:
                self.close()

    def started(self, event: Any) -> None:
        if self.quiet:
            return
        for note in event.notes:
            console.err.print(f"note: {note}", highlight=False, markup=False)
        self.several = len(event.to_run) > 1
        finished = len(event.cells) - len(event.to_run)
        if finished:
            console.err.print(
                f"{finished} of {len(event.cells)} cells already finished in {event.out_dir}: "
                "kept (give a new --out to train them again)",
                highlight=False,
                markup=False,
            )

    def log(self, cell_id: str, line: str) -> None:
        if self.quiet:
            return
        text = f"{cell_id} {line}" if self.several else line
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, markup=False)
        else:
            console.err.print(text, highlight=False, markup=False)

    def start(self, cell_id: str, event: Any) -> None:
        for skipped in event.skipped_checkpoints:
            self.log(cell_id, f"warning: checkpoint skipped: {skipped}")
        resumed = f", resuming at step {event.start_step}" if event.start_step else ""
        where = event.ran_on or f"{event.device} (amp {event.amp})"
        self.log(
            cell_id,
            f"training on {where}: {event.total_steps} steps, "
            f"{event.steps_per_epoch} per epoch, {event.images_per_step} images per step{resumed}",
        )
        if self.plain:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[rate]} img/s  elapsed"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=console.err,
                transient=False,
            )
            self.progress.start()
        self.tasks[cell_id] = self.progress.add_task(
            cell_id if self.several else "train",
            total=event.total_steps,
            completed=event.start_step,
            loss="-",
            rate="-",
            eta="-",
        )

    def step(self, cell_id: str, event: Any) -> None:
        eta = time.strftime("%H:%M:%S", time.gmtime(event.eta_seconds))
        if cell_id in self.tasks:
            self.progress.update(
                self.tasks[cell_id],
                completed=event.step,
                loss=f"{event.loss:.4f}",
                rate=f"{event.images_per_second:,.0f}",
                eta=eta,
            )
            return
        now = time.monotonic()
        if now - self.last_line >= 5.0 or event.step == event.total_steps:
            self.last_line = now
            self.log(
                cell_id,
                f"step {event.step}/{event.total_steps}  epoch {event.epoch:.2f}  "
                f"loss {event.loss:.4f}  lr {event.lr:.3g}  "
                f"{event.images_per_second:,.0f} img/s  elapsed "
                f"{time.strftime('%H:%M:%S', time.gmtime(now - self.begun))}  ETA {eta}",
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def render_prepared(event: Any) -> None:
    """Print the dataset layout found, the cell and its model summary (counts, surgery,
    freezing)."""
    from rich.table import Table

    console.out.print(event.scan)
    counts, frozen = event.counts, event.freeze
    console.out.print(
        f"cell {event.cell.cell_id}: {event.cell.label}", highlight=False, markup=False
    )
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{counts.params:,}")
    table.add_row("trainable parameters", f"{counts.trainable_params:,}")
    table.add_row("active parameters", f"{counts.active_params:,}")
    size = "×".join(str(v) for v in counts.input_size[1:])
    table.add_row(f"FLOPs at {size} (multiply-adds)", f"{counts.gflops:.3f} G")
    if event.surgery is not None:
        table.add_row("residual blocks rewired", str(len(event.surgery.blocks_rewired)))
    if frozen.frozen_stages:
        held = f", BatchNorm {frozen.bn}"
        table.add_row("frozen stages", ", ".join(frozen.frozen_stages) + held)
    table.add_row("recipe", f"{event.recipe.name} ({event.recipe.image_size} px)")
    console.out.print(table)


def render_result(row: CellRow) -> None:
    """Print a cell's final metrics (its ``result.json``; the stored row for a cell without
    one)."""
    from rich.table import Table

    from resablate.run_dir import RunDir

    result = RunDir(row.run_dir).read_result() if row.run_dir else None
    label = row.cell.label
    table = Table(title=f"result: {label}", show_header=False, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("status", row.status)
    if result is None:
        table.add_row("why", row.reason or "-")
    elif result["metrics"] is not None:
        m = result["metrics"]
        for name in ("accuracy", "precision", "recall", "f1"):
            table.add_row(name, f"{m[name]:.4f}")
        table.add_row("loss", f"{result['loss']:.4f}")
        table.add_row(
            "confusion (rows true)", " / ".join(" ".join(map(str, r)) for r in m["confusion"])
        )
        table.add_row("test images", str(m["n"]))
    else:
        table.add_row("diverged at step", str(result["diverged_at_step"]))
    if result is not None:
        table.add_row("steps", f"{result['steps']}/{result['total_steps']}")
        table.add_row("train time", f"{result['train_seconds']:.1f} s")
        table.add_row("throughput", f"{result['images_per_second']:,.0f} img/s")
        table.add_row("device", result["device"])
    table.add_row("cell directory", row.run_dir or "-")
    console.out.print(table)


def output_folder(spec: GridSpec) -> Path:
    """``runs/train/<id>``: the cell's id for one cell, else a hash of the cells' ids."""
    import hashlib

    from resablate.grid.cell import CELL_ID_LENGTH

    ids = sorted(cell.cell_id for cell in spec.cells())
    name = ids[0] if len(ids) == 1 else hashlib.sha256(",".join(ids).encode()).hexdigest()
    return Path("runs") / "train" / name[:CELL_ID_LENGTH]


def train(
    ctx: typer.Context,
    arch: TrainArchOption,
    residual: TrainResidualOption = None,
    residual_alpha: ResidualAlphaOption = None,
    weights: TrainWeightsOption = None,
    freeze: FreezeOption = None,
    seeds: SeedsOption = None,
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
    out: TrainOutOption = None,
    device: DeviceOption = "auto",
    resume: Annotated[bool | None, typer.Option("--resume/--no-resume", hidden=True)] = None,
    as_json: JsonOption = False,
    keep_checkpoints: KeepCheckpointsOption = False,
    track: TrackOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train and evaluate one cell (or a few: several values of an axis): surgery, freezing,
    recipe, metrics.

    A one-cell grid: the same options, the same path and the same output directory as
    [bold]resablate grid[/] (OUT/store.sqlite, results.csv, OUT/cells/<cell id>/); a rerun
    resumes.

    Example: [bold]resablate train --arch resnet18 --data demo --recipe demo[/]
    """
    from resablate.grid.events import fan_out
    from resablate.grid.runner import run_grid

    if resume is not None:
        flag = "--resume" if resume else "--no-resume"
        console.err.print(RESUME_RETIRED.format(flag=flag), highlight=False, markup=False)
    spec = cell_spec(ctx.params, TRAIN_DEFAULTS, depths=(), archs=tuple(arch))
    folder = out if out is not None else output_folder(spec)
    tracking = grid_tracking(ctx.params)
    view = TrainView(plain=as_json or not console.err.is_terminal, summary=not as_json, quiet=quiet)
    try:
        summary = run_grid(
            spec,
            folder,
            device=device_of(ctx.params),
            callback=fan_out(view, tracking),
            keep_checkpoints=keep_checkpoints,
        )
    finally:
        view.close()
        tracking.close()
    summary = summary.with_warnings(*tracking.problems)
    if as_json:
        console.print_json(summary.to_dict())
    elif not quiet:
        for row in summary.cells:
            if row.status in ("done", "diverged"):
                render_result(row)
        console.out.print(f"grid directory: {summary.out_dir}", highlight=False, markup=False)
        for line in summary.warnings:
            console.err.print(f"warning: {line}", highlight=False, markup=False)
    problems = [row for row in summary.cells if row.status in ("failed", "skipped")]
    for row in problems:
        console.err.print(
            f"error: cell {row.cell_id} {row.status}: {row.reason}", highlight=False, markup=False
        )
    if summary.not_done:
        raise typer.Exit(EXIT_CELLS_NOT_DONE)


def register(app: typer.Typer) -> None:
    """Add ``resablate train`` to the application."""
    app.command("train", cls=AxisCommand)(train)
