"""Classification metrics: accuracy, positive-class precision/recall/F1, confusion matrix.

Conventions:
    * Labels are class indices ``0 .. num_classes-1`` (sorted folder names). The positive class
      is index 1 by default; for CIFAKE's classes ``("FAKE", "REAL")`` that is ``REAL``, the
      class whose F1 the CIFAKE study reports.
    * Precision, recall and F1 are those of the positive class (one-vs-rest when there are more than
      two classes), as scikit-learn's ``average="binary"``/``labels=[positive]``.
    * Degenerate cases give 0, never NaN (scikit-learn's ``zero_division=0``): no positive
      predictions → precision 0; no positive labels → recall 0; precision + recall = 0 → F1 0.
    * ``confusion[i][j]`` counts samples of true class ``i`` predicted as class ``j``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from resablate.errors import ConfigError


@dataclass(frozen=True)
class Metrics:
    """Metrics of one evaluation.

    Attributes:
        accuracy: Fraction of correct predictions.
        precision: Positive-class precision (0 when nothing was predicted positive).
        recall: Positive-class recall (0 when no sample is positive).
        f1: Harmonic mean of precision and recall (0 when both are 0).
        confusion: Rows = true class, columns = predicted class.
        n: Number of samples.
        positive: Index of the positive class.
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: tuple[tuple[int, ...], ...]
    n: int
    positive: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types (the confusion matrix as nested lists)."""
        data = asdict(self)
        data["confusion"] = [list(row) for row in self.confusion]
        return data


def _as_labels(values: Sequence[int] | torch.Tensor, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().cpu()
    if tensor.dim() != 1 or (tensor.numel() and tensor.is_floating_point()):
        raise ConfigError(f"{what} must be a 1-D sequence of class indices")
    return tensor.to(torch.int64)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def confusion_matrix(
    y_true: Sequence[int] | torch.Tensor, y_pred: Sequence[int] | torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Confusion matrix ``[num_classes, num_classes]`` (int64; rows true, columns predicted)."""
    true = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ConfigError(f"y_true has {true.numel()} labels but y_pred has {pred.numel()}")
    for what, labels in (("y_true", true), ("y_pred", pred)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ConfigError(f"{what} holds a class index outside 0..{num_classes - 1}")
    flat = true * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(
    y_true: Sequence[int] | torch.Tensor,
    y_pred: Sequence[int] | torch.Tensor,
    *,
    num_classes: int,
    positive: int = 1,
) -> Metrics:
    """Accuracy, positive-class precision/recall/F1 and the confusion matrix.

    Args:
        y_true: True class indices.
        y_pred: Predicted class indices, same length.
        num_classes: Number of classes (at least 2).
        positive: Index of the positive class.

    Raises:
        ConfigError: Shapes differ, an index is out of range, or ``positive`` is not a class.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes}: a classification needs at least 2 classes")
    if not 0 <= positive < num_classes:
        raise ConfigError(f"positive class {positive} is not in 0..{num_classes - 1}")
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    n = int(matrix.sum())
    correct = int(matrix.diagonal().sum())
    tp = int(matrix[positive, positive])
    predicted_pos = int(matrix[:, positive].sum())
    actual_pos = int(matrix[positive, :].sum())
    precision = _ratio(tp, predicted_pos)
    recall = _ratio(tp, actual_pos)
    f1 = _ratio(2 * tp, predicted_pos + actual_pos)
    return Metrics(
        accuracy=_ratio(correct, n),
        precision=precision,
        recall=recall,
        f1=f1,
        confusion=tuple(tuple(int(v) for v in row) for row in matrix.tolist()),
        n=n,
        positive=positive,
    )
