"""Metrics against scikit-learn on fixed predictions, degenerate cases included."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from resablate.choices import CLASSIFICATION_METRICS, METRICS, METRICS_SHOWN
from resablate.errors import ConfigError
from resablate.grid.store import RESULT_COLUMNS
from resablate.metrics import Metrics, classification_metrics, confusion_matrix

# scikit-learn is the reference; without it (a bare GPU machine) this module skips.
skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")

Y_TRUE = [0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 0]
Y_PRED = [0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0]


def _sklearn(y_true, y_pred, labels, positive):
    kw = {"labels": [positive], "average": "macro", "zero_division": 0}
    return (
        skm.accuracy_score(y_true, y_pred),
        skm.precision_score(y_true, y_pred, **kw),
        skm.recall_score(y_true, y_pred, **kw),
        skm.f1_score(y_true, y_pred, **kw),
        skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


@pytest.mark.parametrize("positive", [0, 1])
def test_binary_matches_sklearn(positive: int) -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=2, positive=positive)
    acc, prec, rec, f1, conf = _sklearn(Y_TRUE, Y_PRED, [0, 1], positive)
    assert (m.accuracy, m.precision, m.recall, m.f1) == pytest.approx((acc, prec, rec, f1))
    assert [list(r) for r in m.confusion] == conf
    assert m.n == 12


def test_hand_computed_values() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=2)
    # tp=4, fp=2, fn=2, tn=4
    assert m.confusion == ((4, 2), (2, 4))
    assert m.accuracy == 8 / 12
    assert m.precision == 4 / 6
    assert m.recall == 4 / 6
    assert m.f1 == 8 / 12


def test_three_classes_one_vs_rest_matches_sklearn() -> None:
    y_true = [0, 1, 2, 2, 1, 0, 2, 1]
    y_pred = [0, 2, 2, 1, 1, 0, 2, 0]
    m = classification_metrics(y_true, y_pred, num_classes=3, positive=2)
    acc, prec, rec, f1, conf = _sklearn(y_true, y_pred, [0, 1, 2], 2)
    assert (m.accuracy, m.precision, m.recall, m.f1) == pytest.approx((acc, prec, rec, f1))
    assert [list(r) for r in m.confusion] == conf


def test_no_positive_predictions_gives_zero_not_nan() -> None:
    m = classification_metrics([0, 1, 1, 0], [0, 0, 0, 0], num_classes=2)
    assert (m.precision, m.recall, m.f1, m.accuracy) == (0.0, 0.0, 0.0, 0.5)
    assert m.confusion == ((2, 0), (2, 0))


def test_no_positive_labels_gives_zero_recall() -> None:
    m = classification_metrics([0, 0, 0], [1, 0, 0], num_classes=2)
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)


def test_empty_input_gives_zeros() -> None:
    m = classification_metrics([], [], num_classes=2)
    assert (m.accuracy, m.precision, m.recall, m.f1, m.n) == (0.0, 0.0, 0.0, 0.0, 0)


def test_tensors_accepted_and_to_dict_plain() -> None:
    m = classification_metrics(torch.tensor(Y_TRUE), torch.tensor(Y_PRED), num_classes=2)
    d = m.to_dict()
    assert d["confusion"] == [[4, 2], [2, 4]]
    assert d["positive"] == 1 and d["n"] == 12


def test_bad_inputs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="y_true has 2 labels but y_pred has 3"):
        confusion_matrix([0, 1], [0, 1, 1], 2)
    with pytest.raises(ConfigError, match=r"outside 0\.\.1"):
        classification_metrics([0, 2], [0, 1], num_classes=2)
    with pytest.raises(ConfigError, match="positive class 2"):
        classification_metrics([0, 1], [0, 1], num_classes=2, positive=2)


def test_the_metric_names_are_the_metrics_fields_and_the_store_columns() -> None:
    assert tuple(f.name for f in fields(Metrics))[:4] == CLASSIFICATION_METRICS
    assert METRICS == ("accuracy", "precision", "recall", "f1", "loss")
    assert set(METRICS) <= set(RESULT_COLUMNS)
    assert METRICS_SHOWN[0] == "f1" and sorted(METRICS_SHOWN) == sorted(METRICS)
