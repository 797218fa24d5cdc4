"""Classification metrics from probabilities: binary (ROC AUC and rates at a threshold) and ordinal grading.

A binary model gives P(label 1) per scan; an ordinal model of K grades gives K-1 cumulative
probabilities P(grade >= k) per scan, k = 1..K-1 (``space.build.OrdinalCuts``). :func:`task_metrics`
takes either and returns a record whose ``auc`` is the score the search, the confirmation and export
rank by: the ROC AUC for a binary task, the mean of the K-1 "grade >= k" AUCs for an ordinal one (it is
the binary AUC at K = 2, needs no threshold, and stays defined on a 20-scan fold that holds the lowest
grade and one above it, where a quadratic weighted kappa swings with one scan). The ordinal record also
holds the quadratic weighted kappa, the mean absolute error in grades, the balanced accuracy, the macro
one-vs-rest AUC and the K x K confusion matrix, all from scikit-learn.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

from search.stats.intervals import grade_auc_rows


@dataclass(frozen=True)
class BinaryMetrics:
    """ROC AUC, plus accuracy, sensitivity and specificity at ``threshold``.

    AUC is NaN when only one class is present (it is undefined there, not 0.5).
    """

    auc: float
    accuracy: float
    sensitivity: float
    specificity: float
    threshold: float
    n: int
    tp: int
    fp: int
    tn: int
    fn: int

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> BinaryMetrics:
    """Metrics of predicted probabilities ``probs`` against 0/1 ``labels``."""
    labels = np.asarray(labels).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    tn = int(np.sum(~pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    auc = float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else math.nan
    return BinaryMetrics(
        auc=auc,
        accuracy=(tp + tn) / max(len(labels), 1),
        sensitivity=tp / (tp + fn) if tp + fn else math.nan,
        specificity=tn / (tn + fp) if tn + fp else math.nan,
        threshold=threshold, n=len(labels), tp=tp, fp=fp, tn=tn, fn=fn,
    )


@dataclass(frozen=True)
class OrdinalMetrics:
    """Metrics of an ordinal grading of K grades.

    Attributes:
        auc: The mean of the K-1 "grade >= k" ROC AUCs: the score the search and the confirmation rank by.
        auc_at_least: The K-1 "grade >= k" AUCs, k = 1..K-1 (NaN where a side is empty).
        macro_auc: The macro one-vs-rest AUC of the K grade probabilities (NaN unless every grade is present).
        qwk: Quadratic weighted kappa of the predicted grade.
        mae: Mean absolute error of the predicted grade, in grades.
        balanced_accuracy: Mean recall over the grades present.
        confusion: K x K counts, rows the true grade, columns the predicted one.
        n: Scans.
        grades: K.
    """

    auc: float
    auc_at_least: tuple[float, ...]
    macro_auc: float
    qwk: float
    mae: float
    balanced_accuracy: float
    confusion: tuple[tuple[int, ...], ...]
    n: int
    grades: int

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples as lists)."""
        d = asdict(self)
        d["auc_at_least"] = list(self.auc_at_least)
        d["confusion"] = [list(row) for row in self.confusion]
        return d


def grade_distribution(cumulative: np.ndarray) -> np.ndarray:
    """(N, K-1) cumulative P(grade >= k) -> (N, K) probabilities of grades 0..K-1 (rows sum to 1)."""
    cumulative = np.asarray(cumulative, dtype=np.float64)
    n = cumulative.shape[0]
    at_least = np.concatenate([np.ones((n, 1)), cumulative, np.zeros((n, 1))], axis=1)
    return np.clip(at_least[:, :-1] - at_least[:, 1:], 0.0, 1.0)


def predicted_grade(cumulative: np.ndarray) -> np.ndarray:
    """The median grade of each scan's distribution: how many "grade >= k" have P >= 0.5 (CORAL's rule).

    The median minimises the expected absolute error, the error in grades that MAE reports.
    """
    return np.sum(np.asarray(cumulative, dtype=np.float64) >= 0.5, axis=1).astype(int)


def severity_score(probs: np.ndarray) -> np.ndarray:
    """One ranking score per scan: P(label 1) for a binary model, the expected grade for an ordinal one.

    The expected grade is the sum of the K-1 cumulative probabilities, which all rise with the head's one
    severity logit, so it ranks scans as every "grade >= k" does.
    """
    probs = np.asarray(probs, dtype=np.float64)
    return probs.sum(axis=1) if probs.ndim == 2 else probs.ravel()


def ordinal_metrics(labels: np.ndarray, cumulative: np.ndarray) -> OrdinalMetrics:
    """Metrics of (N, K-1) cumulative probabilities against integer grades 0..K-1."""
    labels = np.asarray(labels).astype(int).ravel()
    cumulative = np.asarray(cumulative, dtype=np.float64).reshape(labels.size, -1)
    k = cumulative.shape[1] + 1
    score = severity_score(cumulative)
    at_least = []
    for g in range(1, k):
        above = labels >= g
        at_least.append(float(roc_auc_score(above, cumulative[:, g - 1])) if 0 < above.sum() < labels.size
                        else math.nan)
    auc = float(grade_auc_rows(labels, score)[0]) if labels.size else math.nan
    dist = grade_distribution(cumulative)
    present = np.unique(labels)
    macro = (float(roc_auc_score(labels, dist / dist.sum(axis=1, keepdims=True), multi_class="ovr",
                                 average="macro", labels=list(range(k))))
             if present.size == k else math.nan)
    pred = predicted_grade(cumulative)
    grades = list(range(k))
    qwk = float(cohen_kappa_score(labels, pred, labels=grades, weights="quadratic")) if present.size > 1 else math.nan
    return OrdinalMetrics(
        auc=auc, auc_at_least=tuple(at_least), macro_auc=macro, qwk=qwk,
        mae=float(np.mean(np.abs(pred - labels))) if labels.size else math.nan,
        balanced_accuracy=_balanced_accuracy(labels, pred),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion_matrix(labels, pred, labels=grades)),
        n=int(labels.size), grades=k,
    )


def _balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the grades present; a predicted grade absent from ``labels`` is no error here."""
    if not labels.size:
        return math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(labels, pred))


def task_metrics(labels: np.ndarray, probs: np.ndarray) -> BinaryMetrics | OrdinalMetrics:
    """:func:`binary_metrics` for (N,) probabilities, :func:`ordinal_metrics` for (N, K-1) cumulative ones."""
    probs = np.asarray(probs)
    return ordinal_metrics(labels, probs) if probs.ndim == 2 else binary_metrics(labels, probs)
