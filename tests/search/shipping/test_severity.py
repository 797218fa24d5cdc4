"""What an ordinal (severity) export measures, draws and writes: search.shipping.metrics.evaluate_grades, the
quadratic weighted kappa and the percentile bootstrap, the two pictures, and the model card.

A real severity export is checked end to end in tests/search/commands/test_export_severity.py.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from search.model.routing import CLINICAL_NOTE, DISCLAIMER, ROUTING
from search.shipping import metrics as shipping_metrics
from search.shipping.figures import CONFUSION_PNG, ORDINAL_FIGURES, ROC_PNG, write_model_figures
from search.shipping.metrics import bootstrap_statistic, evaluate, quadratic_kappa_rows
from search.shipping.model_card import render_model_card
from search.stats.intervals import bootstrap_auc, stratified_resamples
from search.stats.metrics import predicted_grade, severity_score, task_metrics

K = 4
NAMES = ["CT-0", "CT-1", "CT-2", "CT-3 or CT-4"]
GRADES = [["CT-0"], ["CT-1"], ["CT-2"], ["CT-3", "CT-4"]]
RESAMPLES = 200


def _cumulative(labels: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """(N, K-1) P(grade >= k) of a proportional-odds model whose score is the grade plus noise."""
    rng = np.random.default_rng(seed)
    z = 1.6 * (labels + rng.normal(0, noise, labels.size))[:, None] - 1.6 * (np.arange(1, K) - 0.5)[None, :]
    return 1 / (1 + np.exp(-z))


LABELS = np.repeat(np.arange(K), [12, 8, 6, 6])
P_MODEL = _cumulative(LABELS, 0.6, seed=0)
P_BASE = _cumulative(LABELS, 1.2, seed=1)


def _shipped(probs):
    return SimpleNamespace(probs=probs, metrics=task_metrics(LABELS, probs))


def _test(base=True) -> dict:
    return evaluate(_shipped(P_MODEL), _shipped(P_BASE) if base else None,
                    SimpleNamespace(labels=torch.tensor(LABELS)), RESAMPLES, seed=0, classes=tuple(NAMES))


@pytest.fixture(scope="module")
def tested() -> dict:
    return _test()


def _metrics(test: dict, phantoms: bool = True) -> dict:
    """A severity metrics.json dict in search.export's layout, its test entry made by ``evaluate``."""
    train_spec = {"optimizer": "adam", "lr": 0.0001, "weight_decay": 0.0, "batch_size": 2}
    return {
        "created": "2025-01-01T00:00:00+00:00",
        "study": {"name": "lungct", "storage": "sqlite:///lungct.db", "objectives": ["auc"], "n_trials": 9},
        "task": {"name": "severity", "description": "severity grades CT-0 < CT-1 < CT-2 < CT-3/CT-4",
                 "classes": NAMES, "threshold": 0.5, "ordinal": True, "grades": GRADES},
        "test": test,
        "selection": {"how": "trial 3, as given by --trial", "is_baseline": False, "rule": None, "why": None,
                      "confirmed_score": None, "baseline_confirmed_score": None,
                      "test_auc": test["model"]["auc"]["estimate"], "optimism": None},
        "model": {"trial": 3, "architecture": "2 levels 64-64", "params": 12345, "keras_params": 12400,
                  "gflops": 0.0421, "members": 1, "member_train_scans": [], "epochs": 4, "epochs_rule": "as given",
                  "train_spec": train_spec, "search_cv_auc": 0.812},
        "baseline": {"architecture": "4 levels 64-64-128-256", "epochs": 4, "epochs_rule": "as given", "note": None},
        "data": {"root": "mosmed", "layout": "mosmed", "size": [16, 24, 20], "hu_window": [-1000, 400],
                 "split_seed": 0, "split_file": "split-abc-s0.json", "n_train": 20, "n_val": 5, "n_test": 32,
                 "excluded": 0, "skipped": 0, "phantoms": phantoms},
        "training": {"device": "cpu", "augmentation": "the search's augmentation"},
        "export_check": {"weights_max_abs_diff": 1e-6, "onnx_max_abs_diff": 2e-5, "onnx_runtime": "onnxruntime",
                         "tolerance": 1e-4},
        "versions": {"python": "3.11.9", "torch": "2.4.0"},
    }


# ---- the numbers ----------------------------------------------------------------------------------------

def test_quadratic_kappa_rows_is_scikit_learns_kappa_on_every_row():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, K, size=(20, 30))
    pred = np.clip(truth + rng.integers(-2, 3, size=truth.shape), 0, K - 1)
    expected = [cohen_kappa_score(t, p, labels=list(range(K)), weights="quadratic") for t, p in
                zip(truth, pred, strict=True)]
    assert np.allclose(quadratic_kappa_rows(truth, pred, K), expected)


def test_quadratic_kappa_rows_is_nan_where_no_disagreement_is_possible():
    assert np.isnan(quadratic_kappa_rows(np.zeros((1, 5), int), np.zeros((1, 5), int), K)[0])


def test_bootstrap_statistic_uses_the_auc_intervals_resamples():
    values = np.arange(LABELS.size, dtype=float)
    interval = bootstrap_statistic(LABELS, lambda r: values[r].mean(axis=1), RESAMPLES, seed=3)
    rows = stratified_resamples(LABELS, RESAMPLES, 3)
    means = values[rows].mean(axis=1)
    assert interval.estimate == pytest.approx(values.mean())
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert f"{RESAMPLES} resamples, seed 3" in interval.method


def test_evaluate_grades_scores_the_selection_metric_with_its_interval(tested):
    auc = tested["model"]["auc"]
    expected = bootstrap_auc(LABELS, severity_score(P_MODEL), RESAMPLES, seed=0)
    assert auc == expected.to_dict()
    assert auc["estimate"] == pytest.approx(task_metrics(LABELS, P_MODEL).auc)
    assert auc["low"] <= auc["estimate"] <= auc["high"]


def test_evaluate_grades_holds_qwk_and_mae_with_intervals_and_the_other_metrics(tested):
    m, pred = tested["model"], predicted_grade(P_MODEL)
    assert m["qwk"]["estimate"] == pytest.approx(cohen_kappa_score(LABELS, pred, weights="quadratic"))
    assert m["mae"]["estimate"] == pytest.approx(np.abs(pred - LABELS).mean())
    for key in ("qwk", "mae"):
        assert m[key]["low"] <= m[key]["estimate"] <= m[key]["high"], key
    ordinal = task_metrics(LABELS, P_MODEL)
    assert m["macro_auc"] == pytest.approx(ordinal.macro_auc)
    assert m["balanced_accuracy"] == pytest.approx(ordinal.balanced_accuracy)


def test_evaluate_grades_holds_the_confusion_matrix_as_counts_and_row_shares(tested):
    cm = tested["model"]["confusion_matrix"]
    counts, shares = np.array(cm["counts"]), np.array(cm["row_normalised"])
    assert counts.tolist() == [list(r) for r in task_metrics(LABELS, P_MODEL).confusion]
    assert counts.sum(axis=1).tolist() == tested["n_per_grade"] == [12, 8, 6, 6]
    assert np.allclose(shares, counts / counts.sum(axis=1, keepdims=True), atol=1e-5)
    assert cm["grades"] == NAMES and cm["rows"] == "true grade"


def test_evaluate_grades_holds_each_grade_at_least_roc_with_its_band(tested):
    at_least = tested["model"]["at_least"]
    assert [t["k"] for t in at_least] == [1, 2, 3] and [t["grade"] for t in at_least] == NAMES[1:]
    for t in at_least:
        k = t["k"]
        above = np.greater_equal(LABELS, k)
        assert t["auc"]["estimate"] == pytest.approx(roc_auc_score(above, P_MODEL[:, k - 1]))
        assert t["n_above"] == above.sum() and t["n_below"] == (~above).sum()
        band = t["roc"]["band"]
        assert len(band["tpr_low"]) == len(band["fpr"]) and f"{RESAMPLES} stratified" in band["method"]
        assert t["roc"]["fpr"][0] == 0.0 and t["roc"]["tpr"][-1] == 1.0


def test_evaluate_grades_pairs_the_difference_from_the_baseline(tested):
    diff = tested["auc_difference"]
    gain = tested["model"]["auc"]["estimate"] - tested["baseline"]["auc"]["estimate"]
    assert diff["estimate"] == pytest.approx(gain)
    assert diff["low"] <= diff["estimate"] <= diff["high"] and "paired" in diff["method"]
    assert not tested["baseline_is_model"]


def test_evaluate_grades_is_strict_json(tested):
    json.dumps(tested, allow_nan=False)


def test_evaluate_grades_of_a_threshold_without_scans_above_it_says_so():
    labels = np.repeat([0, 1, 2], [6, 5, 5])  # no CT-3 or CT-4 in the test part
    probs = _cumulative(labels, 0.5, seed=2)
    test = evaluate(SimpleNamespace(probs=probs, metrics=task_metrics(labels, probs)), None,
                    SimpleNamespace(labels=torch.tensor(labels)), RESAMPLES, seed=0, classes=tuple(NAMES))
    top = test["model"]["at_least"][2]
    assert top["roc"] is None and top["auc"] is None and "one side" in top["note"]
    assert test["model"]["macro_auc"] is None  # undefined without every grade
    json.dumps(test, allow_nan=False)


def test_test_predictions_of_an_ordinal_model_list_each_scans_cumulative_probabilities():
    ids = [f"s{i}" for i in range(LABELS.size)]
    rows = shipping_metrics.test_predictions(ids, SimpleNamespace(labels=torch.tensor(LABELS)), _shipped(P_MODEL), None)
    assert rows[-1]["label"] == 3 and len(rows[-1]["p_model"]) == K - 1 and rows[-1]["p_baseline"] is None


# ---- the pictures and the card --------------------------------------------------------------------------

def test_write_model_figures_of_a_severity_export_draws_the_roc_and_the_confusion_matrix(tested, tmp_path):
    written = write_model_figures(_metrics(tested), tmp_path)
    assert [p.name for p in written] == list(ORDINAL_FIGURES) == [ROC_PNG, CONFUSION_PNG]
    for path in written:
        width, height = Image.open(path).size
        assert 1000 <= width <= 1450 and 600 <= height <= 1100, (path.name, width, height)


def test_write_model_figures_of_a_severity_export_without_a_baseline_draws_one_panel(tmp_path):
    metrics = _metrics(_test(base=False))
    metrics["baseline"] = {"note": "the seed baseline cannot run at 8x8x8"}
    assert [p.name for p in write_model_figures(metrics, tmp_path)] == list(ORDINAL_FIGURES)


def test_severity_card_title_names_the_ordered_grades(tested):
    card = render_model_card(_metrics(tested))
    assert card.startswith("# Model card: severity grading CT-0 < CT-1 < CT-2 < CT-3/CT-4 — trial 3")
    assert f"**{DISCLAIMER}**" in card and CLINICAL_NOTE in card and "synthetic phantoms" in card


def test_severity_card_names_a_postgresql_study_without_host_socket_or_user(tested):
    m = _metrics(tested)
    m["study"]["storage"] = "postgresql://alice:***@db.clinic.internal:6543/optuna?host=/var/run/postgresql"
    card = render_model_card(m)
    assert "Study `lungct` in a PostgreSQL database (9 trials" in card
    assert not [word for word in ("alice", "db.clinic.internal", "6543", "/var/run/postgresql") if word in card]


def test_severity_card_routes_each_grade_and_the_pooled_one_to_both_decisions(tested):
    card = render_model_card(_metrics(tested))
    for name in ("CT-0", "CT-1", "CT-2"):
        assert f"| {name} | {ROUTING[name]} |" in card
    assert f"| CT-3 or CT-4 | if CT-3: {ROUTING['CT-3']}; if CT-4: {ROUTING['CT-4']} |" in card


def test_severity_card_reports_the_metrics_with_intervals_beside_the_baseline(tested):
    card = render_model_card(_metrics(tested))
    model, base = tested["model"], tested["baseline"]
    row = next(line for line in card.splitlines() if line.startswith("| mean grade>=k ROC AUC"))
    assert f"{model['auc']['estimate']:.3f} (95% CI" in row and f"{base['auc']['estimate']:.3f} (95% CI" in row
    assert any(line.startswith("| quadratic weighted kappa") for line in card.splitlines())
    assert "Difference in mean grade>=k AUC, exported model minus seed baseline" in card
    cm = model["confusion_matrix"]
    assert "| true \\ predicted | CT-0 | CT-1 | CT-2 | CT-3 or CT-4 |" in card
    first = " | ".join(f"{c} ({s:.0%})" for c, s in zip(cm["counts"][0], cm["row_normalised"][0], strict=True))
    assert f"| CT-0 | {first} |" in card
    assert f"]({ROC_PNG})" in card and f"]({CONFUSION_PNG})" in card
    assert "calibration.png" not in card


def test_severity_card_names_the_ordinal_metric_in_the_confirmed_score_and_its_optimism(tested):
    metrics = _metrics(tested)
    metrics["selection"] |= {"confirmed_score": 0.8, "optimism": 0.8 - metrics["selection"]["test_auc"]}
    card = render_model_card(metrics)
    assert "Confirmed score (the mean grade>=k AUC of the fold models on fresh folds, averaged): 0.800" in card
    assert "locked test mean grade>=k AUC" in card
