"""search.stats.metrics: ROC AUC and the confusion-matrix rates of probabilities at a threshold."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from search.stats.metrics import binary_metrics

LABELS = np.array([0, 0, 0, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.6, 0.4, 0.8, 0.5, 0.3, 0.9])


def test_binary_metrics_counts_the_confusion_matrix_at_the_threshold():
    m = binary_metrics(LABELS, PROBS)
    # predicted positive (>= 0.5): 0.6 (neg), 0.8, 0.5, 0.9 (pos); 0.3 is a missed positive
    assert (m.tp, m.fp, m.tn, m.fn, m.n) == (3, 1, 2, 1, 7)


def test_binary_metrics_rates_follow_from_the_counts():
    m = binary_metrics(LABELS, PROBS)
    assert m.accuracy == pytest.approx(5 / 7)
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(2 / 3)


def test_binary_metrics_auc_is_scikit_learns():
    assert binary_metrics(LABELS, PROBS).auc == pytest.approx(roc_auc_score(LABELS, PROBS))


def test_binary_metrics_counts_a_probability_equal_to_the_threshold_as_positive():
    m = binary_metrics([0, 1], [0.7, 0.7], threshold=0.7)
    assert (m.tp, m.fp) == (1, 1) and m.threshold == 0.7


def test_binary_metrics_auc_is_nan_not_one_half_with_one_class():
    m = binary_metrics([1, 1, 1], [0.2, 0.9, 0.6])
    assert math.isnan(m.auc)
    assert math.isnan(m.specificity)  # no negatives
    assert m.sensitivity == pytest.approx(2 / 3)


def test_binary_metrics_of_no_scans_gives_zero_accuracy_and_nan_rates():
    m = binary_metrics([], [])
    assert m.n == 0 and m.accuracy == 0
    assert math.isnan(m.sensitivity) and math.isnan(m.specificity) and math.isnan(m.auc)


def test_binary_metrics_accepts_column_vectors_and_float_labels():
    m = binary_metrics(LABELS.astype(np.float32).reshape(-1, 1), PROBS.reshape(-1, 1))
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 1, 2, 1)


def test_binary_metrics_to_dict_round_trips_through_json():
    d = binary_metrics(LABELS, PROBS).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"auc", "accuracy", "sensitivity", "specificity", "threshold", "n", "tp", "fp", "tn", "fn"}
    assert all(type(d[k]) is int for k in ("n", "tp", "fp", "tn", "fn"))
