"""The report's figures, gathered from what the report read and its cells' run directories.

This module turns the report's results (read once from the store by
:func:`resablate.report.build.build_report`; the store is not opened again here) into the plain
data :mod:`resablate.report.figures` draws:
evaluation histories, the recipe's learning-rate schedule (the engine's own schedule function),
confusion matrices and misclassified images from the per-sample predictions, feature maps of
models rebuilt from their run directories, and the ablation table's values against depth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resablate.choices import CellStatus
from resablate.report.document import FigureSection
from resablate.report.figures import (
    Bar,
    CurveBand,
    FigureFile,
    GallerySample,
    bars_figure,
    confusion_figure,
    curves_figure,
    depth_figure,
    feature_maps_figure,
    gallery_figure,
    gradflow_figure,
    lesion_figure,
    lr_schedule_figure,
    seed_curves_figure,
)
from resablate.report.stats import t_interval
from resablate.report.tables import Group, group_cells, row_label
from resablate.residual_plan import PLAN_FIELDS, RESIDUAL_OFF
from resablate.run_dir import RunDir
from resablate.trained import rebuild_model

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from resablate.grid.store import CellRow, EvaluationRow, PredictionRow
    from resablate.recipes import Recipe
    from resablate.report.build import Report
    from resablate.report.stats import MeanInterval
    from resablate.report.tables import Predictions

History = Sequence[dict[str, Any]]

#: Stages whose outputs the feature-map figure shows (the stem and the first two stages).
FEATURE_STAGES = ("conv1", "conv2_x", "conv3_x")
#: The first panels of the seed-averaged curves, (split, value) of the history records, before
#: each evaluated split's accuracy. Train records are running means since the previous
#: evaluation: the degradation problem (He et al. 2016, Fig. 1) is about them.
SEED_CURVES = (("train", "loss"), ("train", "accuracy"))
#: Cell fields a seed-averaged figure varies inside it (lines or bars); cells that agree on every
#: other field share a figure.
_OVERLAID = ("arch", "source", *PLAN_FIELDS, "seed")


def class_names(predictions: Sequence[PredictionRow]) -> tuple[str, ...]:
    """Class names from the test images' folders (``test/REAL/x.png`` → ``REAL``).

    A label whose images do not share one parent folder name is called ``class <index>``.
    """
    labels = sorted({p.label for p in predictions} | {p.pred for p in predictions})
    count = max(labels, default=1) + 1
    names = []
    for label in range(max(count, 2)):
        parents = {Path(p.path).parent.name for p in predictions if p.label == label and p.path}
        names.append(parents.pop() if len(parents) == 1 else f"class {label}")
    return tuple(names)


def history_records(evaluations: Sequence[EvaluationRow]) -> list[dict[str, Any]]:
    """Evaluation rows as the plain records :func:`curves_figure` plots."""
    return [
        {
            "step": e.step,
            "split": e.split,
            "loss": e.loss,
            "f1": e.f1,
            "accuracy": e.accuracy,
        }
        for e in evaluations
        if e.step is not None and e.split is not None
    ]


def cell_recipe(row: CellRow) -> Recipe:
    """The effective recipe of a cell: its run directory's ``recipe.json``, else rebuilt from the
    recipe name and overrides in its config."""
    return RunDir(row.run_dir or "").read_recipe(row.cell.to_dict())


def learning_rates(recipe: Recipe, total_steps: int) -> list[float]:
    """The learning rate of each optimiser step, from the engine's schedule function."""
    from resablate.engine.schedule import lr_factor, warmup_steps

    warmup = warmup_steps(total_steps, recipe.warmup_fraction)
    return [
        recipe.lr * lr_factor(step, total_steps, warmup, recipe.schedule)
        for step in range(total_steps)
    ]


def confusion_counts(predictions: Sequence[PredictionRow], num_classes: int) -> list[list[int]]:
    """Confusion counts (rows true, columns predicted) of per-sample predictions."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for p in predictions:
        matrix[p.label][p.pred] += 1
    return matrix


def misclassified(
    predictions: Sequence[PredictionRow], classes: Sequence[str], limit: int
) -> list[GallerySample]:
    """Up to ``limit`` wrongly predicted test images whose files still exist, most confident
    mistakes first (confidence = probability of the predicted class)."""
    from resablate.data.images import BadImageError, decode_image

    wrong = []
    for p in predictions:
        if p.pred == p.label or not p.path or not Path(p.path).is_file():
            continue
        prob = 0.5 if p.prob is None else float(p.prob)
        confidence = prob if p.pred == 1 else 1.0 - prob
        wrong.append((confidence, p))
    wrong.sort(key=lambda item: (-item[0], item[1].index))
    samples: list[GallerySample] = []
    for confidence, p in wrong:
        if len(samples) == limit:
            break
        try:
            image = decode_image(str(p.path))
        except BadImageError:
            continue
        samples.append(GallerySample(image, classes[p.label], classes[p.pred], confidence))
    return samples


def stage_activations(model: nn.Module, image: np.ndarray, recipe: Recipe) -> dict[str, np.ndarray]:
    """Outputs ``[C, H, W]`` of :data:`FEATURE_STAGES` for one RGB uint8 image (those the model
    has: a model without named stages has none).

    The image is resized to the recipe's ``image_size`` and normalised with its mean and std.
    """
    import torch
    import torch.nn.functional as functional

    from resablate.families import stage_layout

    layout = stage_layout(model)
    stages = {} if layout is None else layout[1]  # a model without named stages shows none
    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    pixels = functional.interpolate(
        pixels, size=(recipe.image_size, recipe.image_size), mode="bilinear", antialias=True
    )
    mean = torch.tensor(recipe.mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std).view(1, 3, 1, 1)
    captured: dict[str, np.ndarray] = {}
    handles = []
    for stage in (name for name in FEATURE_STAGES if name in stages):
        module = model.get_submodule(stages[stage][-1])

        def hook(_module: Any, _inputs: Any, output: Any, stage: str = stage) -> None:
            captured[stage] = output[0].detach().float().numpy()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model((pixels - mean) / std)
    finally:
        for handle in handles:
            handle.remove()
    return {stage: captured[stage] for stage in FEATURE_STAGES if stage in captured}


def _feature_pairs(report: Report) -> list[tuple[CellRow, CellRow]]:
    """Per architecture: a finished residual-on cell and a residual-off cell with the same
    weights, seed and everything else, both with a saved model."""

    def ready(row: CellRow) -> bool:
        return (
            row.status == CellStatus.DONE
            and bool(row.run_dir)
            and RunDir(str(row.run_dir)).has_weights
        )

    on = {_but_residual(r): r for r in report.cells if r.cell.residual.is_on and ready(r)}
    pairs: dict[tuple[str, str], tuple[CellRow, CellRow]] = {}
    for row in report.cells:
        if row.cell.residual.text == RESIDUAL_OFF and ready(row) and _but_residual(row) in on:
            pairs.setdefault((row.cell.arch, row.cell.source), (on[_but_residual(row)], row))
    return list(pairs.values())


def _but_residual(row: CellRow) -> str:
    """A cell's config without its residual plan: cells that differ only there share it."""
    return _config_without(row, PLAN_FIELDS)


def _config_without(row: CellRow, fields: Sequence[str]) -> str:
    """A cell's config without ``fields``: cells that differ only there share it."""
    rest = {k: v for k, v in row.cell.to_dict().items() if k not in fields}
    return json.dumps(rest, sort_keys=True)


def seed_band(histories: Sequence[History], split: str, key: str) -> list[tuple[int, list[float]]]:
    """``(step, the seeds' values)`` at every step where each history has ``key`` for ``split``.

    Args:
        histories: One seed's records each (:func:`history_records`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        key: ``"loss"``, ``"accuracy"`` or ``"f1"``.
    """
    by_seed = [
        {int(r["step"]): float(r[key]) for r in h if r["split"] == split and r.get(key) is not None}
        for h in histories
    ]
    steps = sorted(set.intersection(*(set(values) for values in by_seed))) if by_seed else []
    return [(step, [values[step] for values in by_seed]) for step in steps]


def _last_value(history: History, split: str, key: str) -> float | None:
    """The value of ``key`` in the last record of ``split`` (by step), or None."""
    points = [(int(r["step"]), r[key]) for r in history if r["split"] == split]
    points = [(step, value) for step, value in points if value is not None]
    return float(max(points)[1]) if points else None


def _variant(row: CellRow) -> str:
    return f"residual {row.cell.residual.label}"


def _overlaid(groups: Sequence[Group]) -> list[list[Group]]:
    """Groups of seeds side by side in one figure: those that differ only in architecture and
    residual plan, ordered by depth, then residual on before off."""
    figures: dict[str, list[Group]] = {}
    for group in groups:
        figures.setdefault(_config_without(group.first.cell_row, _OVERLAID), []).append(group)
    return [
        sorted(
            members, key=lambda g: (g.first.cell_row.depth or 0, not g.first.cell.residual.is_on)
        )
        for members in figures.values()
    ]


def seed_curves(
    groups: Sequence[Group], histories: Mapping[str, History]
) -> dict[str, list[CurveBand]]:
    """The panels of one seed-averaged curves figure: ``"train loss"``, ``"train accuracy"``
    (:data:`SEED_CURVES`), then ``"<split> accuracy"`` for each evaluated split (``"test"``) ->
    one line per group (mean over its finished seeds; band: their minimum and maximum), at the
    steps every seed has.

    Args:
        groups: Groups of cells that differ only in their seed, one line each.
        histories: Cell id -> its history records (:func:`history_records`).
    """
    rows = [r for g in groups for r in g.done]
    evaluated = sorted({str(e["split"]) for r in rows for e in histories.get(r.cell_id, [])})
    quantities = [*SEED_CURVES, *((split, "accuracy") for split in evaluated if split != "train")]
    panels: dict[str, list[CurveBand]] = {}
    for split, key in quantities:
        lines = []
        for group in groups:
            points = seed_band([histories.get(r.cell_id, []) for r in group.done], split, key)
            if not points:
                continue
            lines.append(
                CurveBand(
                    category=row_label(group.first.cell_row),
                    variant=_variant(group.first.cell_row),
                    steps=tuple(step for step, _ in points),
                    mean=tuple(sum(v) / len(v) for _, v in points),
                    low=tuple(min(v) for _, v in points),
                    high=tuple(max(v) for _, v in points),
                    seeds=len(group.done),
                )
            )
        panels[f"{split} {key}"] = lines
    return panels


def final_bars(
    groups: Sequence[Group], histories: Mapping[str, History], metric: str
) -> dict[str, list[Bar]]:
    """The panels of one bar chart: the last training loss (running mean over the steps since
    the previous evaluation) and the test ``metric`` of each group, each as its mean and
    t-interval over the group's finished seeds."""
    losses, metrics = [], []
    for group in groups:
        finals = [
            value
            for row in group.done
            if (value := _last_value(histories.get(row.cell_id, []), "train", "loss")) is not None
        ]
        if finals:
            losses.append(
                Bar(
                    row_label(group.first.cell_row),
                    _variant(group.first.cell_row),
                    t_interval(finals),
                )
            )
        test = group.interval(metric)
        if test is not None:
            metrics.append(
                Bar(row_label(group.first.cell_row), _variant(group.first.cell_row), test)
            )
    return {"final train loss": losses, f"test {metric}": metrics}


def _seed_figures(
    groups: Sequence[Group], histories: Mapping[str, History], metric: str, target: Path
) -> tuple[list[FigureFile], list[FigureFile]]:
    curves, bars = [], []
    for index, members in enumerate(_overlaid(groups)):
        if not any(len(g.done) > 1 for g in members):
            continue  # one seed each: the per-cell curves show it all
        rest = members[0].first.cell.label.split(" · ")[1:-1]
        shared = " · ".join(p for p in rest if not p.startswith("residual")) or "all cells"
        lines = seed_curves(members, histories)
        if any(lines.values()):
            path = target / f"seed-curves-{index}.png"
            curves.append(seed_curves_figure(lines, path, title=f"seed-averaged curves · {shared}"))
        finals = final_bars(members, histories, metric)
        if any(finals.values()):
            path = target / f"final-bars-{index}.png"
            bars.append(bars_figure(finals, path, title=f"final values · {shared}"))
    return curves, bars


def gradflow_figures(done: Sequence[CellRow], target: Path) -> list[FigureFile]:
    """One figure per configuration whose cells logged gradient norms (``gradflow.jsonl``):
    its residual plans side by side, one line per stage."""
    groups: dict[str, list[tuple[CellRow, list[dict[str, Any]]]]] = {}
    for row in done:
        records = RunDir(row.run_dir).read_gradflow() if row.run_dir else []
        if records:
            groups.setdefault(_but_residual(row), []).append((row, records))
    figures: list[FigureFile] = []
    for index, members in enumerate(groups.values()):
        first = members[0][0]
        panels = {row.cell.residual.title: records for row, records in members}
        title = first.cell.label if len(members) == 1 else row_label(first)
        figures.append(
            gradflow_figure(
                panels,
                target / f"gradflow-{index}.png",
                title=f"gradient norm per stage over training · {title}",
            )
        )
    return figures


def lesion_figures(done: Sequence[CellRow], target: Path) -> list[FigureFile]:
    """Saved lesion studies (``lesion.json`` in run dirs): accuracy vs blocks deleted, one line
    per cell."""
    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in done:
        study = RunDir(row.run_dir).read_lesion() if row.run_dir else None
        if study is not None:
            by_k = study["by_k"]
            series[row.cell.label] = [
                (int(p["k"]), float(p["accuracy_mean"]), float(p["accuracy_std"])) for p in by_k
            ]
    if not series:
        return []
    return [lesion_figure(series, target / "lesion.png")]


def cka_figures(done: Sequence[CellRow], target: Path) -> list[FigureFile]:
    """Saved CKA comparisons (``cka-*.json`` in run dirs, ``resablate compare-features``): each
    heat map redrawn by the diagnostics' own :func:`~resablate.diagnostics.cka.plot_cka`."""
    from PIL import Image

    from resablate.diagnostics.cka import CKAResult, plot_cka

    figures: list[FigureFile] = []
    for row in done:
        if not row.run_dir:
            continue
        for saved in RunDir(row.run_dir).read_cka():
            result = CKAResult.from_dict(saved)
            title = f"linear CKA · {result.label_a} vs {result.label_b}"
            path = plot_cka(result, target / f"cka-{len(figures)}.png", title=title)
            with Image.open(path) as image:
                width, height = image.size
            figures.append(FigureFile(path, title, width, height))
    return figures


def _depth_series(report: Report) -> dict[str, list[tuple[int, MeanInterval]]]:
    table = report.ablation
    series: dict[str, list[tuple[int, MeanInterval]]] = {}
    if table is None:
        return series
    depth_of = dict(zip(table.rows, table.depths, strict=True))
    for entry in table.entries:
        depth = depth_of.get(entry.row)
        if depth is not None and entry.value is not None:
            series.setdefault(entry.column, []).append((depth, entry.value))
    return series


def report_figures(
    report: Report, folder: str | Path, *, feature_maps: bool = True, gallery_size: int = 12
) -> list[FigureSection]:
    """Draw every figure of a report into ``folder``, grouped in sections.

    Sections (each only when it has something to show): metric vs depth; seed-averaged curves
    and bar charts of the final values over seeds (configurations with several finished seeds);
    training curves per finished cell; the learning-rate schedule per recipe; confusion
    matrices and misclassified test images per configuration (seeds pooled for the matrix,
    lowest seed for the gallery); gradient norms per stage over training (cells run with
    ``grid --log-gradflow``); saved lesion studies (``resablate lesion RUN_DIR``) and CKA
    comparisons (``resablate compare-features``); feature maps of the stem and first stages
    with and without residuals.

    Args:
        report: The report whose store and cells to read.
        folder: Where the PNG files go.
        feature_maps: Rebuild models from their run directories for the feature-map figure.
        gallery_size: Most misclassified images shown per configuration.
    """
    target = Path(folder)
    series = _depth_series(report)
    depth = (
        [depth_figure(series, target / "metric-vs-depth.png", metric=report.metric)]
        if any(len(points) > 1 for points in series.values())
        else []
    )
    results = report.results
    finished = [r for r in results.final if r.done]
    done = [r.cell_row for r in finished]
    groups = group_cells(finished)
    metric = report.metric if report.metric != "loss" else "f1"
    histories = {row.cell_id: history_records(results.histories[row.cell_id]) for row in done}
    curves = [
        curves_figure(
            histories[row.cell_id],
            target / f"curves-{row.cell_id}.png",
            metric=metric,
            title=row.cell.label,
        )
        for row in done
        if histories[row.cell_id]
    ]
    predictions = results.predictions
    seed_curves_figures, bar_figures = _seed_figures(groups, histories, metric, target)
    confusions, galleries = _prediction_figures(groups, predictions, target, gallery_size)
    maps = _feature_map_figures(report, predictions, target) if feature_maps else []
    candidates = [
        (
            f"{report.metric} vs depth",
            "One line per residual × weights scenario; error bars: 95 % t-interval over "
            "seeds (none where a single seed finished).",
            depth,
        ),
        (
            "Seed-averaged training curves",
            "Mean over seeds against the optimiser step, one line per architecture × residual "
            "plan (colour: architecture, line style: residual plan), the band from the lowest "
            "to the highest seed; train: running means since the previous evaluation, test: "
            "evaluations. A figure per configuration of the other axes.",
            seed_curves_figures,
        ),
        (
            "Final values over seeds",
            "The last training loss and the test metric of each architecture × residual plan: "
            "bars the mean over seeds, error bars the 95 % t-interval, dots the seeds.",
            bar_figures,
        ),
        (
            "Training curves",
            "Loss and metric against the optimiser step for each finished cell "
            "(train: running means since the previous evaluation; val/test: evaluations).",
            curves,
        ),
        (
            "Learning-rate schedule",
            "The learning rate of each optimiser step, computed from the cell's recipe by "
            "the engine's schedule function over the steps the cell took.",
            _schedule_figures(done, target),
        ),
        (
            "Confusion matrices",
            "Test-set counts per configuration, summed over its finished seeds "
            "(rows: true class, columns: predicted class).",
            confusions,
        ),
        (
            "Misclassified test images",
            "The most confident mistakes of each configuration (lowest finished seed), with "
            "the true and predicted class and the probability of the predicted class.",
            galleries,
        ),
        (
            "Gradient norm per stage over training",
            "L2 norm of each stage's gradient (before the optimiser step) against the step, "
            "log scale; residual plans of the same configuration side by side. Logged by "
            "`resablate grid --log-gradflow`.",
            gradflow_figures(done, target),
        ),
        (
            "Lesion studies",
            "Test accuracy with k residual blocks deleted at test time (k = 0: intact; "
            "mean ± sd over single deletions and random draws), from the studies saved by "
            "`resablate lesion RUN_DIR`.",
            lesion_figures(done, target),
        ),
        (
            "Representation similarity (CKA)",
            "Linear CKA between the stage outputs of two runs on run A's test images (1 = "
            "the same representation up to rotation and scale), from the comparisons saved "
            "by `resablate compare-features RUN_A RUN_B` in run A's directory.",
            cka_figures(done, target),
        ),
        (
            "Feature maps",
            "Outputs of the stem (conv1) and the first two stages (conv2_x, conv3_x) for "
            "the first test image, residual connections on vs off (same weights and "
            "seed); first 8 channels, each min-max scaled.",
            maps,
        ),
    ]
    return [FigureSection(title, text, tuple(figs)) for title, text, figs in candidates if figs]


def _schedule_figures(done: Sequence[CellRow], target: Path) -> list[FigureFile]:
    figures: list[FigureFile] = []
    seen: set[tuple[str, int]] = set()
    for row in done:
        if not row.steps:
            continue
        recipe = cell_recipe(row)
        key = (json.dumps(recipe.to_dict(), sort_keys=True, default=str), row.steps)
        if key in seen:
            continue
        seen.add(key)
        figures.append(
            lr_schedule_figure(
                learning_rates(recipe, row.steps),
                target / f"lr-{len(figures)}.png",
                title=f"recipe {recipe.name} · {recipe.schedule} · {row.steps} steps",
            )
        )
    return figures


def _prediction_figures(
    groups: Sequence[Group],
    predictions: Predictions,
    target: Path,
    gallery_size: int,
) -> tuple[list[FigureFile], list[FigureFile]]:
    confusions, galleries = [], []
    for index, group in enumerate(groups):
        pooled = [p for r in group.done for p in predictions[r.cell_row.cell_id]]
        if not pooled:
            continue
        classes = class_names(pooled)
        first = group.done[0].cell_row
        config = first.cell.label.rsplit(" · seed ", 1)[0]
        seeds = len(group.done)
        confusions.append(
            confusion_figure(
                confusion_counts(pooled, len(classes)),
                classes,
                target / f"confusion-{index}.png",
                title=f"{config} ({seeds} seed{'s' * (seeds > 1)})",
            )
        )
        samples = misclassified(predictions[first.cell_id], classes, gallery_size)
        if not samples and any(p.pred != p.label for p in predictions[first.cell_id]):
            continue  # mistakes exist but their image files are gone: nothing honest to show
        galleries.append(
            gallery_figure(samples, target / f"misclassified-{index}.png", title=first.cell.label)
        )
    return confusions, galleries


def _feature_map_figures(
    report: Report, predictions: Predictions, target: Path
) -> list[FigureFile]:
    from resablate.data.images import decode_image

    figures: list[FigureFile] = []
    for on, off in _feature_pairs(report):
        preds = predictions.get(on.cell_id, ())
        path = next((p.path for p in preds if p.path and Path(p.path).is_file()), None)
        if path is None:
            continue
        image = decode_image(path)
        recipe = cell_recipe(on)
        maps = {
            f"residual {row.cell.residual.text}": stage_activations(
                rebuild_model(RunDir(str(row.run_dir))), image, recipe
            )
            for row in (on, off)
        }
        figures.append(
            feature_maps_figure(
                maps,
                target / f"features-{on.cell_id}.png",
                title=f"{row_label(on)} · {Path(path).name}",
            )
        )
    return figures
