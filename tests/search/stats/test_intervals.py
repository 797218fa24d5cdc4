"""search.stats.intervals: stratified bootstrap resamples, vectorised AUC, bootstrap and Wilson intervals.

tests/search/shipping/test_models.py checks auc_rows against scikit-learn with ties, that resamples keep the
positives' count, and Wilson at n successes; these cover the rest of each unit.
"""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from search.stats.intervals import (
    Interval,
    auc_rows,
    bootstrap_auc,
    bootstrap_auc_difference,
    stratified_resamples,
    wilson,
)

LABELS = np.r_[np.zeros(9, int), np.ones(6, int)]
PROBS = np.random.default_rng(3).random(15)


def test_stratified_resamples_shape_and_each_index_drawn_from_its_own_class():
    rows = stratified_resamples(LABELS, 40, seed=0)
    assert rows.shape == (40, 15)
    assert (LABELS[rows[:, :9]] == 0).all() and (LABELS[rows[:, 9:]] == 1).all()


def test_stratified_resamples_are_reproducible_by_seed_and_differ_across_seeds():
    assert np.array_equal(stratified_resamples(LABELS, 20, seed=5), stratified_resamples(LABELS, 20, seed=5))
    assert not np.array_equal(stratified_resamples(LABELS, 20, seed=5), stratified_resamples(LABELS, 20, seed=6))


def test_stratified_resamples_of_one_class_draw_only_that_class():
    labels = np.ones(7, int)
    rows = stratified_resamples(labels, 10, seed=0)
    assert rows.shape == (10, 7) and rows.min() >= 0 and rows.max() < 7


def test_stratified_resamples_of_no_labels_is_an_empty_integer_array():
    rows = stratified_resamples(np.array([], int), 4, seed=0)
    assert rows.shape == (4, 0) and rows.dtype.kind == "i"


def test_auc_rows_scores_each_row_on_its_own():
    labels = np.array([[0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1]])
    probs = np.array([[0.1, 0.2, 0.8, 0.9], [0.9, 0.1, 0.2, 0.8], [0.5, 0.5, 0.5, 0.5]])
    expected = [roc_auc_score(lab, p) for lab, p in zip(labels, probs, strict=True)]
    np.testing.assert_allclose(auc_rows(labels, probs), expected)
    np.testing.assert_allclose(expected, [1.0, 0.25, 0.5])


def test_auc_rows_is_nan_for_a_row_with_one_class():
    out = auc_rows(np.array([[1, 1, 1], [0, 1, 1]]), np.array([[0.2, 0.4, 0.6], [0.1, 0.4, 0.6]]))
    assert math.isnan(out[0]) and out[1] == 1.0


def test_bootstrap_auc_estimate_is_the_full_sample_auc_and_method_records_resamples_and_seed():
    ci = bootstrap_auc(LABELS, PROBS, n_resamples=300, seed=4)
    assert ci.estimate == pytest.approx(roc_auc_score(LABELS, PROBS))
    assert ci.method == "stratified bootstrap, percentile interval, 300 resamples, seed 4"
    assert ci.confidence == 0.95 and 0.0 <= ci.low <= ci.high <= 1.0


def test_bootstrap_auc_is_reproducible_by_seed():
    assert bootstrap_auc(LABELS, PROBS, 200, seed=1) == bootstrap_auc(LABELS, PROBS, 200, seed=1)


def test_bootstrap_auc_interval_narrows_as_confidence_falls():
    wide = bootstrap_auc(LABELS, PROBS, 400, confidence=0.95, seed=2)
    narrow = bootstrap_auc(LABELS, PROBS, 400, confidence=0.5, seed=2)
    assert wide.low <= narrow.low <= narrow.high <= wide.high
    assert narrow.high - narrow.low < wide.high - wide.low


def test_bootstrap_auc_of_perfect_separation_collapses_to_a_point():
    probs = np.r_[np.linspace(0.0, 0.4, 9), np.linspace(0.6, 1.0, 6)]
    ci = bootstrap_auc(LABELS, probs, 100, seed=0)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_bootstrap_auc_of_one_class_is_nan_throughout():
    ci = bootstrap_auc(np.ones(5, int), np.linspace(0, 1, 5), 50, seed=0)
    assert math.isnan(ci.estimate) and math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.text() == "n/a"


def test_bootstrap_auc_difference_of_a_model_with_itself_is_exactly_zero():
    ci = bootstrap_auc_difference(LABELS, PROBS, PROBS, 200, seed=0)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert ci.method.startswith("paired stratified bootstrap")


def test_bootstrap_auc_difference_estimate_is_a_minus_b_and_interval_is_antisymmetric():
    other = np.random.default_rng(9).random(15)
    ab = bootstrap_auc_difference(LABELS, PROBS, other, 300, seed=1)
    ba = bootstrap_auc_difference(LABELS, other, PROBS, 300, seed=1)
    assert ab.estimate == pytest.approx(roc_auc_score(LABELS, PROBS) - roc_auc_score(LABELS, other))
    assert ab.estimate == pytest.approx(-ba.estimate)
    assert ab.low == pytest.approx(-ba.high) and ab.high == pytest.approx(-ba.low)


def test_wilson_of_zero_successes_starts_at_zero_and_stays_in_range():
    ci = wilson(0, 8)
    assert ci.estimate == 0.0 and ci.low == pytest.approx(0.0) and 0.0 < ci.high < 1.0


def test_wilson_interval_holds_the_proportion_and_matches_the_closed_form():
    ci = wilson(3, 10)
    z = 1.959963984540054
    p, n = 0.3, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert ci.estimate == pytest.approx(0.3)
    assert (ci.low, ci.high) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert ci.method == "Wilson score interval"


def test_wilson_of_no_trials_is_nan():
    ci = wilson(0, 0)
    assert math.isnan(ci.estimate) and math.isnan(ci.low) and math.isnan(ci.high)


def test_interval_text_rounds_to_the_digits_and_names_the_confidence():
    assert Interval(0.81234, 0.7, 0.9051, 0.9, "m").text() == "0.812 (90% CI 0.700 to 0.905)"
    assert Interval(0.5, 0.21, 0.79, 0.95, "m").text(digits=1) == "0.5 (95% CI 0.2 to 0.8)"


def test_interval_to_dict_round_trips_through_json():
    ci = bootstrap_auc(LABELS, PROBS, 100, seed=0)
    d = ci.to_dict()
    assert Interval(**json.loads(json.dumps(d))) == ci


def test_grade_auc_rows_is_auc_rows_for_binary_labels_and_the_mean_threshold_auc_for_grades():
    from search.stats.intervals import grade_auc_rows
    assert np.array_equal(grade_auc_rows(LABELS, PROBS), auc_rows(LABELS, PROBS))
    rng = np.random.default_rng(5)
    grades = rng.integers(0, 4, 50)
    score = grades + rng.normal(size=50)
    expected = np.mean([roc_auc_score(grades >= k, score) for k in (1, 2, 3)])
    assert grade_auc_rows(grades, score)[0] == pytest.approx(expected)
    assert math.isnan(grade_auc_rows(np.zeros(5, int), np.arange(5.0))[0])


def test_bootstrap_of_grades_keeps_every_grades_count_and_brackets_the_estimate():
    rng = np.random.default_rng(6)
    grades = rng.integers(0, 4, 60)
    score = grades + rng.normal(size=60)
    rows = stratified_resamples(grades, 200, seed=0)
    for row in rows[:20]:
        assert np.array_equal(np.bincount(grades[row], minlength=4), np.bincount(grades, minlength=4))
    ci = bootstrap_auc(grades, score, n_resamples=500)
    assert ci.low < ci.estimate < ci.high
    worse = score + rng.normal(0, 3, 60)
    diff = bootstrap_auc_difference(grades, score, worse, n_resamples=500)
    assert diff.estimate > 0 and diff.low > 0  # much noisier scores rank the grades significantly worse


def test_binary_bootstrap_intervals_are_unchanged_by_the_grade_generalisation():
    # the resamples draw class 0 then class 1, as before: the same seeded rows and interval
    rng = np.random.default_rng(0)
    parts = [np.flatnonzero(LABELS == 0), np.flatnonzero(LABELS == 1)]
    expected = np.concatenate([rng.choice(part, size=(100, part.size)) for part in parts], axis=1)
    assert np.array_equal(stratified_resamples(LABELS, 100, seed=0), expected)
