"""Statistics of cross-validated scores: mean with a t-interval, and paired tests of a variant against a reference.

Fold scores (here ROC AUC on each fold's validation part) are paired by fold: every variant is trained
and scored on the same folds with the same seeds, so the per-fold difference removes the fold-to-fold
noise that both share. Three things are computed from the differences:

- a Student t-interval of the mean difference;
- the paired test the ablation reports: the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) when
  there are at least :data:`MIN_WILCOXON_PAIRS` non-zero differences, else the paired t-test
  (``scipy.stats.ttest_rel``). With n non-zero differences the smallest two-sided Wilcoxon p-value is
  2 / 2**n, which is 0.0625 for n = 5: below six pairs the rank test cannot reject at 0.05 whatever
  the data;
- the Nadeau–Bengio corrected resampled t-test, which widens the variance by ``n_val / n_train`` to
  account for folds sharing training scans (Nadeau & Bengio 2003, "Inference for the generalization
  error", Machine Learning 52; Bouckaert & Frank 2004). The two tests above treat folds as
  independent samples, which repeated cross-validation folds are not, so their p-values are optimistic.

Differences are rounded to :data:`DECIMALS` places before ranking or testing, so that two AUCs that are
equal in exact arithmetic (AUCs are ratios of small integers) do not differ by float round-off,
which would otherwise turn a tie into a rank or a zero variance into a huge t statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_WILCOXON_PAIRS = 6
DECIMALS = 10
WILCOXON = "wilcoxon"
PAIRED_T = "paired t"

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"


@dataclass(frozen=True)
class MeanCI:
    """A mean with its confidence interval (NaN bounds where fewer than two values exist)."""

    mean: float
    low: float
    high: float
    n: int

    def clipped(self, lowest: float, highest: float) -> MeanCI:
        """The interval cut to the range a metric can take (a t-interval over few values can overshoot it)."""
        low = self.low if math.isnan(self.low) else min(max(self.low, lowest), highest)
        high = self.high if math.isnan(self.high) else min(max(self.high, lowest), highest)
        return MeanCI(self.mean, low, high, self.n)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of a variant's fold scores with the reference's on the same folds.

    Attributes:
        diff: Mean of variant minus reference over the pairs.
        diff_ci: t-interval of that mean difference.
        p_value: Two-sided p-value of ``test``; NaN where it is undefined (no pairs, every difference
            zero, or a t-test on differences without spread).
        test: Which test gave ``p_value``, e.g. ``wilcoxon`` or ``paired t (n<6)``, or why none did.
        direction: +1 if the variant tends to score higher, -1 lower, 0 no direction (for a Wilcoxon
            test the sign of the signed-rank sum, for a t-test the sign of the mean difference).
        n_pairs: Number of pairs.
    """

    diff: float
    diff_ci: MeanCI
    p_value: float
    test: str
    direction: int
    n_pairs: int


def mean_ci(values, confidence: float = 0.95) -> MeanCI:
    """The mean of ``values`` and its Student t confidence interval.

    The interval is the one ``scipy.stats.ttest_1samp(values, 0).confidence_interval(confidence)``
    gives; it is written out so that equal values give a zero-width interval rather than NaN.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(np.mean(x))
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(x, ddof=1) / math.sqrt(n))
    return MeanCI(mean, mean - half, mean + half, n)


def paired_test(variant, reference, confidence: float = 0.95) -> PairedTest:
    """Compare paired fold scores: Wilcoxon signed-rank with >= 6 non-zero differences, else a paired t-test.

    Args:
        variant: The variant's score on each fold.
        reference: The reference's score on the same folds, in the same order.
        confidence: Level of the interval of the mean difference.

    Raises:
        ValueError: The two sequences differ in length.
    """
    x = np.asarray(variant, dtype=np.float64).ravel()
    y = np.asarray(reference, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired_test: {len(x)} variant scores against {len(y)} reference scores; pairs needed")
    d = np.round(x - y, DECIMALS)
    ci = mean_ci(d, confidence)
    n = len(d)
    nonzero = int(np.count_nonzero(d))
    if n == 0:
        return PairedTest(math.nan, ci, math.nan, "none: no paired folds", 0, 0)
    if nonzero == 0:
        return PairedTest(ci.mean, ci, math.nan, "none: every paired difference is zero", 0, n)
    if nonzero >= MIN_WILCOXON_PAIRS:
        result = stats.wilcoxon(d)
        ranks = stats.rankdata(np.abs(d[d != 0]))
        direction = int(np.sign(np.sum(np.sign(d[d != 0]) * ranks)))
        return PairedTest(ci.mean, ci, float(result.pvalue), WILCOXON, direction, n)
    label = f"{PAIRED_T} (n<{MIN_WILCOXON_PAIRS})"
    if n < 2 or np.ptp(d) == 0:
        # Equal non-zero differences make the t statistic infinite and p zero, an artefact of too few
        # folds on discrete AUCs rather than evidence.
        return PairedTest(ci.mean, ci, math.nan, f"{label}: undefined, the differences have no spread",
                          int(np.sign(ci.mean)), n)
    ttest = stats.ttest_1samp(d, 0.0)  # the paired t-test: scipy's ttest_rel(x, y) is this on x - y
    return PairedTest(ci.mean, ci, float(ttest.pvalue), label, int(np.sign(ci.mean)), n)


def corrected_resampled_ttest(differences, test_train_ratio: float) -> float:
    """Two-sided p-value of the Nadeau–Bengio corrected resampled t-test on per-fold differences.

    The variance of the mean difference over J folds is taken as ``(1/J + n_test/n_train) * s**2``
    instead of ``s**2 / J``: the extra term stands for the correlation between folds whose training
    sets overlap. With ``test_train_ratio = 0`` it is the one-sample t-test.

    Args:
        differences: Variant minus reference, one value per fold (all repeats together).
        test_train_ratio: Validation scans over training scans per fold (``1 / (K - 1)`` for K folds).

    Returns:
        The p-value, NaN where fewer than two differences exist or they have no spread.
    """
    d = np.round(np.asarray(differences, dtype=np.float64).ravel(), DECIMALS)
    j = len(d)
    if j < 2 or np.ptp(d) == 0:
        return math.nan
    variance = (1.0 / j + test_train_ratio) * np.var(d, ddof=1)
    t = float(np.mean(d)) / math.sqrt(variance)
    return float(2.0 * stats.t.sf(abs(t), j - 1))


def verdict(test: PairedTest, alpha: float = 0.05) -> str:
    """``better`` or ``worse`` when the paired test rejects at ``alpha``, else ``no detectable difference``."""
    if math.isfinite(test.p_value) and test.p_value < alpha and test.direction != 0:
        return BETTER if test.direction > 0 else WORSE
    return NO_DIFFERENCE
