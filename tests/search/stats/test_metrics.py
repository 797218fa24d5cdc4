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


# Ordinal grading: the mean "grade >= k" AUC and the reported metrics, against scikit-learn.

def _graded(seed=0, n=60, k=4, noise=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    z = labels + rng.normal(0, noise, n)
    cuts = np.arange(k - 1) + 0.5
    return labels, 1 / (1 + np.exp(-(z[:, None] - cuts)))


def test_ordinal_metrics_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

    from search.stats.metrics import grade_distribution, ordinal_metrics, predicted_grade
    labels, cum = _graded()
    m = ordinal_metrics(labels, cum)
    per_k = [roc_auc_score(labels >= k, cum[:, k - 1]) for k in (1, 2, 3)]
    assert m.auc_at_least == pytest.approx(per_k) and m.auc == pytest.approx(np.mean(per_k))
    pred = predicted_grade(cum)
    assert np.array_equal(pred, (cum >= 0.5).sum(axis=1))
    assert m.qwk == pytest.approx(cohen_kappa_score(labels, pred, weights="quadratic"))
    assert m.mae == pytest.approx(np.mean(np.abs(pred - labels)))
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m.confusion == tuple(map(tuple, confusion_matrix(labels, pred, labels=[0, 1, 2, 3]).tolist()))
    dist = grade_distribution(cum)
    assert np.allclose(dist.sum(axis=1), 1) and m.macro_auc == pytest.approx(
        roc_auc_score(labels, dist, multi_class="ovr", average="macro"))
    json.dumps(m.to_dict())  # JSON-ready


def test_ordinal_auc_on_a_fold_missing_a_grade_averages_the_thresholds_it_holds():
    from search.stats.metrics import ordinal_metrics
    labels, cum = _graded(seed=1)
    keep = labels != 2
    m = ordinal_metrics(labels[keep], cum[keep])
    # "grade >= 2" and "grade >= 3" are the same split of this fold: it counts once
    expected = np.mean([roc_auc_score(labels[keep] >= k, cum[keep].sum(axis=1)) for k in (1, 3)])
    assert m.auc == pytest.approx(expected) and math.isnan(m.macro_auc)


def test_task_metrics_dispatch_and_binary_is_unchanged():
    from search.stats.metrics import BinaryMetrics, OrdinalMetrics, severity_score, task_metrics
    labels, cum = _graded()
    assert isinstance(task_metrics(labels, cum), OrdinalMetrics)
    y = (labels >= 2).astype(int)
    p = cum[:, 1]
    assert task_metrics(y, p) == binary_metrics(y, p) and isinstance(task_metrics(y, p), BinaryMetrics)
    assert np.array_equal(severity_score(p), p) and np.allclose(severity_score(cum), cum.sum(axis=1))
