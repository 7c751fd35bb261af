"""The run directory: one training run's folder, its file names, writers and readers.

The one owner of the folder's format (layout in ``docs/architecture.md``, "Run directory"): every
other module reaches a run's files through :class:`RunDir`, never by spelling a file name. The
engine writes ``recipe.json``, ``history.jsonl``, ``predictions.csv``, ``model.safetensors`` and
``train.json``; a grid cell adds ``cell.json`` and, last, ``result.json``; gradient logging,
lesion studies and CKA comparisons add ``gradflow.jsonl``, ``lesion.json``/``.png`` and
``cka-<run>.json``/``.png``. Every write is atomic (:mod:`resablate.atomic`).

:func:`resablate.trained.rebuild_model` turns a finished run back into its trained model (kept
apart so that what writes run directories, the engine, imports no model code).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from resablate.atomic import write_text
from resablate.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from resablate.recipes import Recipe

CELL_FILE = "cell.json"
RECIPE_FILE = "recipe.json"
HISTORY_FILE = "history.jsonl"
PREDICTIONS_FILE = "predictions.csv"
WEIGHTS_FILE = "model.safetensors"
TRAIN_FILE = "train.json"
RESULT_FILE = "result.json"
GRADFLOW_FILE = "gradflow.jsonl"
LESION_FILE = "lesion.json"
LESION_FIGURE = "lesion.png"
CKA_PREFIX = "cka-"
#: Columns of ``predictions.csv`` (``prob_positive``: softmax probability of the positive class).
PREDICTION_COLUMNS = ("index", "path", "label", "pred", "prob_positive")


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


class _File:
    """A file of a run directory: read on a :class:`RunDir`, it is that file's path."""

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        self.__doc__ = f"``{name}``: {what}."

    @overload
    def __get__(self, run: None, owner: type) -> _File: ...
    @overload
    def __get__(self, run: RunDir, owner: type) -> Path: ...
    def __get__(self, run: RunDir | None, owner: type) -> _File | Path:
        return self if run is None else run.path / self.name


@dataclass(frozen=True)
class RunDir:
    """One run's folder (nothing is created until something is written).

    Attributes:
        path: The folder.
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    # ----------------------------------------------------------------------------- paths

    cell_file = _File(CELL_FILE, "the cell's canonical config")
    recipe_file = _File(RECIPE_FILE, "the effective recipe")
    history_file = _File(HISTORY_FILE, "one evaluation record per line")
    predictions_file = _File(PREDICTIONS_FILE, "the final evaluation, one test sample per row")
    weights_file = _File(WEIGHTS_FILE, "the final weights")
    train_file = _File(TRAIN_FILE, "the engine's result")
    result_file = _File(RESULT_FILE, "the cell's result, written last (its presence = finished)")
    gradflow_file = _File(GRADFLOW_FILE, "gradient norms logged during training")
    lesion_file = _File(LESION_FILE, "a saved lesion study")
    lesion_figure = _File(LESION_FIGURE, "the saved lesion study's figure")

    def cka_stem(self, other: str | os.PathLike[str]) -> Path:
        """``cka-<other folder name>`` (add ``.json``/``.png``): a comparison with run ``other``."""
        return self.path / f"{CKA_PREFIX}{Path(other).resolve().name}"

    def cka_files(self) -> list[Path]:
        """The saved CKA comparisons (``cka-*.json``), sorted by name."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob(f"{CKA_PREFIX}*.json"))

    @property
    def has_weights(self) -> bool:
        """Whether the run saved its final weights (finished, not diverged)."""
        return self.weights_file.is_file()

    # ----------------------------------------------------------------------------- writers

    def write_cell(self, config: Mapping[str, Any]) -> Path:
        """Write ``cell.json`` (a cell's ``to_dict()``), creating the folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.cell_file, _json_text(dict(config)))
        return self.cell_file

    def write_recipe(self, recipe: Recipe) -> Path:
        """Write ``recipe.json`` (``Recipe.to_dict()``)."""
        write_text(self.recipe_file, _json_text(recipe.to_dict()))
        return self.recipe_file

    def write_history(self, records: Iterable[Mapping[str, Any]]) -> Path:
        """Rewrite ``history.jsonl``: one JSON record per line, in order."""
        write_text(self.history_file, "".join(json.dumps(dict(r)) + "\n" for r in records))
        return self.history_file

    def write_predictions(
        self,
        labels: Sequence[int],
        preds: Sequence[int],
        probs: Sequence[float],
        paths: Sequence[str] | None = None,
    ) -> Path:
        """Write ``predictions.csv`` in sample order (probabilities to 6 significant digits)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)
        names = paths or ("",) * len(labels)
        for i, (name, label, pred, prob) in enumerate(
            zip(names, labels, preds, probs, strict=True)
        ):
            writer.writerow([i, name, label, pred, f"{prob:.6g}"])
        write_text(self.predictions_file, buffer.getvalue())
        return self.predictions_file

    def write_weights(self, model: nn.Module | Mapping[str, Tensor]) -> Path:
        """Write ``model.safetensors``: the model's state dict (or the state dict given)."""
        from resablate.weights import save_state_dict_file

        state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
        save_state_dict_file(state, self.weights_file)
        return self.weights_file

    def write_train(self, result: Mapping[str, Any]) -> Path:
        """Write ``train.json`` (``TrainResult.to_dict()``)."""
        write_text(self.train_file, _json_text(dict(result)))
        return self.train_file

    def write_result(self, result: Mapping[str, Any]) -> Path:
        """Write ``result.json`` (``CellResult.to_dict()``): the run's last file."""
        write_text(self.result_file, _json_text(dict(result)))
        return self.result_file

    def write_lesion(self, study: Mapping[str, Any]) -> Path:
        """Write ``lesion.json`` (``LesionResult.to_dict()``), replacing an earlier study."""
        write_text(self.lesion_file, _json_text(dict(study)))
        return self.lesion_file

    def write_cka(self, other: str | os.PathLike[str], comparison: Mapping[str, Any]) -> Path:
        """Write ``cka-<other>.json`` (``CKAResult.to_dict()``), replacing an earlier one."""
        target = self.cka_stem(other).with_suffix(".json")
        write_text(target, _json_text(dict(comparison)))
        return target

    # ----------------------------------------------------------------------------- readers

    def read_cell(self) -> dict[str, Any]:
        """``cell.json`` as a dict.

        Raises:
            ConfigError: The folder has no ``cell.json`` (not a run directory) or it is not JSON.
        """
        if not self.cell_file.is_file():
            raise ConfigError(f"{self.path} is not a run directory: it has no {CELL_FILE}")
        return self._read_json(self.cell_file, "cell")

    def read_recipe(self, config: Mapping[str, Any] | None = None) -> Recipe:
        """The recipe the run trained with: ``recipe.json``, else the named recipe with the
        overrides of ``config`` (a cell's config; default ``cell.json``). A named recipe may have
        changed since the run, so the saved one wins.

        Raises:
            ConfigError: ``recipe.json`` is not a valid recipe; no recipe and no cell config.
        """
        from resablate.recipes import Recipe, get_recipe

        if self.recipe_file.is_file():
            try:
                return Recipe.from_dict(self._read_json(self.recipe_file, "recipe"))
            except TypeError as exc:
                raise ConfigError(f"{self.recipe_file} is not a valid recipe: {exc}") from None
        cell = dict(config) if config is not None else self.read_cell()
        return get_recipe(cell["recipe"], **dict(cell.get("overrides", {})))

    def read_history(self) -> list[dict[str, Any]]:
        """``history.jsonl`` records in order (``[]`` when there is none)."""
        return self._read_lines(self.history_file)

    def read_predictions(self) -> list[dict[str, Any]]:
        """``predictions.csv`` rows as ``{"index", "path", "label", "pred", "prob"}`` (``[]``
        when there is none)."""
        if not self.predictions_file.is_file():
            return []
        with self.predictions_file.open(newline="") as fh:
            return [
                {
                    "index": int(r["index"]),
                    "path": r["path"],
                    "label": int(r["label"]),
                    "pred": int(r["pred"]),
                    "prob": float(r["prob_positive"]),
                }
                for r in csv.DictReader(fh)
            ]

    def read_result(self) -> dict[str, Any] | None:
        """``result.json`` (``None`` when the run has not finished or the file is unreadable)."""
        if not self.result_file.is_file():
            return None
        try:
            data = json.loads(self.result_file.read_text())
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def read_gradflow(self) -> list[dict[str, Any]]:
        """``gradflow.jsonl`` records in order (``[]`` when there is none)."""
        return self._read_lines(self.gradflow_file)

    def read_lesion(self) -> dict[str, Any] | None:
        """``lesion.json`` (``None`` when no study was saved)."""
        if not self.lesion_file.is_file():
            return None
        return self._read_json(self.lesion_file, "lesion study")

    def read_cka(self) -> list[dict[str, Any]]:
        """The saved CKA comparisons (``cka-*.json``), sorted by file name."""
        return [self._read_json(path, "CKA comparison") for path in self.cka_files()]

    # ----------------------------------------------------------------------------- helpers

    def _read_json(self, path: Path, what: str) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not a valid {what}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a valid {what}: not a JSON object")
        return data

    @staticmethod
    def _read_lines(path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
