"""Gradient flow: how large the loss gradient is at each stage and block of a network.

The studies find that removing the residual connections of a deep ResNet ruins training. The
gradient norms per stage show why: without shortcuts, the gradient that reaches the stem is
orders of magnitude off the residual network's. With BatchNorm normalising by batch statistics
(train mode, as in training) the plain deep network's gradients *explode* towards the input, as
the mean-field theory of batch normalisation predicts (Yang et al. 2019, "A Mean Field Theory of
Batch Normalization"): measured on a randomly initialised ResNet-152 without shortcuts, about ×1.7
per bottleneck block, 10⁸ at the stem relative to the residual network; the residual network's
shortcuts keep the growth to about three orders of magnitude over the whole depth. With BatchNorm
as a fixed affine map (eval mode; at initialisation its running statistics make it the identity)
the forward signal itself grows (residual) or decays (plain) with depth, and every gradient
follows it. See ``docs/diagnostics.md``.

Conventions:
    * A group's gradient norm is the L2 norm of the concatenated gradients of every parameter in
      the group (``sqrt(sum ||g||²)``), accumulated in float64; parameters without a gradient
      (frozen, unused) are left out, and a group with none is left out of the result.
    * Groups: stages from the registry's stage map (``conv1`` = stem, ``conv2_x`` … ``conv5_x``),
      the head by its module path (``fc``); blocks split a ResNet stage into its residual blocks
      (``layer3.2``). See :mod:`resablate.diagnostics._layout`.
    * The loss is the mean cross-entropy over the batch.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resablate.diagnostics._figures import pyplot, save_figure
from resablate.diagnostics._layout import block_groups, stage_groups
from resablate.errors import ConfigError

BN_MODES = ("train", "eval")
ARMS = ("on", "off")


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the model; its parameters carry an "_orig_mod." prefix.
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def group_grad_norms(model: nn.Module, groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """L2 norm of the current ``.grad`` of the parameters under each group of module paths.

    Args:
        model: A model after ``backward()`` (a ``torch.compile`` wrapper is unwrapped).
        groups: Group name -> module paths; a parameter belongs to the group of the longest
            module path that prefixes its name. Parameters under no path go to ``"other"``.

    Returns:
        Group name -> gradient norm, in the order of ``groups`` (``"other"`` last), only for groups
        with at least one gradient. One device synchronisation in all.
    """
    model = _unwrap(model)
    owner = {path: name for name, paths in groups.items() for path in paths}
    members: dict[str, list[Tensor]] = {name: [] for name in (*groups, "other")}
    for pname, param in model.named_parameters():
        if param.grad is None:
            continue
        parts = pname.split(".")
        group = "other"
        for cut in range(len(parts) - 1, 0, -1):
            group = owner.get(".".join(parts[:cut]), "")
            if group:
                break
        members[group or "other"].append(param.grad.detach())
    names = [name for name, grads in members.items() if grads]
    if not names:
        return {}
    squares = torch.stack(
        [
            torch.stack(
                [torch.linalg.vector_norm(g, dtype=torch.float64).square() for g in members[name]]
            ).sum()
            for name in names
        ]
    )
    return dict(zip(names, squares.sqrt().tolist(), strict=True))


def stage_grad_norms(model: nn.Module) -> dict[str, float]:
    """Gradient norm of each stage (``conv1``, ``conv2_x`` … ``conv5_x``) and the head (``fc``).

    Meant as the engine's per-step hook: call it after ``backward()`` (and after unscaling when a
    GradScaler is used), before ``zero_grad()``. It reads ``.grad`` only and changes nothing.

    Raises:
        ConfigError: The model is neither ResNet-like nor an instance of a registered family.
    """
    return group_grad_norms(model, stage_groups(_unwrap(model)))


def block_grad_norms(model: nn.Module) -> dict[str, float]:
    """Gradient norm of the stem, each residual block (``layer3.2``) and the head (``fc``).

    Same contract as :func:`stage_grad_norms`.
    """
    return group_grad_norms(model, block_groups(_unwrap(model)))


class GradNormLogger:
    """A per-step hook for the engine (``train(..., on_step=[logger])``) logging gradient norms.

    Every ``every`` optimiser steps it records :func:`stage_grad_norms` (or
    :func:`block_grad_norms`) of ``info.model`` with the step's loss, and rewrites ``path`` as JSON
    lines ``{"step", "epoch", "loss", "norms": {group: norm}}`` atomically every ``flush_every``
    records; call :meth:`flush` once training returns. Records already in ``path`` are kept, and a
    resumed run that repeats steps replaces the records from the first repeated step on.

    Args:
        path: The JSONL file (e.g. ``RUN_DIR/gradflow.jsonl``).
        every: Record every this many optimiser steps (1 = every step).
        blocks: Per residual block instead of per stage.
        flush_every: Rewrite the file after this many new records.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        every: int = 1,
        blocks: bool = False,
        flush_every: int = 50,
    ) -> None:
        if every < 1 or flush_every < 1:
            raise ConfigError(f"every={every} and flush_every={flush_every} must be at least 1")
        self.path = Path(path)
        self.every = every
        self.measure = block_grad_norms if blocks else stage_grad_norms
        self.flush_every = flush_every
        self.records: list[dict[str, Any]] = []
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            self.records = [json.loads(line) for line in lines if line.strip()]
        self._pending = 0

    def __call__(self, info: Any) -> None:
        """Record ``info.model``'s gradient norms at ``info.step`` (an engine ``StepInfo``)."""
        if info.step % self.every:
            return
        self.records = [r for r in self.records if r["step"] < info.step]
        self.records.append(
            {
                "step": int(info.step),
                "epoch": int(info.epoch),
                "loss": _json_number(float(info.loss)),
                "norms": {k: _json_number(v) for k, v in self.measure(info.model).items()},
            }
        )
        self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()

    def close(self) -> None:
        """Write the records once training ends (nothing when none was taken)."""
        if self.records:
            self.flush()

    def flush(self) -> None:
        """Write every record to :attr:`path` (atomically)."""
        from resablate.atomic import write_text

        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._pending = 0


@dataclass(frozen=True)
class GradNormLogging:
    """Gradient-norm logging for every cell of a grid (``run_grid(step_hooks=[...])``).

    A picklable factory: called with a cell's run directory (in the worker that runs it), it
    returns the :class:`GradNormLogger` writing that run's ``gradflow.jsonl``.

    Attributes:
        every: Record every this many optimiser steps.
        blocks: Per residual block instead of per stage.
    """

    every: int = 10
    blocks: bool = False

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"every={self.every} must be at least 1", field="gradflow_every")

    def __call__(self, run_dir: str | Path) -> GradNormLogger:
        from resablate.run_dir import RunDir

        return GradNormLogger(RunDir(run_dir).gradflow_file, every=self.every, blocks=self.blocks)


@dataclass(frozen=True)
class GradFlowRecord:
    """Gradient norms at one point of training.

    Attributes:
        step: Optimiser steps taken before this measurement (0 = at initialisation).
        loss: Mean cross-entropy on the batch.
        stages: ``(stage, norm)`` pairs in forward order, the head last.
        blocks: ``(block, norm)`` pairs in forward order.
    """

    step: int
    loss: float
    stages: tuple[tuple[str, float], ...]
    blocks: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types (non-finite numbers as strings: ``"inf"``, ``"nan"``)."""
        return {
            "step": self.step,
            "loss": _json_number(self.loss),
            "stages": {k: _json_number(v) for k, v in self.stages},
            "blocks": {k: _json_number(v) for k, v in self.blocks},
        }


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class GradFlowResult:
    """Gradient norms of one network on one batch, at initialisation and after training steps.

    Attributes:
        label: Name of the network (``"residual on"``).
        bn_mode: ``"train"`` (batch statistics, as in training) or ``"eval"`` (running statistics).
        lr: SGD learning rate of the training steps.
        batch_size: Images in the batch.
        image_size: Side of the square images, pixels.
        records: One record per measurement: step 0, then after each optimiser step.
        diverged_at_step: First step whose loss was not finite (training stopped there), or None.
    """

    label: str
    bn_mode: str
    lr: float
    batch_size: int
    image_size: int
    records: tuple[GradFlowRecord, ...]
    diverged_at_step: int | None = None

    @property
    def initial(self) -> GradFlowRecord:
        """The measurement at initialisation (before any step)."""
        return self.records[0]

    @property
    def final(self) -> GradFlowRecord:
        """The last measurement."""
        return self.records[-1]

    def stage_norm(self, stage: str, step: int = 0) -> float:
        """Gradient norm of ``stage`` at ``step``.

        Raises:
            ConfigError: No record for ``step`` or no such stage.
        """
        record = next((r for r in self.records if r.step == step), None)
        if record is None:
            raise ConfigError(f"no gradient record at step {step}; steps 0..{self.final.step}")
        norms = dict(record.stages)
        if stage not in norms:
            raise ConfigError(f"no stage {stage!r}; stages: {', '.join(norms)}")
        return norms[stage]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types."""
        return {
            "label": self.label,
            "bn_mode": self.bn_mode,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "diverged_at_step": self.diverged_at_step,
            "records": [r.to_dict() for r in self.records],
        }


@dataclass(frozen=True)
class GradFlowStudy:
    """Gradient flow of the same network (same weights, same batch) in one or more arms.

    Attributes:
        arch: Architecture name, for titles (may be empty).
        results: One result per arm, e.g. ``residual on`` then ``residual off``.
    """

    arch: str
    results: tuple[GradFlowResult, ...]

    def ratio(self, stage: str, step: int = 0) -> float:
        """Gradient norm of ``stage`` in the last arm divided by the first arm's (at ``step``)."""
        first, last = self.results[0], self.results[-1]
        return last.stage_norm(stage, step) / first.stage_norm(stage, step)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types."""
        return {"arch": self.arch, "results": [r.to_dict() for r in self.results]}

    def __rich__(self) -> Any:
        from rich.table import Table

        first = self.results[0]
        steps = first.final.step
        table = Table(
            title=f"gradient norm per stage{f' of {self.arch}' if self.arch else ''}: "
            f"batch {first.batch_size} × {first.image_size}², BatchNorm {first.bn_mode} mode",
            title_justify="left",
        )
        table.add_column("stage")
        for result in self.results:
            table.add_column(f"{result.label}\nstep 0", justify="right")
            if steps:
                table.add_column(f"{result.label}\nstep {result.final.step}", justify="right")
        if len(self.results) > 1:
            table.add_column(f"{self.results[-1].label} ÷\n{first.label}, step 0", justify="right")
        for stage, _ in first.initial.stages:
            row = [stage]
            for result in self.results:
                row.append(_fmt(dict(result.initial.stages).get(stage, math.nan)))
                if steps:
                    row.append(_fmt(dict(result.final.stages).get(stage, math.nan)))
            if len(self.results) > 1:
                row.append(_fmt(self.ratio(stage)))
            table.add_row(*row)
        losses = []
        for result in self.results:
            text = f"{result.label}: loss {result.initial.loss:.4g} at step 0"
            if steps:
                text += f", {result.final.loss:.4g} at step {result.final.step}"
            if result.diverged_at_step is not None:
                text += f" (diverged at step {result.diverged_at_step})"
            losses.append(text)
        table.caption = "; ".join(losses)
        return table


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def _batch_bn_mode(model: nn.Module, bn_mode: str) -> None:
    model.train()
    if bn_mode == "eval":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def gradient_flow(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    steps: int = 0,
    lr: float = 1e-3,
    momentum: float = 0.9,
    bn_mode: str = "train",
    label: str = "",
) -> GradFlowResult:
    """Per-stage and per-block gradient norms of the loss on one batch, at init and after steps.

    Works on a deep copy: ``model`` itself (weights, buffers, mode) is never changed. The copy
    computes the mean cross-entropy on ``images``, backpropagates, records the norms, then takes
    an SGD step; this repeats ``steps`` times, giving ``steps + 1`` records. Dropout is active
    (train mode). Training stops at the first non-finite loss.

    Args:
        model: A ResNet-like model or a registered family's model (any residual wiring).
        images: ``[n, 3, H, W]`` normalised float images (moved to the model's device).
        labels: ``[n]`` class indices.
        steps: SGD steps to take on the batch after the first measurement.
        lr: SGD learning rate.
        momentum: SGD momentum.
        bn_mode: ``"train"``: BatchNorm uses batch statistics (and updates the copy's running
            statistics), as in training; ``"eval"``: BatchNorm uses its running statistics.
        label: Name of this arm in the result.

    Raises:
        ConfigError: Bad ``steps``/``bn_mode``/``lr``, mismatching images and labels, or a model
            without a stage map.
    """
    _check(images, labels, steps, lr, bn_mode)
    work = copy.deepcopy(_unwrap(model))
    return _measure(
        work, images, labels, steps=steps, lr=lr, momentum=momentum, bn_mode=bn_mode, label=label
    )


def _check(images: Tensor, labels: Tensor, steps: int, lr: float, bn_mode: str) -> None:
    if bn_mode not in BN_MODES:
        raise ConfigError(f"BatchNorm mode {bn_mode!r} is not valid; use {' or '.join(BN_MODES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps={steps!r} must be a non-negative integer")
    if not lr > 0:
        raise ConfigError(f"lr={lr!r} must be > 0")
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise ConfigError(
            f"gradient_flow needs images [n, C, H, W] and labels [n]; got "
            f"{list(images.shape)} and {list(labels.shape)}"
        )


def _measure(
    work: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    steps: int,
    lr: float,
    momentum: float,
    bn_mode: str,
    label: str,
) -> GradFlowResult:
    # Trains ``work`` in place: callers hand over a copy they own.
    stages, blocks = stage_groups(work), block_groups(work)
    device = next(work.parameters()).device
    images, labels = images.to(device), labels.to(device)
    _batch_bn_mode(work, bn_mode)
    params = [p for p in work.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    records: list[GradFlowRecord] = []
    diverged: int | None = None
    for step in range(steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(work(images), labels)
        loss.backward()
        records.append(
            GradFlowRecord(
                step=step,
                loss=float(loss.detach()),
                stages=tuple(group_grad_norms(work, stages).items()),
                blocks=tuple(group_grad_norms(work, blocks).items()),
            )
        )
        if not math.isfinite(records[-1].loss):
            diverged = step
            break
        if step < steps:
            optimizer.step()
    return GradFlowResult(
        label=label,
        bn_mode=bn_mode,
        lr=float(lr),
        batch_size=int(images.shape[0]),
        image_size=int(images.shape[-1]),
        records=tuple(records),
        diverged_at_step=diverged,
    )


def residual_gradient_flow(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    arms: Sequence[str] = ARMS,
    arch: str = "",
    steps: int = 0,
    lr: float = 1e-3,
    momentum: float = 0.9,
    bn_mode: str = "train",
) -> GradFlowStudy:
    """:func:`gradient_flow` of the same weights with and without residual connections.

    Arm ``"on"`` is ``model`` with its current wiring; arm ``"off"`` is a copy with every residual
    connection dropped (:func:`resablate.surgery.drop_residual`). Both see the same batch and start
    from the same weights; ``model`` is never changed.

    Args:
        model: A torchvision or timm ResNet.
        images: ``[n, 3, H, W]`` normalised float images.
        labels: ``[n]`` class indices.
        arms: Which arms, in order: a non-empty subset of ``("on", "off")``.
        arch: Architecture name for titles.
        steps: As in :func:`gradient_flow`.
        lr: As in :func:`gradient_flow`.
        momentum: As in :func:`gradient_flow`.
        bn_mode: As in :func:`gradient_flow`.

    Raises:
        ConfigError: Unknown or repeated arm, a model without residual connections for ``"off"``,
            or any error of :func:`gradient_flow`.
    """
    from resablate.surgery import drop_residual

    arms = tuple(arms)
    if not arms or len(set(arms)) != len(arms) or not set(arms) <= set(ARMS):
        raise ConfigError(f"arms {list(arms)} are not valid; choose from {', '.join(ARMS)}")
    _check(images, labels, steps, lr, bn_mode)
    results = []
    for arm in arms:
        work = copy.deepcopy(_unwrap(model))
        if arm == "off":
            drop_residual(work)
        results.append(
            _measure(
                work,
                images,
                labels,
                steps=steps,
                lr=lr,
                momentum=momentum,
                bn_mode=bn_mode,
                label=f"residual {arm}",
            )
        )
        del work
    return GradFlowStudy(arch=arch, results=tuple(results))


def plot_gradient_flow(study: GradFlowStudy, path: str | Path) -> Path:
    """Per-stage (left) and per-block (right) gradient norms of every arm, log scale, as PNG.

    Solid lines: at initialisation; dashed: after the last step (when steps were taken).
    Non-finite norms are left out of the lines.

    Returns:
        The written path.
    """
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), width_ratios=(1, 2.2))
    colours = ("tab:blue", "tab:red", "tab:green", "tab:purple")
    for colour, result in zip(colours, study.results, strict=False):
        records = [result.initial]
        if result.final.step > 0:
            records.append(result.final)
        for record, style in zip(records, ("-", "--"), strict=False):
            name = f"{result.label}, step {record.step}"
            if result.diverged_at_step == record.step:
                name += " (diverged)"
            for ax, pairs in ((left, record.stages), (right, record.blocks)):
                xs = [i for i, (_, v) in enumerate(pairs) if math.isfinite(v) and v > 0]
                ax.plot(xs, [pairs[i][1] for i in xs], style, color=colour, marker=".", label=name)
    first = study.results[0].initial
    left.set_xticks(range(len(first.stages)), [s for s, _ in first.stages], rotation=45)
    _shade_stages(right, [b for b, _ in first.blocks])
    for ax, what in ((left, "stage"), (right, "block index (forward order)")):
        ax.set_yscale("log")
        ax.set_xlabel(what)
        ax.set_ylabel("gradient L2 norm")
        ax.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8)
    result = study.results[0]
    fig.suptitle(
        f"gradient flow{f' of {study.arch}' if study.arch else ''}: batch {result.batch_size} × "
        f"{result.image_size}², BatchNorm {result.bn_mode} mode"
    )
    return save_figure(fig, path)


def _shade_stages(ax: Any, names: list[str]) -> None:
    # Alternate shading per stage (layer1 -> conv2_x), the stage's paper name written inside.
    from resablate.families import paper_stage

    spans: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        stage = name.split(".")[0] if "." in name else name
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], i)
        else:
            spans.append((stage, i, i))
    for k, (stage, start, end) in enumerate(spans):
        if k % 2:
            ax.axvspan(start - 0.5, end + 0.5, color="0.92", zorder=0)
        try:
            text = paper_stage(stage)
        except ConfigError:
            text = stage
        ax.text(
            (start + end) / 2,
            0.02,
            text,
            transform=ax.get_xaxis_transform(),
            ha="center",
            fontsize=7,
            rotation=90 if end - start < 3 else 0,
        )
