"""Binary classification metrics from probabilities: ROC AUC (scikit-learn) and rates at a threshold."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


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
