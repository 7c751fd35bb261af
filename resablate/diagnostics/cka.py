"""Representation similarity between two networks: linear CKA of their stage outputs.

Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural
Network Representations Revisited", eq. 5): for two representations of the same ``n`` inputs,
``X`` (``n × p``) and ``Y`` (``n × q``), with every column centred over the inputs,

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)

It is 1 for identical representations, invariant to orthogonal transforms and isotropic scaling
of either one, and lies in [0, 1]. It is computed here through the ``n × n`` Gram matrices
(``||Yᵀ X||²_F = <X Xᵀ, Y Yᵀ>_F``), in float64, so wide feature maps never need a ``p × p``
matrix. A representation that is constant over the inputs has no defined CKA: the value is NaN.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from resablate.diagnostics._figures import pyplot, save_figure
from resablate.diagnostics._layout import stage_output_modules
from resablate.errors import ConfigError

# Columns centred and multiplied per chunk, so a float64 copy of a whole wide feature map is
# never held at once.
_CHUNK = 1 << 16


def centered_gram(features: Tensor) -> Tensor:
    """The Gram matrix ``X Xᵀ`` of column-centred features, float64 on the features' device.

    Args:
        features: ``[n, ...]``: one row of features per input (trailing dimensions flattened).

    Returns:
        ``[n, n]`` float64.
    """
    flat = features.detach().reshape(features.shape[0], -1)
    n = flat.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[1], _CHUNK):
        chunk = flat[:, start : start + _CHUNK].to(torch.float64)
        chunk = chunk - chunk.mean(dim=0, keepdim=True)
        gram += chunk @ chunk.T
    return gram


def cka_from_grams(gram_x: Tensor, gram_y: Tensor) -> float:
    """Linear CKA from two centred Gram matrices (:func:`centered_gram`); NaN if one is zero."""
    if gram_x.shape != gram_y.shape:
        raise ConfigError(
            f"CKA needs the same inputs on both sides: {gram_x.shape[0]} vs {gram_y.shape[0]} rows"
        )
    cross = float((gram_x * gram_y).sum())
    norms = float(gram_x.square().sum().sqrt()) * float(gram_y.square().sum().sqrt())
    return cross / norms if norms > 0 else math.nan


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between two representations of the same inputs.

    Args:
        x: ``[n, ...]`` features of ``n`` inputs (trailing dimensions flattened).
        y: ``[n, ...]`` features of the same ``n`` inputs, any width.

    Returns:
        A value in [0, 1] (NaN when either representation is constant over the inputs).

    Raises:
        ConfigError: Different numbers of rows, or fewer than 2 inputs.
    """
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"CKA needs the same inputs on both sides: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] < 2:
        raise ConfigError(f"CKA needs at least 2 inputs, got {x.shape[0]}")
    return cka_from_grams(centered_gram(x), centered_gram(y))


@dataclass(frozen=True)
class CKAResult:
    """Linear CKA between every stage output of model A and every stage output of model B.

    Attributes:
        rows: Stages (or module paths) of model A, in forward order.
        columns: Stages (or module paths) of model B, in forward order.
        matrix: ``matrix[i][j]`` = CKA(A's ``rows[i]``, B's ``columns[j]``); NaN where a stage's
            output is constant over the images.
        n_images: Number of images the representations were computed on.
        label_a: Name of model A (e.g. a run directory's cell label).
        label_b: Name of model B.
        notes: Warnings for the user (e.g. a run's dataset changed since it was trained).
    """

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    matrix: tuple[tuple[float, ...], ...]
    n_images: int
    label_a: str = "A"
    label_b: str = "B"
    notes: tuple[str, ...] = ()

    def value(self, stage_a: str, stage_b: str) -> float:
        """CKA between A's ``stage_a`` and B's ``stage_b``.

        Raises:
            ConfigError: A stage not in the result.
        """
        for stage, names, side in ((stage_a, self.rows, "A"), (stage_b, self.columns, "B")):
            if stage not in names:
                raise ConfigError(f"stage {stage!r} of model {side} not in {', '.join(names)}")
        return self.matrix[self.rows.index(stage_a)][self.columns.index(stage_b)]

    def diagonal(self) -> dict[str, float]:
        """CKA between the same-named stages of A and B, in A's order."""
        return {s: self.value(s, s) for s in self.rows if s in self.columns}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types (NaN written as None)."""
        return {
            "label_a": self.label_a,
            "label_b": self.label_b,
            "n_images": self.n_images,
            "rows": list(self.rows),
            "columns": list(self.columns),
            "matrix": [[None if math.isnan(v) else v for v in row] for row in self.matrix],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CKAResult:
        """The inverse of :meth:`to_dict` (``None`` back to NaN)."""
        matrix = tuple(
            tuple(math.nan if v is None else float(v) for v in row) for row in data["matrix"]
        )
        return cls(
            tuple(data["rows"]),
            tuple(data["columns"]),
            matrix,
            int(data["n_images"]),
            data["label_a"],
            data["label_b"],
            tuple(data.get("notes", ())),
        )

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(
            title=f"linear CKA on {self.n_images} images: rows {self.label_a}, "
            f"columns {self.label_b}",
            title_justify="left",
        )
        table.add_column("A \\ B")
        for column in self.columns:
            table.add_column(column, justify="right")
        for stage, row in zip(self.rows, self.matrix, strict=True):
            table.add_row(stage, *("—" if math.isnan(v) else f"{v:.3f}" for v in row))
        return table


def _resolve_modules(model: nn.Module, names: Sequence[str] | None, side: str) -> dict[str, str]:
    from resablate.families import paper_stage

    outputs = stage_output_modules(model)
    if names is None:
        return outputs
    resolved: dict[str, str] = {}
    for name in names:
        if name in outputs:
            resolved[name] = outputs[name]
            continue
        try:
            stage = paper_stage(name)
        except ConfigError:
            stage = ""
        if stage in outputs:
            resolved[stage] = outputs[stage]
            continue
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"model {side} has no stage or module {name!r}; stages: {', '.join(outputs)} "
                "(or a module path such as 'layer3.1')"
            ) from None
        resolved[name] = name
    return resolved


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def stage_grams(
    model: nn.Module, images: Tensor, modules: dict[str, str], *, side: str = "A"
) -> dict[str, Tensor]:
    """Centred Gram matrices of the named modules' outputs on ``images`` (eval mode, no grad).

    The model's train/eval flags are restored afterwards; its weights are not touched.

    Args:
        model: The network.
        images: ``[n, 3, H, W]`` normalised float images (moved to the model's device).
        modules: Name to report -> module path whose output is taken.
        side: Which model this is, for error messages.

    Raises:
        ConfigError: A module runs more than once per forward pass, or never.
    """
    grams: dict[str, Tensor] = {}
    calls: dict[str, int] = dict.fromkeys(modules, 0)

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            calls[name] += 1
            grams[name] = centered_gram(output)

        return hook

    device = next(model.parameters()).device
    handles = [
        model.get_submodule(path).register_forward_hook(hook_for(name))
        for name, path in modules.items()
    ]
    try:
        with _eval_mode(model), torch.no_grad():
            model(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
    wrong = [name for name, count in calls.items() if count != 1]
    if wrong:
        raise ConfigError(
            f"module {modules[wrong[0]]!r} of model {side} ran {calls[wrong[0]]} times in one "
            "forward pass; CKA needs a module that runs exactly once"
        )
    return grams


def compare_features(
    model_a: nn.Module,
    model_b: nn.Module,
    images: Tensor,
    stages: Sequence[str] | None = None,
    *,
    labels: tuple[str, str] = ("A", "B"),
) -> CKAResult:
    """Linear CKA between the stage outputs of two models on the same images.

    Both models run once on ``images`` in eval mode (BatchNorm running statistics) without
    gradients; their train/eval flags are restored afterwards and their weights never change.
    The two models may differ in architecture (CKA compares widths freely).

    Args:
        model_a: First network (ResNet-like, or a registered family's model).
        model_b: Second network.
        images: ``[n, 3, H, W]`` normalised float images, ``n >= 2``.
        stages: Stages to compare on both models: the papers' names (``conv1``, ``conv4_x``),
            the code's (``layer3``) or any module path (``layer3.1``). ``None`` = every stage.
        labels: Names of the two models in the result.

    Raises:
        ConfigError: Fewer than 2 images, or an unknown stage or module.
    """
    if images.dim() != 4 or images.shape[0] < 2:
        raise ConfigError(
            f"compare_features needs images [n>=2, C, H, W], got {list(images.shape)}"
        )
    modules_a = _resolve_modules(model_a, stages, labels[0])
    modules_b = _resolve_modules(model_b, stages, labels[1])
    grams_a = stage_grams(model_a, images, modules_a, side=labels[0])
    grams_b = stage_grams(model_b, images, modules_b, side=labels[1])
    matrix = tuple(
        tuple(cka_from_grams(grams_a[a], grams_b[b]) for b in modules_b) for a in modules_a
    )
    return CKAResult(
        rows=tuple(modules_a),
        columns=tuple(modules_b),
        matrix=matrix,
        n_images=int(images.shape[0]),
        label_a=labels[0],
        label_b=labels[1],
    )


def plot_cka(result: CKAResult, path: str | Path, *, title: str | None = None) -> Path:
    """Heat map of a :class:`CKAResult` (rows: model A's stages, columns: B's), written as PNG.

    Colour scale fixed to [0, 1]; each cell carries its value; NaN cells are left blank.

    Returns:
        The written path.
    """
    plt = pyplot()
    import numpy as np

    values = np.array(result.matrix, dtype=float)
    fig, ax = plt.subplots(
        figsize=(1.2 + 0.9 * len(result.columns), 1.0 + 0.7 * len(result.rows)), squeeze=True
    )
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(result.columns)), result.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(result.rows)), result.rows)
    ax.set_xlabel(result.label_b)
    ax.set_ylabel(result.label_a)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if not math.isnan(value):
                colour = "black" if value > 0.6 else "white"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=ax, label="linear CKA")
    ax.set_title(title or f"linear CKA, {result.n_images} images")
    return save_figure(fig, path)


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    stages: Sequence[str] | None = None,
    limit: int | None = 64,
    seed: int = 0,
) -> CKAResult:
    """:func:`compare_features` of two finished run directories on run A's test images.

    Both models see the same images: a seeded subset of ``limit`` test images of run A's
    dataset, through the eval transform of the recipe run A trained with. The result's labels are
    the runs' cell labels; its notes say when a run's recorded dataset fingerprint differs from
    the dataset's now.

    Raises:
        ConfigError: Not a finished run directory, or an unknown stage.
        DataError: Run A's dataset cannot be read.
    """
    from resablate.diagnostics.runs import eval_images, load_run

    first, second = load_run(run_a), load_run(run_b)
    data = eval_images(first.cell.data, first.recipe, limit=limit, seed=seed)
    result = compare_features(
        first.model,
        second.model,
        data.images,
        stages,
        labels=(first.cell.label, second.cell.label),
    )
    notes = tuple(n for n in (first.data_note(data), second.data_note(data)) if n is not None)
    return dataclasses.replace(result, notes=notes)


def save_cka(result: CKAResult, run_a: str | Path, run_b: str | Path) -> tuple[Path, Path]:
    """Keep a comparison in run A's directory: ``cka-<B>.json`` (:meth:`CKAResult.to_dict`) and
    ``cka-<B>.png``, where ``<B>`` is run B's folder name (a grid cell's id); written atomically,
    replacing an earlier comparison with the same run. ``resablate report`` shows them.

    Returns:
        The JSON and PNG paths.
    """
    from resablate.run_dir import RunDir

    run = RunDir(run_a)
    target = run.write_cka(run_b, result.to_dict())
    return target, plot_cka(result, run.cka_stem(run_b).with_suffix(".png"))
