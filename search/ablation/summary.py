"""The ablation's numbers: one summary row per variant, and each variant's paired comparison with the baseline.

A row holds the mean and 95% CI of the fold AUCs and accuracies, the costs, and, for every variant but
the baseline, the fold-by-fold AUC difference from the baseline with its interval, a paired test
(``search.stats.paired``), the corrected resampled t-test of Nadeau and Bengio, and a verdict at :data:`ALPHA`.
For an ordinal task (severity) the AUC is the mean "grade >= k" AUC that every run was scored by, the
accuracy is the exact-grade accuracy, and each row adds the quadratic weighted kappa (mean and CI) and
the mean absolute error in grades (:data:`ORDINAL_SUMMARY_COLUMNS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lungct.splits import Fold
from search.ablation.runs import RunRecord
from search.ablation.variants import BASELINE, Variant, training_text
from search.stats.paired import PairedTest, corrected_resampled_ttest, mean_ci, paired_test, verdict
from space import cost, describe_spec

ALPHA = 0.05
SUMMARY_COLUMNS = (
    "variant", "n_runs", "n_diverged", "auc_mean", "auc_ci_low", "auc_ci_high", "acc_mean", "acc_ci_low",
    "acc_ci_high", "params", "gflops", "train_seconds_mean", "auc_diff_vs_baseline", "auc_diff_ci_low",
    "auc_diff_ci_high", "n_pairs", "p_value", "test", "p_value_nadeau_bengio", "verdict", "padding",
    "architecture", "training",
)
ORDINAL_SUMMARY_COLUMNS = tuple(c for name in SUMMARY_COLUMNS for c in (
    (name, "qwk_mean", "qwk_ci_low", "qwk_ci_high", "mae_mean") if name == "acc_ci_high" else (name,)))


def summary_columns(ordinal: bool) -> tuple[str, ...]:
    """The columns of ablation.csv: :data:`SUMMARY_COLUMNS`, or :data:`ORDINAL_SUMMARY_COLUMNS` for an ordinal task."""
    return ORDINAL_SUMMARY_COLUMNS if ordinal else SUMMARY_COLUMNS


def val_train_ratio(folds: Sequence[Fold]) -> float:
    """The mean validation/training size ratio of the folds: the corrected resampled t-test's correction."""
    return sum(len(f.val) / len(f.train) for f in folds) / len(folds)


def summarize(variant_list: Sequence[Variant], runs: Sequence[RunRecord], folds: Sequence[Fold],
              size: tuple[int, int, int], ordinal: bool = False) -> list[dict]:
    """One row per variant: means and CIs, costs, and the paired comparison with the baseline (by the runs'
    AUC, the mean "grade >= k" AUC of an ordinal task); ``ordinal`` adds its kappa and error columns."""
    order = [(f.repeat, f.fold) for f in folds]
    by_variant: dict[str, dict[tuple[int, int], RunRecord]] = {v.name: {} for v in variant_list}
    for run in runs:
        if run.variant in by_variant:
            by_variant[run.variant][(run.repeat, run.fold)] = run
    ratio = val_train_ratio(folds)
    reference = {k: r.auc for k, r in by_variant[BASELINE].items() if r.scored}
    rows = []
    for v in variant_list:
        mine = by_variant[v.name]
        scored = [mine[k] for k in order if k in mine and mine[k].scored]
        auc = mean_ci([r.auc for r in scored]).clipped(0.0, 1.0)
        acc = mean_ci([r.accuracy for r in scored]).clipped(0.0, 1.0)
        spec_cost = cost(v.spec, size)
        row = {
            "variant": v.name, "n_runs": len(scored),
            "n_diverged": sum(r.state == "pruned" for r in mine.values()),
            "auc_mean": auc.mean, "auc_ci_low": auc.low, "auc_ci_high": auc.high,
            "acc_mean": acc.mean, "acc_ci_low": acc.low, "acc_ci_high": acc.high,
            "params": spec_cost.params, "gflops": spec_cost.gflops,
            "train_seconds_mean": mean_ci([r.train_seconds for r in scored]).mean,
            "padding": v.padding, "architecture": describe_spec(v.spec.to_dict()),
            "training": training_text(v.train_spec),
        }
        if ordinal:
            qwk = mean_ci([r.qwk for r in scored if r.qwk is not None and math.isfinite(r.qwk)]).clipped(-1.0, 1.0)
            row.update(qwk_mean=qwk.mean, qwk_ci_low=qwk.low, qwk_ci_high=qwk.high,
                       mae_mean=mean_ci([r.mae for r in scored if r.mae is not None]).mean)
        if v.name == BASELINE:
            row.update(auc_diff_vs_baseline=0.0, auc_diff_ci_low=0.0, auc_diff_ci_high=0.0, n_pairs=len(scored),
                       p_value=math.nan, test="reference", p_value_nadeau_bengio=math.nan, verdict="reference")
        else:
            pairs = [k for k in order if k in reference and k in mine and mine[k].scored]
            test = paired_test([mine[k].auc for k in pairs], [reference[k] for k in pairs])
            row.update(_paired_columns(test, ratio, [mine[k].auc - reference[k] for k in pairs]))
        rows.append(row)
    return rows


def _paired_columns(test: PairedTest, ratio: float, differences: list[float]) -> dict:
    ci = test.diff_ci.clipped(-1.0, 1.0)
    return {
        "auc_diff_vs_baseline": test.diff, "auc_diff_ci_low": ci.low, "auc_diff_ci_high": ci.high,
        "n_pairs": test.n_pairs, "p_value": test.p_value, "test": test.test,
        "p_value_nadeau_bengio": corrected_resampled_ttest(differences, ratio), "verdict": verdict(test, ALPHA),
    }
