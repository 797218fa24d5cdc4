import math

import numpy as np
import pytest
from scipy import stats

from search.stats.paired import (
    MIN_WILCOXON_PAIRS,
    PAIRED_T,
    WILCOXON,
    MeanCI,
    corrected_resampled_ttest,
    mean_ci,
    paired_test,
    verdict,
)

# Fold AUCs of two variants on the same eight folds (ratios of small integers, as real AUCs are).
VARIANT = [0.84, 0.80, 0.88, 0.76, 0.92, 0.80, 0.86, 0.78]
REFERENCE = [0.80, 0.79, 0.82, 0.77, 0.85, 0.74, 0.81, 0.70]


def test_paired_test_with_six_or_more_pairs_is_scipys_wilcoxon():
    result = paired_test(VARIANT, REFERENCE)
    expected = stats.wilcoxon(VARIANT, REFERENCE)
    assert result.test == WILCOXON and result.n_pairs == 8
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.diff == pytest.approx(np.mean(np.subtract(VARIANT, REFERENCE)))


def test_paired_test_below_six_pairs_is_scipys_paired_t_test():
    x, y = VARIANT[:5], REFERENCE[:5]
    result = paired_test(x, y)
    expected = stats.ttest_rel(x, y)
    assert result.test.startswith(PAIRED_T)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    ci = expected.confidence_interval(0.95)
    assert (result.diff_ci.low, result.diff_ci.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_paired_test_counts_only_nonzero_differences_for_the_wilcoxon_threshold():
    # Six pairs, one of them tied: five non-zero differences, where Wilcoxon's smallest p is 0.0625.
    x = [0.80, 0.82, 0.90, 0.71, 0.66, 0.75]
    y = [0.70, 0.80, 0.85, 0.70, 0.60, 0.75]
    assert paired_test(x, y).test.startswith(PAIRED_T)
    assert stats.wilcoxon(np.subtract(x, y)[:5]).pvalue > 0.05 and MIN_WILCOXON_PAIRS == 6


def test_paired_test_is_undefined_when_every_difference_is_zero():
    result = paired_test([0.7, 0.8, 0.9], [0.7, 0.8, 0.9])
    assert math.isnan(result.p_value) and result.test == "none: every paired difference is zero"
    assert result.diff == 0.0 and verdict(result) == "no detectable difference"


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy's, on the raw input
def test_paired_test_is_undefined_for_equal_differences_despite_round_off():
    # 0.5 - 0.46 and 0.6 - 0.56 differ in the last bit, which gives scipy a t of 1e15 and p ~ 0.
    assert stats.ttest_rel([0.5, 0.6], [0.46, 0.56]).pvalue < 1e-10
    result = paired_test([0.5, 0.6], [0.46, 0.56])
    assert math.isnan(result.p_value) and "no spread" in result.test
    assert verdict(result) == "no detectable difference"


def test_paired_test_rejects_sequences_of_different_length():
    with pytest.raises(ValueError, match="3 variant scores against 2 reference scores"):
        paired_test([0.1, 0.2, 0.3], [0.1, 0.2])


def test_mean_ci_is_scipys_t_interval():
    result = mean_ci(VARIANT)
    ci = stats.ttest_1samp(VARIANT, 0.0).confidence_interval(0.95)
    assert result.mean == pytest.approx(np.mean(VARIANT))
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert result.n == len(VARIANT)


def test_mean_ci_of_equal_values_has_zero_width_and_of_one_value_none():
    assert mean_ci([0.5, 0.5, 0.5]) == MeanCI(0.5, 0.5, 0.5, 3)
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)


def test_mean_ci_clipped_stays_within_the_metric_range():
    assert mean_ci([0.2, 0.99]).clipped(0.0, 1.0).high == 1.0
    assert mean_ci([0.2, 0.99]).low < 0.0 and mean_ci([0.2, 0.99]).clipped(0.0, 1.0).low == 0.0


def test_corrected_resampled_ttest_without_correction_is_the_one_sample_t_test():
    d = np.subtract(VARIANT, REFERENCE)
    assert corrected_resampled_ttest(d, 0.0) == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-9)


def test_corrected_resampled_ttest_widens_the_variance_by_the_test_train_ratio():
    d = [0.01, 0.02, 0.03, 0.04]  # mean 0.025, sample variance 1/6000
    t = 0.025 / math.sqrt((1 / 4 + 1 / 4) / 6000)  # J = 4 folds, n_val / n_train = 1/4 (5-fold)
    assert corrected_resampled_ttest(d, 0.25) == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-9)
    assert corrected_resampled_ttest(d, 0.25) > corrected_resampled_ttest(d, 0.0)


def test_verdict_follows_the_p_value_and_the_direction():
    assert verdict(paired_test(VARIANT, REFERENCE)) == "better"
    assert verdict(paired_test(REFERENCE, VARIANT)) == "worse"
    assert verdict(paired_test(VARIANT[:4], REFERENCE[:4])) == "no detectable difference"


def test_wilcoxon_direction_follows_the_signed_ranks_not_the_mean():
    # One large gain, seven small losses: the mean difference is positive, the ranks point down.
    d = np.array([0.40, -0.01, -0.02, -0.03, -0.04, -0.05, -0.06, -0.07])
    result = paired_test(d, np.zeros_like(d))
    assert result.diff > 0 and result.direction == -1
