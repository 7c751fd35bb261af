"""``resablate train``: train and evaluate one cell (the same path the grid runs)."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resablate_cli import console
from resablate_cli.options import BnPolicy, Source, SourceOption, split_values

if TYPE_CHECKING:
    from resablate.residual_plan import ResidualPlan

_PROGRESS_FIELDS = "loss {task.fields[loss]}  {task.fields[rate]} img/s  ETA {task.fields[eta]}"


class Device(StrEnum):
    """Where to train."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Amp(StrEnum):
    """Autocast mode: auto = bf16 on CUDA, fp32 on the CPU; an explicit mode applies anywhere."""

    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


def residual_plan(no_residual: bool, stages: list[str] | None, alpha: float) -> ResidualPlan:
    """The cell's residual plan from ``--no-residual``, ``--stages`` and ``--alpha``."""
    from resablate.errors import ConfigError
    from resablate.residual_plan import RESIDUAL_ON, ResidualPlan

    names = split_values(stages)
    if names and not no_residual:
        raise ConfigError("--stages only applies together with --no-residual")
    if not no_residual:
        return ResidualPlan.parse(RESIDUAL_ON, alpha)
    return ResidualPlan.off(names, alpha)


class ProgressRenderer:
    """Turns run events into a rich progress bar (terminal) or plain log lines (otherwise)."""

    def __init__(self, *, plain: bool, summary: bool = True) -> None:
        self.plain = plain
        self.summary = summary
        self.progress: Any = None
        self.task: Any = None
        self.last_line = 0.0

    def __call__(self, event: object) -> None:
        from resablate.engine import Evaluated, StepProgress, TrainFinished, TrainStarted
        from resablate.grid.job import CellPrepared

        if isinstance(event, CellPrepared):
            if self.summary:
                render_prepared(event)
        elif isinstance(event, TrainStarted):
            self.start(event)
        elif isinstance(event, StepProgress):
            self.step(event)
        elif isinstance(event, Evaluated) and event.record.split != "train":
            r = event.record
            self.log(
                f"eval {r.split} @ step {r.step}: loss {r.loss:.4f}  acc {r.accuracy:.4f}  "
                f"f1 {r.f1:.4f}"
            )
        elif isinstance(event, TrainFinished) and self.progress is not None:
            self.progress.stop()
            self.progress = None

    def log(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
        else:
            console.err.print(line, highlight=False, markup=False)

    def start(self, event: Any) -> None:
        for skipped in event.skipped_checkpoints:
            self.log(f"warning: checkpoint skipped: {skipped}")
        resumed = f", resuming at step {event.start_step}" if event.start_step else ""
        where = event.ran_on or f"{event.device} (amp {event.amp})"
        self.log(
            f"training on {where}: {event.total_steps} steps, "
            f"{event.steps_per_epoch} per epoch, {event.images_per_step} images per step{resumed}"
        )
        if self.plain:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]}  {task.fields[rate]} img/s  ETA {task.fields[eta]}"
            ),
            console=console.err,
            transient=False,
        )
        self.task = self.progress.add_task(
            "train",
            total=event.total_steps,
            completed=event.start_step,
            loss="-",
            rate="-",
            eta="-",
        )
        self.progress.start()

    def step(self, event: Any) -> None:
        eta = time.strftime("%H:%M:%S", time.gmtime(event.eta_seconds))
        if self.progress is not None:
            self.progress.update(
                self.task,
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
                f"step {event.step}/{event.total_steps}  epoch {event.epoch:.2f}  "
                f"loss {event.loss:.4f}  lr {event.lr:.3g}  "
                f"{event.images_per_second:,.0f} img/s  ETA {eta}"
            )


def render_prepared(event: Any) -> None:
    """Print the dataset layout found and the model summary."""
    from rich.table import Table

    console.out.print(event.scan)
    counts = event.counts
    console.out.print(f"model: {event.cell.label}", highlight=False, markup=False)
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
    table.add_row("recipe", f"{event.recipe.name} ({event.recipe.image_size} px)")
    console.out.print(table)


def render_result(result: Any) -> None:
    """Print the final metrics table."""
    from rich.table import Table

    table = Table(title="result", show_header=False, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("status", result.status)
    if result.metrics is not None:
        m = result.metrics
        table.add_row("accuracy", f"{m.accuracy:.4f}")
        table.add_row("precision", f"{m.precision:.4f}")
        table.add_row("recall", f"{m.recall:.4f}")
        table.add_row("f1", f"{m.f1:.4f}")
        table.add_row("loss", f"{result.loss:.4f}")
        table.add_row(
            "confusion (rows true)", " / ".join(" ".join(map(str, r)) for r in m.confusion)
        )
        table.add_row("test images", str(m.n))
    else:
        table.add_row("diverged at step", str(result.diverged_at_step))
    table.add_row("steps", f"{result.steps}/{result.total_steps}")
    table.add_row("train time", f"{result.train_seconds:.1f} s")
    table.add_row("throughput", f"{result.images_per_second:,.0f} img/s")
    table.add_row("device", result.device)
    table.add_row("run directory", result.run_dir)
    console.out.print(table)


def train(
    arch: Annotated[str, typer.Option("--arch", help="Architecture, e.g. resnet50.")],
    data: Annotated[
        str, typer.Option("--data", help="Dataset folder, or 'demo' for the embedded demo data.")
    ] = "demo",
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe", help="cifake, food or demo (default: demo for --data demo, else cifake)."
        ),
    ] = None,
    source: SourceOption = Source.torchvision,
    no_residual: Annotated[
        bool, typer.Option("--no-residual", help="Remove the residual connections.")
    ] = False,
    stages: Annotated[
        list[str] | None,
        typer.Option(
            "--stages", help="With --no-residual: only these stages (conv4_x,conv5_x or layer3)."
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option("--alpha", help="With --no-residual: keep alpha × shortcut (0 = drop).")
    ] = 0.0,
    weights: Annotated[
        str, typer.Option("--weights", help="none, imagenet, demo or a state-dict file.")
    ] = "none",
    freeze: Annotated[
        str, typer.Option("--freeze", help="none, conv1, conv1-2, conv1-3, conv1-4 or all.")
    ] = "none",
    bn: Annotated[
        BnPolicy, typer.Option("--bn", help="BatchNorm of frozen stages.")
    ] = BnPolicy.frozen,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of all randomness.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run directory (default: runs/train/<cell id>)."),
    ] = None,
    device: Annotated[Device, typer.Option("--device", help="Where to train.")] = Device.auto,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint.")
    ] = True,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override: epochs.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Override: peak learning rate.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Override: images per micro-batch.")
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option("--grad-accum", help="Override: micro-batches per step.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Override: cap on optimiser steps.")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Override: input side in pixels.")
    ] = None,
    storage_size: Annotated[
        int | None,
        typer.Option(
            "--storage-size",
            help="Override: side in pixels each image is resized to once, when decoded "
            "(needed when the images differ in size).",
        ),
    ] = None,
    amp: Annotated[
        Amp | None,
        typer.Option("--amp", help="Override: autocast dtype (auto: bf16 on CUDA, fp32 on CPU)."),
    ] = None,
    compile_model: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="Override: torch.compile.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train and evaluate one model: surgery, freezing, recipe, metrics.

    Example: [bold]resablate train --arch resnet18 --data demo --recipe demo[/]
    """
    from resablate.grid.cell import Cell
    from resablate.grid.job import run_cell
    from resablate.weights_choice import WeightsChoice

    overrides = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "max_steps": max_steps,
        "image_size": image_size,
        "storage_size": storage_size,
        "amp": amp.value if amp is not None else None,
        "compile": compile_model,
    }
    cell = Cell(
        arch=arch,
        source=source.value,
        residual=residual_plan(no_residual, stages, alpha),
        weights=WeightsChoice.parse(weights),
        freeze=freeze,
        bn=bn.value,
        recipe=recipe or ("demo" if data == "demo" else "cifake"),
        overrides=tuple((k, v) for k, v in overrides.items() if v is not None),
        seed=seed,
        data=data,
    )
    run_dir = out if out is not None else Path("runs") / "train" / cell.cell_id
    renderer = ProgressRenderer(plain=as_json or not console.err.is_terminal, summary=not as_json)
    result = run_cell(cell, run_dir, device=device.value, callback=renderer, resume=resume)
    if as_json:
        console.print_json(result.to_dict())
    else:
        render_result(result)


def register(app: typer.Typer) -> None:
    """Add ``resablate train`` to the application."""
    app.command("train")(train)
