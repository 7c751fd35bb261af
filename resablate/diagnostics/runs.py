"""Inputs of the diagnostics: a finished run's model, a freshly built model, a split's images.

A finished run directory (``docs/architecture.md``, "Run directory") holds ``cell.json`` (the
cell's config) and ``model.safetensors`` (its final weights); a grid directory of one cell (what
``resablate train`` writes) stands for its cell's run directory (:func:`run_directory`).
:func:`load_run` rebuilds the trained model with its residual plan
(:func:`resablate.trained.rebuild_model`).
:func:`eval_images` turns a dataset split into the normalised float tensor the model was
evaluated on (the recipe's eval transform).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from resablate.errors import ConfigError, DataError
from resablate.grid.cell import Cell
from resablate.grid.job import dataset_root
from resablate.recipes import Recipe, get_recipe
from resablate.run_dir import RunDir
from resablate.trained import rebuild_model


@dataclass(frozen=True)
class LoadedRun:
    """A finished run, rebuilt.

    Attributes:
        model: The trained model (CPU, eval mode, the cell's residual plan applied).
        cell: The run's cell.
        recipe: The recipe the run trained with (``recipe.json``; the cell's named recipe when
            the file is missing). Its eval transform defines the model's inputs.
        run_dir: The run directory.
        dataset_fingerprint: The dataset fingerprint the run recorded (``result.json``), if any.
    """

    model: nn.Module
    cell: Cell
    recipe: Recipe
    run_dir: Path
    dataset_fingerprint: str | None = None

    def data_note(self, images: EvalImages) -> str | None:
        """A warning when ``images`` come from a dataset whose fingerprint differs from the run's.

        The fingerprint covers file names, sizes and modification times: a dataset rewritten with
        the same images also differs.
        """
        if self.dataset_fingerprint is None or self.dataset_fingerprint == images.fingerprint:
            return None
        return (
            f"dataset {images.root} differs from the one run {self.run_dir} recorded (fingerprint "
            f"of file names, sizes and times {self.dataset_fingerprint[:12]} then, "
            f"{images.fingerprint[:12]} now): if its images changed, the run's recorded metrics "
            "are not comparable with these"
        )


@dataclass(frozen=True)
class EvalImages:
    """Model inputs of one dataset split.

    Attributes:
        images: ``[n, 3, S, S]`` float32, normalised with the recipe's eval transform.
        labels: ``[n]`` int64 class indices.
        classes: Class names (a label indexes this tuple).
        split: The split's name.
        root: The dataset folder.
        fingerprint: The dataset's fingerprint (``resablate.data.scan``).
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    split: str
    root: Path
    fingerprint: str


def run_directory(path: str | os.PathLike[str]) -> Path:
    """The run directory ``path`` stands for: itself, or the one cell's of a grid directory.

    Raises:
        ConfigError: ``path`` is a grid directory of several cells (the message names where
            their run directories are).
        StoreError: The grid directory's store cannot be read.
    """
    from resablate.grid.runner import CELLS_FOLDER, cell_run_dir
    from resablate.grid.store import STORE_FILENAME, ResultStore

    folder = Path(path).expanduser()
    if RunDir(folder).cell_file.is_file() or not (folder / STORE_FILENAME).is_file():
        return folder
    with ResultStore.open(folder) as store:
        ids = [row.cell_id for row in store.cells()]
    if len(ids) != 1:
        raise ConfigError(
            f"{folder} is a grid directory of {len(ids)} cells, not one run; name one cell's "
            f"run directory, {folder / CELLS_FOLDER}/<cell id>"
        )
    return cell_run_dir(folder, ids[0])


def load_run(run_dir: str | os.PathLike[str]) -> LoadedRun:
    """Rebuild the model of a finished run directory (``cell.json`` + ``model.safetensors``), or
    of a one-cell grid directory's cell.

    Raises:
        ConfigError: The folder is not a run directory, or the run has no final weights
            (unfinished or diverged).
        WeightsError: ``model.safetensors`` does not fit the cell's architecture.
    """
    run = RunDir(run_directory(run_dir))
    config = run.read_cell()
    try:
        cell = Cell.from_dict(config)
    except TypeError as exc:
        raise ConfigError(f"{run.cell_file} is not a valid cell: {exc}") from None
    model = rebuild_model(run)
    result = run.read_result() or {}
    fingerprint = (result.get("environment") or {}).get("dataset_fingerprint")
    return LoadedRun(
        model=model,
        cell=cell,
        recipe=run.read_recipe(config),
        run_dir=run.path,
        dataset_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
    )


def eval_images(
    data: str | os.PathLike[str],
    recipe: Recipe,
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
) -> EvalImages:
    """The images of one split as the model sees them at evaluation (the recipe's eval transform).

    Args:
        data: Dataset folder, or ``"demo"``.
        recipe: Gives the storage size, image size and normalisation.
        split: ``"test"``, ``"val"`` or ``"train"``.
        limit: Keep at most this many images: a seeded random subset, in dataset order.
        seed: Seed of that subset.

    Raises:
        DataError: Unreadable dataset, or a split it does not have.
        ConfigError: ``limit`` below 1.
    """
    from resablate.data import BatchTransform, decode_split, scan

    if limit is not None and limit < 1:
        raise ConfigError(f"image limit must be at least 1, not {limit}")
    root = dataset_root(data)
    dataset = scan(root)
    if split not in dataset.splits:
        legal = ", ".join(dataset.splits)
        raise DataError(f"dataset {root} has no {split!r} split; splits: {legal}")
    decoded = decode_split(dataset, split, storage_size=recipe.storage_size)
    n = len(decoded)
    index = torch.arange(n)
    if limit is not None and limit < n:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(n, generator=generator)[:limit].sort().values
    transform = BatchTransform.from_recipe(recipe, train=False)
    return EvalImages(
        images=transform(decoded.get_batch(index)),
        labels=decoded.labels[index].to(torch.int64).cpu(),
        classes=tuple(decoded.classes),
        split=split,
        root=root,
        fingerprint=dataset.fingerprint,
    )


def build_for_data(
    arch: str,
    *,
    weights: str,
    num_classes: int,
    source: str = "torchvision",
    seed: int = 0,
) -> nn.Module:
    """Build ``arch`` for a dataset of ``num_classes`` classes (eval mode).

    Args:
        arch: Any model name :func:`resablate.model_spec.parse_model` reads (a registered
            architecture, ``timm:NAME``, ``hf:ID``/``hf:DIR``, ``package.module:factory``).
        weights: ``"none"`` (random init from ``seed``), ``"demo"`` (demo-pretrained; pre-trained
            once on the CPU when missing, which takes minutes), ``"imagenet"`` or a file path.
        num_classes: Classes of the dataset (the head is new unless the file's fits).
        source: The source of a name without one: ``"torchvision"``, ``"timm"`` or ``"hf"``.
        seed: Seeds the random initialisation (head included).

    Raises:
        ConfigError, WeightsError, WeightsUnavailableError: As :func:`resablate.build_model`.
    """
    from resablate.weights import build_model

    if weights == "demo":
        from resablate.demo_weights import ensure_demo_weights

        ensure_demo_weights(arch, source)
    torch.manual_seed(seed)
    model = build_model(arch, weights=weights, num_classes=num_classes, source=source)
    return model.eval()


@dataclass(frozen=True)
class Subject:
    """A model and the images to diagnose it on.

    Attributes:
        model: The model (CPU, eval mode).
        label: A human name: the run's cell label, or ``"resnet18 · weights demo"``.
        data: The images of the split, as the model sees them.
        positive: Index of the positive class (the recipe's) for F1.
        notes: Warnings for the user (e.g. the run's dataset changed since it was trained).
    """

    model: nn.Module
    label: str
    data: EvalImages
    positive: int
    notes: tuple[str, ...] = ()


def load_subject(
    run_dir: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    weights: str = "none",
    source: str = "torchvision",
    data: str = "demo",
    recipe: str = "demo",
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
) -> Subject:
    """A finished run's model and its dataset split, or a freshly built model and a dataset.

    Give either ``run_dir`` (the run's own data and recipe are used) or ``arch`` (with
    ``weights``, ``source``, ``data`` and ``recipe``).

    Args:
        run_dir: A finished run directory.
        arch: Architecture to build instead.
        weights: As :func:`build_for_data`.
        source: ``"torchvision"`` or ``"timm"``.
        data: Dataset folder or ``"demo"`` (with ``arch``).
        recipe: Recipe whose eval transform feeds the model (with ``arch``).
        split: The split to take images from.
        limit: At most this many images (a seeded subset).
        seed: Seed of the subset and of a random initialisation.

    Raises:
        ConfigError: Both or neither of ``run_dir`` and ``arch``; any error of the loaders.
    """
    if (run_dir is None) == (arch is None):
        raise ConfigError("give either a run directory or an architecture, not both", field="arch")
    if run_dir is not None:
        run = load_run(run_dir)
        images = eval_images(run.cell.data, run.recipe, split=split, limit=limit, seed=seed)
        note = run.data_note(images)
        notes = () if note is None else (note,)
        return Subject(run.model, run.cell.label, images, run.recipe.positive, notes)
    assert arch is not None
    chosen = get_recipe(recipe)
    images = eval_images(data, chosen, split=split, limit=limit, seed=seed)
    model = build_for_data(
        arch, weights=weights, num_classes=len(images.classes), source=source, seed=seed
    )
    return Subject(model, f"{arch} · weights {weights}", images, chosen.positive)


def synthetic_batch(batch: int, image_size: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded batch of standard-normal images (like normalised inputs) and labels 0, 1, 0, ...

    Returns:
        ``([batch, 3, image_size, image_size]`` float32, ``[batch]`` int64).

    Raises:
        ConfigError: ``batch`` below 2 or ``image_size`` below 1.
    """
    if batch < 2 or image_size < 1:
        raise ConfigError(f"need batch >= 2 and image size >= 1, got {batch} and {image_size}")
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    return images, torch.arange(batch) % 2
