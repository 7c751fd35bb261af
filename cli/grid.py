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
    GridOutOption,
    GridResidualOption,
    GridWeightsOption,
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
    grid_tracking,
)
from resablate_cli.errors import EXIT_CELLS_NOT_DONE, EXIT_CODES_HELP
from resablate_cli.options import BnPolicy, Metric, Source, SourceOption, show
from resablate_cli.study import grid_study, print_study
from resablate_cli.vocabulary import AxisCommand, deprecated

EXAMPLES = (
    """
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

  resablate grid --arch mypkg.models:cifar_resnet56 --arch timm:resnetv2_50 \
      --arch hf:microsoft/resnet-50 --weights none

  resablate grid --spec study.yaml --seeds 0 1 2      (flags override the file)

  resablate grid --depths 18 50 --dry-run --print-spec > study.yaml

Axes (the grid is their product; baselines skip the residual axis):

  --depths 18 34 50 101 152 (of --family resnet; 20 32 44 56 of --family cifar_resnet)
  · --arch resnet18 resnext50_32x4d ...
    (any model: timm:NAME, hf:OWNER/NAME or hf:DIR, package.module:factory)
  · --residual on | off | off:conv4_x,conv5_x · --residual-alpha 1 0.5 0
  · --weights imagenet | demo | none | PATH · --freeze none conv1 conv1-2 conv1-3 conv1-4 all
  · --seeds 0 1 2 · --baselines vgg16 efficientnet_b3 efficientnet_b4 alexnet

The same cell options as resablate train; recipe fields: the named flags or --set FIELD=VALUE.
Rerunning the same command with the same --out resumes: done cells are kept, interrupted ones
continue from their last checkpoint, failed ones rerun with --retry-failed.

"""
    + EXIT_CODES_HELP
)


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
    """Draws grid events: a live display on a terminal (a header with the cells done, elapsed
    time and ETA, and one row per cell with its step, loss and ETA), one line per change
    otherwise (and a progress line every :data:`PLAIN_EVERY` seconds); nothing with ``quiet``.

    The grid's ETA is measured: the wall time per step this run has taken so far (all workers
    together) times the steps left (a cell not started yet counts the steps of those that
    started).
    """

    def __init__(self, *, live: bool, metric: str, quiet: bool = False) -> None:
        self.live_enabled = live and not quiet
        self.quiet = quiet
        self.metric = metric
        self.rows: dict[str, dict[str, str]] = {}
        self.live: Any = None
        self.last_progress = 0.0
        self.start = time.monotonic()
        self.to_run: set[str] = set()
        self.steps: dict[str, tuple[int, int, int]] = {}  # cell: (first step, step, total)
        self.finished = 0
        self.pretrained: set[tuple[str, str]] = set()

    def __call__(self, event: object) -> None:
        from resablate.engine import StepProgress, TrainStarted
        from resablate.grid.events import (
            CellFinished,
            CellProgress,
            CellStarted,
            DemoWeightsPretraining,
            DemoWeightsReady,
            GridStarted,
        )

        if isinstance(event, GridStarted):
            self.started(event)
        elif isinstance(event, CellStarted):
            self.update(event.cell_id, status="running", progress="starting", where=event.device)
            self.line(f"start    {event.cell_id} {event.label} on {event.device}")
        elif isinstance(event, CellProgress) and isinstance(
            event.event, DemoWeightsPretraining | DemoWeightsReady
        ):
            self.demo_weights(event.event)
        elif isinstance(event, CellProgress) and isinstance(event.event, TrainStarted):
            inner = event.event
            self.steps[event.cell_id] = (inner.start_step, inner.start_step, inner.total_steps)
            self.update(event.cell_id, progress=f"{inner.start_step}/{inner.total_steps}")
            for skipped in inner.skipped_checkpoints:  # shown above a live table too
                self.note(f"warning: {event.cell_id} checkpoint skipped: {skipped}")
            if inner.start_step:
                self.line(
                    f"resume   {event.cell_id} at step {inner.start_step}/{inner.total_steps} "
                    "from its checkpoint"
                )
        elif isinstance(event, CellProgress) and isinstance(event.event, StepProgress):
            self.step(event.cell_id, event.event)
        elif isinstance(event, CellFinished):
            self.cell_finished(event)

    def started(self, event: Any) -> None:
        for note in event.notes:
            self.note(f"note: {note}")
        for row in event.cells:
            value = getattr(row, self.metric)
            self.rows[row.cell_id] = {
                "label": row.cell.label,
                "status": row.status,
                "progress": "",
                "loss": "",
                "eta": "",
                "value": "" if value is None else f"{value:.4f}",
                "where": row.device or "",
            }
        self.to_run = set(event.to_run)
        finished = len(event.cells) - len(event.to_run)
        self.note(
            f"{len(event.cells)} cells in {event.out_dir}: {len(event.to_run)} to run, "
            f"{finished} already finished"
        )
        if self.live_enabled and event.to_run:
            from rich.live import Live

            self.live = Live(self.render(), console=console.err, auto_refresh=False, transient=True)
            self.live.start()

    def demo_weights(self, event: Any) -> None:
        from resablate.grid.events import DemoWeightsReady

        key = (event.arch, event.source, type(event).__name__)
        if key in self.pretrained:  # a pack's cells each receive it
            return
        self.pretrained.add(key)
        if isinstance(event, DemoWeightsReady):
            self.line(
                f"ready    demo weights of {event.arch} pre-trained in "
                f"{format_seconds(event.seconds)}: {event.path}"
            )
        else:
            self.line(
                f"weights  pre-training the demo weights of {event.arch} on the proxy task "
                "(once per architecture, on the CPU; cached for every later cell and run)"
            )

    def step(self, cell_id: str, event: Any) -> None:
        first = self.steps.get(cell_id, (0, 0, event.total_steps))[0]
        self.steps[cell_id] = (first, event.step, event.total_steps)
        self.update(
            cell_id,
            progress=f"{event.step}/{event.total_steps}",
            loss=f"{event.loss:.4f}",
            eta=format_seconds(event.eta_seconds),
        )
        now = time.monotonic()
        if self.live is None and now - self.last_progress >= PLAIN_EVERY:
            self.last_progress = now
            self.line(
                f"progress {cell_id} step {event.step}/{event.total_steps} loss {event.loss:.4f}"
                f" · {self.header()}"
            )

    def cell_finished(self, event: Any) -> None:
        row = event.row
        self.finished += 1
        value = getattr(row, self.metric)
        shown = "" if value is None else f"{value:.4f}"
        self.update(event.cell_id, status=row.status, progress="", eta="", value=shown)
        why = f": {row.reason}" if row.reason else ""
        metric = f" {self.metric} {shown}" if shown else ""
        label = self.rows[event.cell_id]["label"]
        self.line(f"{row.status:<8} {event.cell_id} {label}{metric}{why}")

    def eta_seconds(self) -> float | None:
        """Seconds left for the grid, from the wall time per step measured so far."""
        done = sum(step - first for first, step, _ in self.steps.values())
        if not done:
            return None
        totals = [total for _, _, total in self.steps.values()]
        waiting = len(self.to_run) - len(self.steps)
        left = sum(total - step for _, step, total in self.steps.values())
        left += max(0, waiting) * sum(totals) / len(totals)
        return left * (time.monotonic() - self.start) / done

    def header(self) -> str:
        eta = self.eta_seconds()
        return (
            f"cells {self.finished}/{len(self.to_run)} done · elapsed "
            f"{format_seconds(time.monotonic() - self.start)} · ETA "
            + ("measuring…" if eta is None else format_seconds(eta))
        )

    def update(self, cell_id: str, **values: str) -> None:
        self.rows[cell_id].update(values)
        if self.live is not None:
            self.live.update(self.render(), refresh=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            console.err.print(text, highlight=False, markup=False)

    def line(self, text: str) -> None:
        if self.live is None:
            self.note(text)

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title="grid", title_justify="left")
        columns = ("id", "cell", "status", "step", "loss", "ETA", self.metric)
        for name in columns:
            table.add_column(name, justify="left" if name in ("id", "cell", "status") else "right")
        for cell_id, row in self.rows.items():
            style = _STATUS_STYLE.get(CellStatus(row["status"]), "")
            status = f"[{style}]{row['status']}[/]"
            table.add_row(
                cell_id,
                row["label"],
                status,
                row["progress"],
                row["loss"],
                row["eta"],
                row["value"],
            )
        return Group(Text(self.header(), style="bold"), table)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


PLAIN_EVERY = 10.0
"""Seconds between the progress lines of a grid whose output is not a terminal."""


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 20 s"``, ``"2 h 05 min"`` (the dry run's spelling)."""
    from resablate.grid.plan import format_seconds as spell

    return spell(seconds)


def grid(
    ctx: typer.Context,
    spec_file: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="Study file (YAML or JSON, docs/grid.md): axes, recipe, data, execution; the "
            "flags given override it.",
        ),
    ] = None,
    print_spec: Annotated[
        str | None,
        typer.Option(
            "--print-spec",
            metavar="[FILE]",
            help="Write the resolved study (YAML on stdout, or into FILE) and stop.",
        ),
    ] = None,
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
    out: GridOutOption = Path("runs/grid"),
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
            help="Print the cells with their status, params, FLOPs and a time estimate; "
            "train and write nothing.",
        ),
    ] = False,
    metric: Annotated[Metric, typer.Option(help="Metric of the results table.")] = Metric.f1,
    json_output: JsonOption = False,
    keep_checkpoints: KeepCheckpointsOption = False,
    quiet: QuietOption = False,
    track: TrackOption = None,
) -> None:
    """Run an ablation grid: architecture × residual × weights × freeze × seed (resumable).

    Every cell is stored in OUT/store.sqlite before the first one trains; results.csv mirrors
    the store after every finished cell. A second process on the same --out is refused.
    """
    from resablate.grid.spec import GridSpec

    named_family, archs = split_families(arch or [], source.value)
    study = grid_study(
        ctx,
        spec_file,
        family=named_family or family,
        depths=tuple(depths or (() if archs else GridSpec.depths)),
        archs=tuple(archs),
        baselines=tuple(baselines or ()),
    )
    if print_spec is not None:
        print_study(study, print_spec)
        return
    spec, run, out = study.spec, study.execution, Path(study.execution.out)
    if dry_run:
        from resablate.grid.plan import plan_grid

        console.err.print(
            "checking the data and each cell's weights, then timing a few training steps of "
            "each distinct model (at most 30 s in all)…",
            highlight=False,
        )
        plan = plan_grid(spec, out, device=run.run_device, pack=run.pack, workers=run.workers)
        show(plan, as_json=json_output)
        return

    from resablate.diagnostics.gradflow import GradNormLogging
    from resablate.grid.events import fan_out
    from resablate.grid.runner import run_grid

    tracking = grid_tracking(ctx.params)
    view = GridView(
        live=console.err.is_terminal and not json_output, metric=metric.value, quiet=quiet
    )
    try:
        summary = run_grid(
            spec,
            out,
            executor=run.executor,
            retry_failed=retry_failed,
            metric=metric.value,
            callback=fan_out(view, tracking),
            device=run.run_device,
            workers=run.workers,
            ray_address=run.ray_address,
            step_hooks=[GradNormLogging(every=gradflow_every)] if log_gradflow else [],
            pack=run.pack,
            keep_checkpoints=keep_checkpoints,
            execution=run.to_dict(),
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
        tracking.close()
    summary = summary.with_warnings(*tracking.problems)
    if not quiet or json_output:
        show(summary, as_json=json_output)
    if summary.not_done:
        raise typer.Exit(EXIT_CELLS_NOT_DONE)


def register(app: typer.Typer) -> None:
    """Add ``grid`` to the application."""
    app.command("grid", cls=AxisCommand, epilog=EXAMPLES, no_args_is_help=False)(grid)
