"""Confidence intervals for the locked-test evaluation: stratified bootstrap for ROC AUC, Wilson for rates.

Test parts are small (MosMedData's course task leaves about 30 scans for testing), so a point estimate
alone says little; every test figure that ``search.export`` reports carries a 95% interval.

- ROC AUC: percentile interval over stratified bootstrap resamples. Each resample draws the negatives
  from the negatives and the positives from the positives, with replacement, so every resample holds
  both classes in the test part's proportions and its AUC is defined. Where the AUC is exactly 0 or 1
  every resample gives the same AUC and the interval collapses to a point; the model card says so.
- The difference in AUC between two models scored on the same scans: the same resamples for both
  (paired), so the interval reflects the models' disagreement, not the test part's luck twice.
- Accuracy, sensitivity, specificity: Wilson score intervals (scipy), which stay inside [0, 1] and
  behave at 0 or n successes, unlike the normal approximation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest, rankdata

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval and how the interval was made."""

    estimate: float
    low: float
    high: float
    confidence: float
    method: str

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        """``0.812 (95% CI 0.701 to 0.905)``."""
        if not math.isfinite(self.estimate):
            return "n/a"
        return (f"{self.estimate:.{digits}f} ({round(100 * self.confidence)}% CI "
                f"{self.low:.{digits}f} to {self.high:.{digits}f})")


def stratified_resamples(labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Row indices of ``n_resamples`` stratified bootstrap resamples, shape (n_resamples, N).

    Each row keeps the class counts of ``labels``: it draws the negatives' indices from the negatives
    and the positives' from the positives (each grade's from that grade, for ordinal labels), with
    replacement.
    """
    labels = np.asarray(labels).astype(int).ravel()
    rng = np.random.default_rng(seed)
    columns = [rng.choice(np.flatnonzero(labels == c), size=(n_resamples, int(np.sum(labels == c))))
               for c in np.unique(labels)]
    return np.concatenate(columns, axis=1) if columns else np.empty((n_resamples, 0), dtype=int)


def auc_rows(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of (R, N) ``labels``/``probs``: the Mann-Whitney U statistic over n0 * n1.

    Ties count one half, as in scikit-learn's ``roc_auc_score``; this is its vectorised twin, so 2000
    resamples cost one ranking call instead of 2000 scikit-learn calls. Rows with one class give NaN.
    """
    labels = np.atleast_2d(labels).astype(bool)
    ranks = rankdata(np.atleast_2d(probs), axis=1)
    n1 = labels.sum(axis=1)
    n0 = labels.shape[1] - n1
    u = (ranks * labels).sum(axis=1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def grade_auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The mean of the "grade >= k" ROC AUCs of each row of (R, N) integer ``labels`` against ``scores``.

    ``k`` runs over the grades present above the lowest one; for 0/1 labels that is k = 1 alone, so
    this is :func:`auc_rows` exactly. It is the ordinal tasks' score: threshold-free, defined on any fold
    that holds the lowest grade and one above it, and, since every "grade >= k" of a rank-consistent
    head shares one ranking (``space.build.OrdinalCuts``), one score per scan (the expected grade) is
    all it needs. A row whose labels hold one grade gives NaN.
    """
    labels = np.atleast_2d(np.asarray(labels)).astype(int)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    present = np.unique(labels)
    if present.size < 2:
        return np.full(labels.shape[0], np.nan)
    if present.size == 2 and present[0] == 0 and present[1] == 1:
        return auc_rows(labels, scores)
    ranks = rankdata(scores, axis=1)  # one ranking serves every threshold
    per_k = []
    for k in present[1:]:
        above = labels >= k
        n1 = above.sum(axis=1)
        n0 = above.shape[1] - n1
        u = (ranks * above).sum(axis=1) - n1 * (n1 + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            per_k.append(np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan))
    return np.mean(per_k, axis=0)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _method(n_resamples: int, seed: int, paired: bool = False) -> str:
    kind = "paired stratified bootstrap" if paired else "stratified bootstrap"
    return f"{kind}, percentile interval, {n_resamples} resamples, seed {seed}"


def bootstrap_auc(labels: np.ndarray, probs: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                  confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Interval:
    """ROC AUC of ``probs`` against 0/1 ``labels``, with a stratified bootstrap percentile interval.

    For ordinal grades, the mean "grade >= k" AUC of a per-scan score (:func:`grade_auc_rows`).
    """
    labels = np.asarray(labels).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    estimate = float(grade_auc_rows(labels, probs)[0])
    rows = stratified_resamples(labels, n_resamples, seed)
    low, high = _percentiles(grade_auc_rows(labels[rows], probs[rows]), confidence)
    return Interval(estimate, low, high, confidence, _method(n_resamples, seed))


def bootstrap_auc_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                             n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                             seed: int = 0) -> Interval:
    """AUC of ``probs_a`` minus AUC of ``probs_b`` on the same scans, with a paired bootstrap interval.

    For ordinal grades, the difference in mean "grade >= k" AUC (:func:`grade_auc_rows`).
    """
    labels = np.asarray(labels).astype(int).ravel()
    a = np.asarray(probs_a, dtype=np.float64).ravel()
    b = np.asarray(probs_b, dtype=np.float64).ravel()
    estimate = float(grade_auc_rows(labels, a)[0] - grade_auc_rows(labels, b)[0])
    rows = stratified_resamples(labels, n_resamples, seed)
    differences = grade_auc_rows(labels[rows], a[rows]) - grade_auc_rows(labels[rows], b[rows])
    low, high = _percentiles(differences, confidence)
    return Interval(estimate, low, high, confidence, _method(n_resamples, seed, paired=True))


def wilson(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """A proportion ``successes / n`` with its Wilson score interval (NaN when ``n`` is 0)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, confidence, "Wilson score interval")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), confidence, "Wilson score interval")
