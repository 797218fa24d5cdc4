"""search.ablation.summary: the ratio of the corrected t-test, and each variant's summary row and paired comparison."""

import math
from types import SimpleNamespace

import pytest

from lungct.splits import Fold
from search.ablation.summary import ALPHA, ORDINAL_SUMMARY_COLUMNS, SUMMARY_COLUMNS, summarize, val_train_ratio
from search.ablation.variants import BASELINE, make_variants
from search.stats.paired import corrected_resampled_ttest
from space import cost

SIZE = (16, 24, 20)
FOLDS = [Fold(r, f, tuple(f"t{i}" for i in range(6)), ("v1", "v2", "v3")) for r in range(2) for f in range(3)]


def _run(variant, repeat, fold, auc, accuracy=0.5, state="complete", train_seconds=2.0):
    """A stand-in for a RunRecord: the fields summarize reads, with its ``scored`` rule."""
    return SimpleNamespace(variant=variant, repeat=repeat, fold=fold, auc=auc, accuracy=accuracy, state=state,
                           train_seconds=train_seconds, scored=state == "complete" and math.isfinite(auc))


@pytest.fixture(scope="module")
def variant_list():
    return make_variants([BASELINE, "sigmoid"], SIZE)


def _rows(variant_list, runs):
    return {r["variant"]: r for r in summarize(variant_list, runs, FOLDS, SIZE)}


def test_val_train_ratio_is_the_mean_of_each_folds_ratio():
    folds = [Fold(0, 0, ("a", "b", "c", "d"), ("e", "f")), Fold(0, 1, ("a", "b", "c", "d"), ("e",))]
    assert val_train_ratio(folds) == pytest.approx((0.5 + 0.25) / 2)


def test_summarize_gives_one_row_per_variant_in_order_with_every_column(variant_list):
    rows = summarize(variant_list, [_run(BASELINE, 0, 0, 0.7)], FOLDS, SIZE)
    assert [r["variant"] for r in rows] == [BASELINE, "sigmoid"]
    assert all(set(r) == set(SUMMARY_COLUMNS) for r in rows)


def test_summarize_baseline_row_is_the_reference(variant_list):
    base = _rows(variant_list, [_run(BASELINE, 0, f, 0.6 + 0.05 * f) for f in range(3)])[BASELINE]
    assert (base["auc_diff_vs_baseline"], base["auc_diff_ci_low"], base["auc_diff_ci_high"]) == (0.0, 0.0, 0.0)
    assert base["test"] == base["verdict"] == "reference" and base["n_pairs"] == 3
    assert math.isnan(base["p_value"]) and math.isnan(base["p_value_nadeau_bengio"])
    assert base["auc_mean"] == pytest.approx(0.65) and base["auc_ci_low"] < 0.65 < base["auc_ci_high"]


def test_summarize_counts_scored_runs_and_diverged_runs_apart(variant_list):
    runs = [_run(BASELINE, 0, 0, 0.7), _run(BASELINE, 0, 1, math.nan, state="pruned"),
            _run(BASELINE, 0, 2, math.nan, state="fail"), _run(BASELINE, 1, 0, 0.9, train_seconds=4.0)]
    base = _rows(variant_list, runs)[BASELINE]
    assert (base["n_runs"], base["n_diverged"]) == (2, 1)
    assert base["auc_mean"] == pytest.approx(0.8) and base["train_seconds_mean"] == pytest.approx(3.0)


def test_summarize_clips_intervals_to_the_metrics_range(variant_list):
    runs = [_run(BASELINE, 0, f, auc, accuracy=acc) for f, (auc, acc) in enumerate([(0.99, 1.0), (0.6, 0.1),
                                                                                     (1.0, 0.9)])]
    base = _rows(variant_list, runs)[BASELINE]
    assert base["auc_ci_high"] == 1.0 and base["acc_ci_low"] == 0.0 and base["acc_ci_high"] == 1.0


def test_summarize_costs_are_the_fitted_specs(variant_list):
    rows = _rows(variant_list, [])
    for v in variant_list:
        assert rows[v.name]["params"] == cost(v.spec, SIZE).params
        assert rows[v.name]["gflops"] == pytest.approx(cost(v.spec, SIZE).gflops)
        assert math.isnan(rows[v.name]["auc_mean"]) and rows[v.name]["n_runs"] == 0


def test_summarize_pairs_only_folds_both_scored_and_ignores_unlisted_variants(variant_list):
    base = [_run(BASELINE, 0, f, 0.7) for f in range(3)]
    mine = [_run("sigmoid", 0, 0, 0.8), _run("sigmoid", 0, 1, 0.6), _run("sigmoid", 1, 0, 0.99),  # no pair
            _run("sigmoid", 0, 2, math.nan, state="pruned")]
    row = _rows(variant_list, [*base, *mine, _run("avgpool", 0, 0, 0.1)])["sigmoid"]
    assert row["n_pairs"] == 2 and row["n_runs"] == 3 and row["n_diverged"] == 1
    assert row["auc_diff_vs_baseline"] == pytest.approx(((0.8 - 0.7) + (0.6 - 0.7)) / 2)
    assert row["p_value_nadeau_bengio"] == pytest.approx(corrected_resampled_ttest([0.1, -0.1], 0.5))


def test_summarize_consistent_gains_on_six_folds_are_better(variant_list):
    gains = [0.02, 0.03, 0.04, 0.05, 0.06, 0.07]
    runs = [_run(BASELINE, f.repeat, f.fold, 0.7) for f in FOLDS]
    runs += [_run("sigmoid", f.repeat, f.fold, 0.7 + g) for f, g in zip(FOLDS, gains, strict=True)]
    row = _rows(variant_list, runs)["sigmoid"]
    assert row["test"].startswith("wilcoxon") and row["p_value"] < ALPHA
    assert row["verdict"] == "better" and row["auc_diff_vs_baseline"] == pytest.approx(sum(gains) / 6)
    assert row["auc_diff_ci_low"] > 0


def test_summarize_mixed_differences_are_no_detectable_difference(variant_list):
    runs = [_run(BASELINE, f.repeat, f.fold, 0.7) for f in FOLDS]
    runs += [_run("sigmoid", f.repeat, f.fold, 0.7 + d)
             for f, d in zip(FOLDS, [0.05, -0.04, 0.03, -0.06, 0.02, -0.01], strict=True)]
    assert _rows(variant_list, runs)["sigmoid"]["verdict"] == "no detectable difference"


def _graded(variant, repeat, fold, auc, qwk, mae):
    return SimpleNamespace(**vars(_run(variant, repeat, fold, auc)), qwk=qwk, mae=mae)


def test_summarize_of_an_ordinal_task_adds_the_kappa_and_grade_error_and_pairs_the_ordinal_auc(variant_list):
    runs = [_graded(BASELINE, 0, f, 0.6, 0.2 + 0.1 * f, 1.0) for f in range(3)]
    runs += [_graded("sigmoid", 0, f, 0.65 + 0.01 * f, 0.3, 0.5) for f in range(3)]
    rows = {r["variant"]: r for r in summarize(variant_list, runs, FOLDS, SIZE, ordinal=True)}
    assert all(set(r) == set(ORDINAL_SUMMARY_COLUMNS) for r in rows.values())
    assert rows[BASELINE]["qwk_mean"] == pytest.approx(0.3) and rows[BASELINE]["mae_mean"] == pytest.approx(1.0)
    assert rows["sigmoid"]["auc_diff_vs_baseline"] == pytest.approx(0.06) and rows["sigmoid"]["n_pairs"] == 3
    assert set(SUMMARY_COLUMNS) < set(ORDINAL_SUMMARY_COLUMNS)
    assert set(ORDINAL_SUMMARY_COLUMNS) - set(SUMMARY_COLUMNS) == {"qwk_mean", "qwk_ci_low", "qwk_ci_high", "mae_mean"}
