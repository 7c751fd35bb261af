"""Report figures from plain data, written as PNG files of a fixed pixel size.

Every function here takes plain values (records, lists, arrays), draws one matplotlib figure with
the Agg canvas (no pyplot, no global backend switch, no display needed), writes it atomically and
returns a :class:`FigureFile`. matplotlib is imported inside the functions, so importing this
module is cheap. The pixel size of each figure is ``size × DPI`` (no tight bounding box), which
keeps reports stable and lets tests check it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.atomic import write_bytes
from resablate.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from resablate.report.stats import MeanInterval

DPI = 100
CURVES_SIZE = (9.0, 3.5)
LR_SIZE = (6.0, 3.0)
CONFUSION_SIZE = (4.0, 3.6)
GALLERY_SIZE = (9.0, 3.8)
FEATURES_SIZE = (9.0, 6.0)
DEPTH_SIZE = (6.0, 3.8)
GRADFLOW_SIZE = (9.0, 3.6)
LESION_SIZE = (6.0, 3.8)
SEED_CURVES_SIZE = (12.0, 4.0)
BARS_SIZE = (9.0, 3.8)
GALLERY_MAX = 12
FEATURE_CHANNELS = 8


@dataclass(frozen=True)
class FigureFile:
    """A figure written to disk.

    Attributes:
        path: The PNG file.
        title: What the figure shows, one line (used as its caption).
        width: Width in pixels.
        height: Height in pixels.
    """

    path: Path
    title: str
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {
            "path": str(self.path),
            "title": self.title,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True)
class GallerySample:
    """One misclassified test image.

    Attributes:
        image: RGB pixels, uint8, shape ``[H, W, 3]``.
        true_label: Class name of the ground truth.
        predicted_label: Class name the model predicted.
        confidence: The model's probability of the predicted class, in [0, 1].
    """

    image: np.ndarray
    true_label: str
    predicted_label: str
    confidence: float


@dataclass(frozen=True)
class CurveBand:
    """One line of :func:`seed_curves_figure`: a configuration's mean over seeds, with a band.

    Attributes:
        category: What the line's colour stands for, e.g. ``"ResNet-20"``.
        variant: What its line style stands for, e.g. ``"residual off"`` (the first variant
            met is drawn solid, the others dashed or dotted).
        steps: Optimiser steps of the points, increasing.
        mean: Mean over the seeds at each step.
        low: Lower edge of the band at each step (e.g. the lowest seed's value).
        high: Upper edge of the band at each step.
        seeds: How many seeds the mean is over.
    """

    category: str
    variant: str
    steps: tuple[int, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    seeds: int

    @property
    def label(self) -> str:
        """``"ResNet-20 · residual off (n=3)"``."""
        return f"{self.category} · {self.variant} (n={self.seeds})"


@dataclass(frozen=True)
class Bar:
    """One bar of :func:`bars_figure`: a configuration's mean over seeds and its interval.

    Attributes:
        category: The group of bars it stands in (x axis), e.g. ``"ResNet-20"``.
        variant: Its colour within the group, e.g. ``"residual off"``.
        value: The mean, its confidence interval (the error bar; none for one seed) and the
            seeds' values (drawn as dots).
    """

    category: str
    variant: str
    value: MeanInterval


def _new_figure(size: tuple[float, float], **margins: float) -> Figure:
    # Fixed margins instead of a layout engine: several times faster, and the size stays exact.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**margins)
    return fig


def _save(fig: Figure, path: str | Path, title: str) -> FigureFile:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    target = Path(path)
    write_bytes(target, buffer.getvalue())
    width, height = fig.get_size_inches()
    return FigureFile(target, title, round(width * DPI), round(height * DPI))


def curves_figure(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str = "f1",
    title: str = "",
) -> FigureFile:
    """Training and validation loss (left) and ``metric`` (right) against the optimiser step.

    Args:
        history: Records with ``step`` (optimiser steps), ``split`` (e.g. ``"train"``, ``"val"``)
            and ``loss`` and/or ``metric`` values; missing or ``None`` values are skipped.
        path: Where to write the PNG.
        metric: The metric plotted on the right.
        title: A caption, e.g. the cell's label.

    Raises:
        ConfigError: ``history`` is empty.
    """
    if not history:
        raise ConfigError(f"no evaluation history to plot for {title or 'this cell'}")
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(CURVES_SIZE, left=0.08, right=0.98, bottom=0.15, top=0.86, wspace=0.28)
    axes = fig.subplots(1, 2)
    splits = sorted({str(r["split"]) for r in history})
    last_step = max(int(r["step"]) for r in history)
    for ax, key in zip(axes, ("loss", metric), strict=True):
        for split in splits:
            points = [
                (int(r["step"]), float(r[key]))
                for r in history
                if str(r["split"]) == split and r.get(key) is not None
            ]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=split)
        ax.set_xlabel("step")
        ax.set_xlim(0, max(1, last_step) * 1.05)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "training curves", fontsize=10)
    return _save(fig, path, f"loss and {metric} curves · {title}" if title else "curves")


def lr_schedule_figure(
    learning_rates: Sequence[float], path: str | Path, *, title: str = ""
) -> FigureFile:
    """The learning rate at each optimiser step (index = step, starting at 0).

    Raises:
        ConfigError: ``learning_rates`` is empty.
    """
    if not learning_rates:
        raise ConfigError("no learning rates to plot")
    fig = _new_figure(LR_SIZE, left=0.13, right=0.96, bottom=0.16, top=0.88)
    ax = fig.subplots()
    ax.plot(range(len(learning_rates)), learning_rates)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    ax.set_title(title or "learning-rate schedule", fontsize=10)
    return _save(fig, path, f"learning-rate schedule · {title}" if title else "lr schedule")


def confusion_figure(
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
) -> FigureFile:
    """A confusion matrix: rows the true class, columns the predicted class, cells the counts.

    Raises:
        ConfigError: The matrix is not square with one row per class.
    """
    import numpy as np

    n = len(classes)
    if len(confusion) != n or any(len(row) != n for row in confusion):
        raise ConfigError(f"confusion matrix is not {n}×{n} for classes {list(classes)}")
    fig = _new_figure(CONFUSION_SIZE, left=0.2, right=0.95, bottom=0.16, top=0.88)
    ax = fig.subplots()
    image = ax.imshow([[int(v) for v in row] for row in confusion], cmap="Blues")
    for i, row in enumerate(confusion):
        for j, value in enumerate(row):
            # White on the darker half of the colour scale, black on the lighter half.
            shade = np.asarray(image.norm(np.asarray(value, dtype=float))).item()
            ax.text(
                j,
                i,
                str(int(value)),
                ha="center",
                va="center",
                color="white" if shade > 0.5 else "black",
            )
    ax.set_xticks(range(n), list(classes))
    ax.set_yticks(range(n), list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title or "confusion matrix", fontsize=9)
    return _save(fig, path, f"confusion matrix · {title}" if title else "confusion matrix")


def gallery_figure(
    samples: Sequence[GallerySample], path: str | Path, *, title: str = ""
) -> FigureFile:
    """Up to :data:`GALLERY_MAX` misclassified images with true / predicted label and confidence.

    An empty ``samples`` draws a figure saying that nothing was misclassified.
    """
    fig = _new_figure(GALLERY_SIZE, left=0.02, right=0.98, bottom=0.02, top=0.82, hspace=0.5)
    shown = list(samples[:GALLERY_MAX])
    columns = 6
    rows = max(1, math.ceil(len(shown) / columns))
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < len(shown):
            sample = shown[index]
            ax.imshow(sample.image, interpolation="nearest")
            ax.set_title(
                f"true {sample.true_label}\npred {sample.predicted_label} "
                f"({sample.confidence:.2f})",
                fontsize=7,
            )
    if not shown:
        axes.flat[0].text(0, 0.5, "no misclassified test images", fontsize=10)
    fig.suptitle(title or "misclassified test images", fontsize=10)
    label = f"misclassified test images · {title}" if title else "misclassified test images"
    return _save(fig, path, label)


def feature_maps_figure(
    maps: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    channels: int = FEATURE_CHANNELS,
    title: str = "",
) -> FigureFile:
    """Feature maps of the first stages for one image, one row per (variant, stage).

    Args:
        maps: ``variant -> stage -> activations [C, H, W]``, e.g.
            ``{"residual on": {"conv1": a, "conv2_x": b}, "residual off": {...}}``.
        path: Where to write the PNG.
        channels: The first ``channels`` channels of each map are shown, each min-max scaled.
        title: A caption.

    Raises:
        ConfigError: ``maps`` holds no feature map, or one that is not three-dimensional.
    """
    rows = [(variant, stage, act) for variant, by in maps.items() for stage, act in by.items()]
    if not rows:
        raise ConfigError("no feature maps to plot")
    bad = [f"{v}/{s}" for v, s, a in rows if getattr(a, "ndim", 0) != 3]
    if bad:
        raise ConfigError(f"feature maps must be [C, H, W] arrays; not so for {', '.join(bad)}")
    fig = _new_figure(FEATURES_SIZE, left=0.08, right=0.99, bottom=0.02, top=0.93)
    axes = fig.subplots(len(rows), channels, squeeze=False)
    for (variant, stage, act), row_axes in zip(rows, axes, strict=True):
        for channel, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if channel < act.shape[0]:
                plane = act[channel]
                low, high = float(plane.min()), float(plane.max())
                scaled = (plane - low) / (high - low) if high > low else plane * 0.0
                ax.imshow(scaled, cmap="viridis", vmin=0.0, vmax=1.0)
            else:
                ax.set_axis_off()
        row_axes[0].set_ylabel(f"{variant}\n{stage}", fontsize=7)
    fig.suptitle(title or "feature maps", fontsize=10)
    return _save(fig, path, f"feature maps · {title}" if title else "feature maps")


def depth_figure(
    series: Mapping[str, Sequence[tuple[int, MeanInterval]]],
    path: str | Path,
    *,
    metric: str = "f1",
    title: str = "",
) -> FigureFile:
    """``metric`` against depth, one line per scenario, the confidence interval as error bars.

    Args:
        series: ``scenario label -> [(depth, mean and interval), ...]``; a point with no interval
            (one seed) is drawn without an error bar.
        path: Where to write the PNG.
        metric: The metric's name (y-axis label).
        title: A caption.

    Raises:
        ConfigError: No point to plot.
    """
    if not any(series.values()):
        raise ConfigError(f"no {metric} values to plot against depth")
    lines = {
        label: [(depth, m.mean, m.half_width or 0.0) for depth, m in points]
        for label, points in series.items()
    }
    caption = title or f"{metric} vs depth (error bars: 95 % t-interval)"
    return _error_lines(
        lines,
        path,
        size=DEPTH_SIZE,
        xlabel="depth",
        ylabel=metric,
        title=caption,
        alt=f"{metric} vs depth per scenario",
        capsize=4,
        legend_size=8,
    )


def gradflow_figure(
    panels: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, title: str = ""
) -> FigureFile:
    """Gradient L2 norm of each stage against the optimiser step, one panel per run, log y.

    Args:
        panels: ``panel title -> records`` as ``GradNormLogger`` writes them (``step``,
            ``norms: {stage: norm}``); non-finite or zero norms are left out of the lines.
            Panels share the y axis, so runs side by side compare directly.
        path: Where to write the PNG.
        title: A caption.

    Raises:
        ConfigError: No panel has a record.
    """
    shown = {name: records for name, records in panels.items() if records}
    if not shown:
        raise ConfigError("no gradient-norm records to plot")
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(GRADFLOW_SIZE, left=0.08, right=0.98, bottom=0.14, top=0.82, wspace=0.08)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, (name, records) in zip(axes, shown.items(), strict=True):
        stages = list(dict.fromkeys(stage for r in records for stage in r["norms"]))
        for stage in stages:
            points = [
                (r["step"], r["norms"][stage])
                for r in records
                if isinstance(r["norms"].get(stage), int | float)
                and math.isfinite(r["norms"][stage])
                and r["norms"][stage] > 0
            ]
            if points:
                ax.plot(
                    *zip(*points, strict=True), marker="." if len(points) < 30 else "", label=stage
                )
        ax.set_yscale("log")
        ax.set_xlabel("optimiser step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, which="major")
    axes[0].set_ylabel("gradient L2 norm")
    axes[0].legend(fontsize=7)
    caption = title or "gradient norm per stage over training"
    fig.suptitle(caption, fontsize=10)
    return _save(fig, path, caption)


def lesion_figure(
    series: Mapping[str, Sequence[tuple[int, float, float]]],
    path: str | Path,
    *,
    metric: str = "accuracy",
    title: str = "",
) -> FigureFile:
    """``metric`` against the number of residual blocks deleted at test time, one line per run.

    Args:
        series: ``run label -> [(blocks deleted, mean, standard deviation), ...]`` (``k = 0``:
            the intact model), e.g. a saved lesion study's ``by_k``.
        path: Where to write the PNG.
        metric: The metric's name (y-axis label).
        title: A caption.

    Raises:
        ConfigError: No point to plot.
    """
    if not any(series.values()):
        raise ConfigError(f"no lesion {metric} values to plot")
    caption = title or f"lesion study: {metric} vs blocks deleted (error bars: ± 1 sd)"
    return _error_lines(
        series,
        path,
        size=LESION_SIZE,
        xlabel="residual blocks deleted",
        ylabel=metric,
        title=caption,
        alt=caption,
        capsize=3,
        legend_size=7,
    )


def _error_lines(
    series: Mapping[str, Sequence[tuple[int, float, float]]],
    path: str | Path,
    *,
    size: tuple[float, float],
    xlabel: str,
    ylabel: str,
    title: str,
    alt: str,
    capsize: int,
    legend_size: int,
) -> FigureFile:
    """One line per series of ``(x, mean, error)`` points (error bars), integer x ticks."""
    fig = _new_figure(size, left=0.12, right=0.96, bottom=0.14, top=0.9)
    ax = fig.subplots()
    xs: set[int] = set()
    for label, points in series.items():
        if not points:
            continue
        ordered = sorted(points)
        xs.update(x for x, _, _ in ordered)
        ax.errorbar(
            [x for x, _, _ in ordered],
            [m for _, m, _ in ordered],
            yerr=[e for _, _, e in ordered],
            marker="o",
            capsize=capsize,
            label=label,
        )
    ax.set_xticks(sorted(xs))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    ax.set_title(title, fontsize=10)
    return _save(fig, path, alt)


_LINE_STYLES = ("-", "--", ":", "-.")


def _first_seen(values: Sequence[str]) -> dict[str, int]:
    return {value: index for index, value in enumerate(dict.fromkeys(values))}


def _shown_panels(
    panels: Mapping[str, Sequence[Any]], what: str
) -> tuple[dict[str, Sequence[Any]], list[Any]]:
    """The panels that have something to draw, and all their items in order.

    Raises:
        ConfigError: No panel has an item (``what`` names them).
    """
    shown = {name: items for name, items in panels.items() if items}
    if not shown:
        raise ConfigError(f"no {what} to plot")
    return shown, [item for items in shown.values() for item in items]


def seed_curves_figure(
    panels: Mapping[str, Sequence[CurveBand]],
    path: str | Path,
    *,
    band: str = "min–max over seeds",
    title: str = "",
) -> FigureFile:
    """Seed-averaged curves overlaid, one panel per quantity (e.g. train loss, test accuracy).

    Each line is a configuration's mean over seeds against the optimiser step, its shaded band
    what ``band`` says; colour = category (e.g. depth), line style = variant (e.g. residual
    plan), the same in every panel. Panels share the x axis.

    Args:
        panels: ``panel title (the y label) -> lines``.
        path: Where to write the PNG.
        band: What the bands are, for the caption.
        title: A caption.

    Raises:
        ConfigError: No panel has a line.
    """
    shown, every = _shown_panels(panels, "seed-averaged curves")
    from matplotlib import colormaps

    colours = _first_seen([line.category for line in every])
    styles = _first_seen([line.variant for line in every])
    palette = colormaps["viridis"]
    fig = _new_figure(SEED_CURVES_SIZE, left=0.06, right=0.8, bottom=0.13, top=0.86, wspace=0.3)
    axes = fig.subplots(1, len(shown), sharex=True, squeeze=False)[0]
    for ax, (name, lines) in zip(axes, shown.items(), strict=True):
        for line in lines:
            # viridis up to 0.85: its last yellows are too pale on white
            colour = palette(0.85 * colours[line.category] / max(1, len(colours) - 1))
            style = _LINE_STYLES[styles[line.variant] % len(_LINE_STYLES)]
            ax.fill_between(line.steps, line.low, line.high, color=colour, alpha=0.15, lw=0)
            ax.plot(line.steps, line.mean, style, color=colour, marker=".", label=line.label)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    caption = title or "seed-averaged curves"
    fig.suptitle(f"{caption} (lines: mean; bands: {band})", fontsize=10)
    return _save(fig, path, f"{caption}; lines: mean over seeds, bands: {band}")


def bars_figure(
    panels: Mapping[str, Sequence[Bar]],
    path: str | Path,
    *,
    title: str = "",
) -> FigureFile:
    """Bars of means over seeds with their confidence intervals, one panel per quantity.

    In each panel the bars stand in groups by category (x axis), coloured by variant; error
    bars are the intervals (none where one seed finished), dots the seeds' own values.

    Args:
        panels: ``panel title (the y label) -> bars``.
        path: Where to write the PNG.
        title: A caption.

    Raises:
        ConfigError: No panel has a bar.
    """
    shown, every = _shown_panels(panels, "final values")
    from matplotlib import colormaps

    variants = _first_seen([bar.variant for bar in every])
    palette = colormaps["tab10"]
    width = 0.8 / len(variants)
    fig = _new_figure(BARS_SIZE, left=0.08, right=0.98, bottom=0.2, top=0.86, wspace=0.25)
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, (name, bars) in zip(axes, shown.items(), strict=True):
        categories = _first_seen([bar.category for bar in bars])
        for variant, v in variants.items():
            mine = [bar for bar in bars if bar.variant == variant]
            xs = [categories[bar.category] + (v - (len(variants) - 1) / 2) * width for bar in mine]
            errors = [bar.value.half_width or 0.0 for bar in mine]
            ax.bar(
                xs,
                [bar.value.mean for bar in mine],
                width,
                yerr=errors,
                capsize=3,
                color=palette(v),
                label=variant if ax is axes[0] else None,
            )
            for x, bar in zip(xs, mine, strict=True):
                ax.plot([x] * len(bar.value.values), bar.value.values, "k.", markersize=3)
        ax.set_xticks(range(len(categories)), list(categories), fontsize=8)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    caption = title or "final values over seeds"
    level = f"{every[0].value.confidence * 100:g} % t-interval"
    fig.suptitle(f"{caption} (error bars: {level}; dots: seeds)", fontsize=10)
    return _save(fig, path, f"{caption}; error bars: {level} over seeds, dots: seeds")
