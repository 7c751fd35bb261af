"""Lesion study: delete residual blocks of a trained ResNet at test time and measure the damage.

After Veit, Wilber & Belongie (2016), "Residual Networks Behave Like Ensembles of Relatively
Shallow Networks": deleting one block of a residual network (its output becomes its shortcut,
``act(shortcut(x))``, see :func:`resablate.surgery.lesion_blocks`) costs little, except at the
downsampling blocks, and the error grows smoothly with the number of blocks deleted, as for an
ensemble of shallower paths. A plain (no-residual) network has no path around a deleted block:
the damage is total.

:func:`lesion` is a context manager that lesions blocks and puts back exactly the wiring the model
had before (any earlier surgery included), even when the block raises. :func:`lesion_study`
evaluates a model with each single block deleted, then with ``k`` random blocks deleted at once
for ``k = 1 .. k_random``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resablate.choices import LESION_METRICS
from resablate.diagnostics._figures import pyplot, save_figure
from resablate.errors import ConfigError
from resablate.surgery import (
    SurgeryReport,
    apply_residual_state,
    lesion_blocks,
    residual_blocks,
    residual_state,
)

METRICS = LESION_METRICS


@contextmanager
def lesion(model: nn.Module, blocks: Iterable[str] | str) -> Iterator[SurgeryReport]:
    """Delete residual blocks for the duration of a ``with`` block, then restore them exactly.

    Inside the block, each named block's output is ``act(shortcut(x))`` (its main path is not
    run). On exit, normal or by exception, every block gets back the wiring it had on entry
    (:func:`resablate.surgery.residual_state`), including earlier ``drop``/``scale`` surgery.
    Weights, buffers and train/eval flags are never touched.

    Args:
        model: A torchvision or timm ResNet.
        blocks: Block names, ``"layer3.2"`` (or ``"conv4_x.2"``).

    Yields:
        The surgery report of the lesion.

    Raises:
        ConfigError: No block named, unknown block, or a model without residual connections
            (before anything changes).
        UnsupportedBlockError: The model holds a block type surgery does not know.
    """
    saved = residual_state(model)
    try:
        yield lesion_blocks(model, blocks)
    finally:
        apply_residual_state(model, saved)


@dataclass(frozen=True)
class LesionEntry:
    """The model's metrics with some blocks deleted.

    Attributes:
        blocks: Deleted blocks in forward order (empty = the intact model).
        accuracy: Fraction of correct predictions.
        f1: F1 of the positive class.
        loss: Mean cross-entropy.
    """

    blocks: tuple[str, ...]
    accuracy: float
    f1: float
    loss: float

    def metric(self, name: str) -> float:
        """The metric called ``name`` (``accuracy``, ``f1`` or ``loss``)."""
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types."""
        return {
            "blocks": list(self.blocks),
            "accuracy": self.accuracy,
            "f1": self.f1,
            "loss": self.loss,
        }


@dataclass(frozen=True)
class LesionResult:
    """A lesion study of one model on one set of images.

    Attributes:
        baseline: The intact model.
        singles: One entry per candidate block, that block alone deleted, in forward order.
        random: Entries with ``k`` random candidate blocks deleted at once, ``draws`` per ``k``,
            by increasing ``k``.
        downsampling: Candidate blocks whose shortcut is a projection (they change resolution or
            width: deleting them leaves the projection as the only path).
        n_images: Images evaluated.
        seed: Seed of the random draws.
        label: Name of the model (e.g. a run's cell label).
    """

    baseline: LesionEntry
    singles: tuple[LesionEntry, ...]
    random: tuple[LesionEntry, ...]
    downsampling: tuple[str, ...]
    n_images: int
    seed: int
    label: str = ""

    def by_k(self, metric: str = "accuracy") -> list[tuple[int, float, float, int]]:
        """``(k, mean, standard deviation, draws)`` of ``metric`` per number of deleted blocks.

        ``k = 0`` is the intact model and ``k = 1`` pools the single deletions with any random
        draws of one block; the deviation is 0 for a single value.
        """
        groups: dict[int, list[float]] = {0: [self.baseline.metric(metric)]}
        for entry in (*self.singles, *self.random):
            groups.setdefault(len(entry.blocks), []).append(entry.metric(metric))
        return [
            (k, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for k, v in sorted(groups.items())
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types."""
        return {
            "label": self.label,
            "n_images": self.n_images,
            "seed": self.seed,
            "baseline": self.baseline.to_dict(),
            "singles": [e.to_dict() for e in self.singles],
            "random": [e.to_dict() for e in self.random],
            "downsampling": list(self.downsampling),
            "by_k": [
                {"k": k, "accuracy_mean": m, "accuracy_std": s, "n": n}
                for k, m, s, n in self.by_k("accuracy")
            ],
        }

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        base = self.baseline
        title = f"lesion study{f' of {self.label}' if self.label else ''}: {self.n_images} images"
        singles = Table(title=title, title_justify="left")
        for column in ("deleted block", "accuracy", "Δ accuracy", "F1", "loss"):
            singles.add_column(column, justify="left" if column == "deleted block" else "right")
        singles.add_row("none", f"{base.accuracy:.4f}", "", f"{base.f1:.4f}", f"{base.loss:.4f}")
        for entry in self.singles:
            name = entry.blocks[0]
            if name in self.downsampling:
                name += " (downsampling)"
            singles.add_row(
                name,
                f"{entry.accuracy:.4f}",
                f"{entry.accuracy - base.accuracy:+.4f}",
                f"{entry.f1:.4f}",
                f"{entry.loss:.4f}",
            )
        parts: list[Any] = [singles]
        if self.random:
            by_k = Table(
                title=f"k random blocks deleted at once (seed {self.seed})", title_justify="left"
            )
            for column in ("k", "draws", "accuracy mean", "accuracy std"):
                by_k.add_column(column, justify="right")
            for k, mean, std, n in self.by_k("accuracy"):
                by_k.add_row(str(k), str(n), f"{mean:.4f}", f"{std:.4f}")
            parts.append(by_k)
        return Group(*parts)


def _evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, positive: int
) -> tuple[float, float, float]:
    from resablate.metrics import classification_metrics

    device = next(model.parameters()).device
    total_loss = 0.0
    preds = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            logits = model(x).float()
            total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            preds.append(logits.argmax(dim=1).cpu())
    num_classes = max(2, int(logits.shape[1]))
    metrics = classification_metrics(
        labels.cpu(), torch.cat(preds), num_classes=num_classes, positive=positive
    )
    return metrics.accuracy, metrics.f1, total_loss / images.shape[0]


def _downsampling(model: nn.Module, images: Tensor) -> set[str]:
    """Residual sites whose block's output shape differs from its input's (a projection shortcut:
    new resolution or width), seen in one forward pass of one image; any block type."""
    sites = residual_blocks(model)
    changed: set[int] = set()

    def hook(block: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        shape = getattr(inputs[0], "shape", None) if inputs else None
        if isinstance(output, Tensor) and shape is not None and output.shape != shape:
            changed.add(id(block))

    blocks = {id(block): block for _, block in sites}
    handles = [block.register_forward_hook(hook) for block in blocks.values()]
    try:
        with torch.no_grad():
            model(images[:1].to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return {name for name, block in sites if id(block) in changed}


def lesion_study(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    blocks: Sequence[str] | None = None,
    *,
    k_random: int = 0,
    draws: int = 5,
    seed: int = 0,
    batch_size: int = 128,
    positive: int = 1,
    label: str = "",
) -> LesionResult:
    """Evaluate ``model`` with each candidate block deleted, then ``k`` random ones at once.

    The model runs in eval mode without gradients; its wiring and train/eval flags are restored
    afterwards (:func:`lesion`), its weights are never touched.

    Args:
        model: A trained model with residual blocks (any wiring): a registered ResNet, a timm
            or Hugging Face model, a user's.
        data: ``(images, labels)``: ``[n, 3, H, W]`` normalised float images and ``[n]`` class
            indices.
        blocks: Candidate blocks (``"layer3.2"``); ``None`` = every residual block.
        k_random: Largest number of blocks deleted at once (0 = single deletions only). For each
            ``k`` in ``1 .. k_random``, ``draws`` random sets of ``k`` distinct candidates.
        draws: Random sets per ``k``.
        seed: Seed of the random sets (a ``torch.Generator``; same seed, same sets).
        batch_size: Images per forward pass.
        positive: Index of the positive class for F1.
        label: Name of the model in the result.

    Raises:
        ConfigError: Unknown block, ``k_random`` outside ``0 .. len(candidates)``, bad ``draws``,
            no images, or a model without residual connections.
    """
    images, labels = data
    if images.dim() != 4 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ConfigError(
            f"lesion_study needs images [n>0, C, H, W] and labels [n]; got "
            f"{list(images.shape)} and {list(labels.shape)}"
        )
    saved = residual_state(model)
    names = list(saved)
    if blocks is None:
        candidates = names
    else:
        # Surgery validates and canonicalises the names ("conv4_x.2" -> "layer3.2"); the lesion is
        # undone at once.
        with lesion(model, blocks) as report:
            candidates = list(report.blocks_rewired)
    if not 0 <= k_random <= len(candidates):
        raise ConfigError(f"k_random={k_random} must be between 0 and {len(candidates)}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws={draws!r} must be a positive integer")
    generator = torch.Generator().manual_seed(seed)
    sets = [[name] for name in candidates]
    for k in range(1, k_random + 1):
        for _ in range(draws):
            picked = torch.randperm(len(candidates), generator=generator)[:k].tolist()
            sets.append([candidates[i] for i in sorted(picked)])

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:

        def measure(chosen: list[str]) -> LesionEntry:
            if chosen:
                with lesion(model, chosen):
                    values = _evaluate(model, images, labels, batch_size, positive)
            else:
                values = _evaluate(model, images, labels, batch_size, positive)
            return LesionEntry(tuple(chosen), *values)

        baseline = measure([])
        entries = [measure(chosen) for chosen in sets]
        downsampling = _downsampling(model, images)
    finally:
        for module, training in modes.items():
            module.train(training)
    return LesionResult(
        baseline=baseline,
        singles=tuple(entries[: len(candidates)]),
        random=tuple(entries[len(candidates) :]),
        downsampling=tuple(n for n in candidates if n in downsampling),
        n_images=int(images.shape[0]),
        seed=seed,
        label=label,
    )


def plot_lesion(result: LesionResult, path: str | Path, *, metric: str = "accuracy") -> Path:
    """Metric vs number of deleted blocks (left) and per deleted block (right), as PNG.

    Left: every evaluation as a dot, the mean per ``k`` as a line with ± one standard deviation.
    Right: the metric with each single block deleted, downsampling blocks in red, the intact
    model as a dashed line.

    Returns:
        The written path.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), width_ratios=(1, 1.6))
    points = [(0, result.baseline.metric(metric))] + [
        (len(e.blocks), e.metric(metric)) for e in (*result.singles, *result.random)
    ]
    left.scatter(*zip(*points, strict=True), s=10, alpha=0.4, color="tab:blue")
    ks, means, stds, _ = zip(*result.by_k(metric), strict=True)
    left.errorbar(ks, means, yerr=stds, color="tab:blue", marker="o", capsize=3, label="mean ± sd")
    left.set_xlabel("blocks deleted")
    left.set_ylabel(metric)
    left.set_xticks(ks)
    left.legend(fontsize=8)
    names = [e.blocks[0] for e in result.singles]
    values = [e.metric(metric) for e in result.singles]
    colours = ["tab:red" if n in result.downsampling else "tab:blue" for n in names]
    right.bar(range(len(names)), values, color=colours)
    right.axhline(result.baseline.metric(metric), color="black", linestyle="--", label="intact")
    right.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    right.set_xlabel("deleted block (red: downsampling)")
    right.set_ylabel(metric)
    right.legend(fontsize=8)
    if metric in ("accuracy", "f1"):
        for ax in (left, right):
            ax.set_ylim(0.0, 1.02)
    label = f" of {result.label}" if result.label else ""
    fig.suptitle(f"lesion study{label}: {result.n_images} images, seed {result.seed}")
    return save_figure(fig, path)


def save_lesion(
    result: LesionResult, run_dir: str | Path, *, metric: str = "accuracy"
) -> tuple[Path, Path]:
    """Keep a lesion study beside the run it measured: ``RUN_DIR/lesion.json`` + ``lesion.png``.

    ``lesion.json`` is :meth:`LesionResult.to_dict`; both files are written atomically and
    replace an earlier study's. ``resablate report`` shows the studies it finds in run dirs.

    Returns:
        The JSON and PNG paths.
    """
    from resablate.run_dir import RunDir

    run = RunDir(run_dir)
    return run.write_lesion(result.to_dict()), plot_lesion(result, run.lesion_figure, metric=metric)
