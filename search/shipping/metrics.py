"""What export measures and records in ``metrics.json``: the locked-test evaluation and its provenance.

The model's and the baseline's test metrics with 95% intervals and the curves their pictures are drawn
from (``evaluate``), how the model was chosen and how optimistic its confirmed score was, how it was
trained, the data summary without local paths or scan ids, and the versions it ran with; ``metrics_json``
puts them together in the file's layout.

For an ordinal task (severity grades) ``evaluate`` hands over to ``evaluate_grades``: the mean "grade >= k"
AUC that selected the model, with its stratified bootstrap interval and the paired difference from the
baseline; the quadratic weighted kappa and the mean absolute error of the median grade with percentile
intervals over the same resamples (``bootstrap_statistic``); the macro one-vs-rest AUC, the balanced
accuracy, the K x K confusion matrix (counts and row shares); and each "grade >= k" ROC curve with its
band (``search.shipping.figures.curve_metrics`` on labels >= k against P(grade >= k)).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lungct.phantom import MARKER_NAME
from search.model.folder import ModelInfo
from search.selection.confirm import BASELINE_KEY
from search.shipping.figures import curve_metrics
from search.shipping.models import Choice, ExportSettings, Shipped
from search.stats.intervals import (
    DEFAULT_CONFIDENCE,
    Interval,
    bootstrap_auc,
    bootstrap_auc_difference,
    stratified_resamples,
    wilson,
)
from search.stats.metrics import BinaryMetrics, OrdinalMetrics, predicted_grade, severity_score
from search.study import schema
from search.study.storage import shareable_storage
from search.training.data import PreparedData, Tensors
from space import cost, describe_spec

PHANTOM_MARKER = MARKER_NAME  # the file that marks a synthetic phantom set


VERSIONED = ("lungct-nas", "torch", "monai", "optuna", "numpy", "nibabel", "scikit-learn", "safetensors", "onnx",
             "onnxscript", "onnxruntime", "matplotlib")


def rates(m: BinaryMetrics) -> dict:
    """Accuracy, sensitivity and specificity with Wilson intervals, and the confusion matrix."""
    return {
        "accuracy": wilson(m.tp + m.tn, m.n).to_dict(),
        "sensitivity": wilson(m.tp, m.tp + m.fn).to_dict(),
        "specificity": wilson(m.tn, m.tn + m.fp).to_dict(),
        "threshold": m.threshold,
        "confusion_matrix": {"tn": m.tn, "fp": m.fp, "fn": m.fn, "tp": m.tp},
    }


def evaluate(model: Shipped, base: Shipped | None, test: Tensors, n_resamples: int, seed: int,
             classes: tuple[str, ...] = ()) -> dict:
    """Test metrics of the model (and the baseline) with 95% CIs, and the paired difference in AUC.

    Each model's entry also holds the numbers its pictures are drawn from (``search.shipping.figures.curve_metrics``:
    ROC curve and bootstrap band, from the AUC interval's resamples, calibration bins, Brier score), which
    name no scan. An ordinal model's (N, K-1) probabilities are scored by :func:`evaluate_grades`, whose
    grades ``classes`` names.
    """
    if np.ndim(model.probs) == 2:
        return evaluate_grades(model, base, test, n_resamples, seed, classes)
    labels = test.labels.numpy().astype(int)
    out: dict[str, Any] = {"n": int(labels.size), "n_negative": int(np.sum(labels == 0)),
                           "n_positive": int(np.sum(labels == 1))}
    for key, t in (("model", model), ("baseline", base)):
        if t is None:
            out[key] = None
            continue
        assert isinstance(t.metrics, BinaryMetrics)  # a model of one probability per scan
        out[key] = {"auc": bootstrap_auc(labels, t.probs, n_resamples, seed=seed).to_dict(), **rates(t.metrics),
                    **curve_metrics(labels, t.probs, n_resamples, seed=seed)}
    out["baseline_is_model"] = base is model
    out["auc_difference"] = (bootstrap_auc_difference(labels, model.probs, base.probs, n_resamples, seed=seed)
                             .to_dict() if base is not None else None)
    return out


def _finite(value: float) -> float | None:
    """A number for JSON: None where it is undefined (NaN), so metrics.json stays strict JSON."""
    return float(value) if math.isfinite(value) else None


def _interval(values: np.ndarray, estimate: float, confidence: float, method: str) -> Interval:
    """``estimate`` with the percentile interval of the finite ``values`` (NaN bounds where none is finite)."""
    values = values[np.isfinite(values)]
    tail = 100 * (1 - confidence) / 2
    low, high = (np.percentile(values, [tail, 100 - tail]) if values.size else (math.nan, math.nan))
    return Interval(float(estimate), float(low), float(high), confidence, method)


def bootstrap_statistic(labels: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int,
                        seed: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """A statistic of the test scans with a stratified bootstrap percentile interval.

    The resamples are ``stratified_resamples(labels, n_resamples, seed)``, those of the AUC interval, so
    every interval of a model describes the same uncertainty.

    Args:
        labels: (N,) the grades, which the resamples keep the counts of.
        statistic: Maps (R, N) row indices to (R,) values (NaN where undefined); row ``arange(N)`` is the estimate.
        n_resamples: Bootstrap resamples.
        seed: Seeds the resamples.
        confidence: The interval's coverage.
    """
    labels = np.asarray(labels).astype(int).ravel()
    estimate = float(statistic(np.arange(labels.size)[None, :])[0])
    values = statistic(stratified_resamples(labels, n_resamples, seed))
    return _interval(np.asarray(values, dtype=np.float64), estimate, confidence,
                     f"stratified bootstrap, percentile interval, {n_resamples} resamples, seed {seed}")


def quadratic_kappa_rows(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Quadratic weighted kappa of each row of (R, N) integer grades 0..k-1 (``cohen_kappa_score``'s, vectorised).

    NaN where it is undefined (every scan of a row in one grade of both, so no disagreement is possible).
    """
    truth, pred = np.atleast_2d(truth).astype(int), np.atleast_2d(pred).astype(int)
    rows, n = truth.shape
    cells = (truth * k + pred) + (k * k) * np.arange(rows)[:, None]  # each row's own k x k block
    observed = np.bincount(cells.ravel(), minlength=rows * k * k).reshape(rows, k, k).astype(np.float64)
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / n
    weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2.0
    disagree, chance = (observed * weights).sum(axis=(1, 2)), (expected * weights).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chance > 0, 1.0 - disagree / chance, np.nan)


def grade_entry(labels: np.ndarray, cumulative: np.ndarray, m: OrdinalMetrics, classes: tuple[str, ...],
                n_resamples: int, seed: int) -> dict:
    """One ordinal model's test metrics with 95% intervals, its confusion matrix and its "grade >= k" curves.

    Args:
        labels: (N,) true grades 0..K-1.
        cumulative: (N, K-1) P(grade >= k).
        m: ``search.stats.metrics.task_metrics`` of the two.
        classes: Names of grades 0..K-1.
        n_resamples: Bootstrap resamples; seed: their seed (shared by every interval and band).
    """
    k = m.grades
    pred = predicted_grade(cumulative)
    counts = np.asarray(m.confusion, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    at_least = []
    for g in range(1, k):
        above = (labels >= g).astype(int)
        entry = {"k": g, "grade": classes[g], "event": f"grade >= {classes[g]}", "n_above": int(above.sum()),
                 "n_below": int(above.size - above.sum())}
        if 0 < above.sum() < above.size:
            entry |= {"auc": bootstrap_auc(above, cumulative[:, g - 1], n_resamples, seed=seed).to_dict(),
                      **curve_metrics(above, cumulative[:, g - 1], n_resamples, seed=seed)}
        else:
            entry |= {"auc": None, "roc": None,
                      "note": f"no ROC curve: the test part holds scans on one side of {classes[g]} only"}
        at_least.append(entry)
    return {
        "auc": bootstrap_auc(labels, severity_score(cumulative), n_resamples, seed=seed).to_dict(),
        "qwk": bootstrap_statistic(labels, lambda r: quadratic_kappa_rows(labels[r], pred[r], k), n_resamples,
                                   seed).to_dict(),
        "mae": bootstrap_statistic(labels, lambda r: np.abs(pred[r] - labels[r]).mean(axis=1), n_resamples,
                                   seed).to_dict(),
        "macro_auc": _finite(m.macro_auc),
        "balanced_accuracy": _finite(m.balanced_accuracy),
        "accuracy": wilson(int(np.trace(counts)), int(counts.sum())).to_dict(),
        "confusion_matrix": {"counts": counts.tolist(), "row_normalised": [_rounded_row(r) for r in share],
                             "rows": "true grade", "columns": "predicted grade (the median)",
                             "grades": list(classes)},
        "at_least": at_least,
    }


def _rounded_row(row: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in row]


def evaluate_grades(model: Shipped, base: Shipped | None, test: Tensors, n_resamples: int, seed: int,
                    classes: tuple[str, ...]) -> dict:
    """Test metrics of an ordinal model (and the baseline), and the paired difference in the mean "grade >= k" AUC.

    ``auc`` is the metric the search and the confirmation ranked by (the mean of the K-1 "grade >= k" ROC
    AUCs, from the expected grade, which ranks as every "grade >= k" does); every interval and band comes
    from the same stratified bootstrap resamples of the test scans (each grade's from that grade).
    """
    labels = test.labels.numpy().astype(int)
    k = int(np.shape(model.probs)[1]) + 1
    if len(classes) != k:
        raise ValueError(f"classes: expected the names of the {k} grades, got {list(classes)}")
    out = {"n": int(labels.size), "grades": list(classes),
           "n_per_grade": [int(np.sum(labels == g)) for g in range(k)],
           "metric": 'mean of the K-1 "grade >= k" ROC AUCs of the expected grade (the selection metric; the '
                     "binary AUC at K = 2)",
           "predicted_grade": "the median grade: the number of k with P(grade >= k) >= 0.5"}
    for key, t in (("model", model), ("baseline", base)):
        if t is None:
            out[key] = None
            continue
        assert isinstance(t.metrics, OrdinalMetrics)  # a model of K-1 probabilities per scan
        out[key] = grade_entry(labels, t.probs, t.metrics, classes, n_resamples, seed)
    out["baseline_is_model"] = base is model
    out["auc_difference"] = (bootstrap_auc_difference(labels, severity_score(model.probs), severity_score(base.probs),
                                                      n_resamples, seed=seed).to_dict() if base is not None else None)
    return out


def selection_entry(choice: Choice, result: dict) -> dict:
    """How the model was chosen, its confirmed score, its test AUC, and the difference (the optimism)."""
    entry = {"how": choice.how, "is_baseline": choice.is_baseline, "rule": None, "why": None,
             "confirmed_score": None, "baseline_confirmed_score": None, "test_auc": result["model"]["auc"]["estimate"],
             "optimism": None}
    decision = choice.confirmation
    if decision:
        entry["rule"] = decision.rule
        base = decision.candidate(BASELINE_KEY)
        mine = base if choice.is_baseline else next(
            (r for r in decision.candidates if choice.trial is not None and r.trial == choice.trial.number), None)
        if mine is not None:
            entry["confirmed_score"] = mine.confirmed
        if base is not None:
            entry["baseline_confirmed_score"] = base.confirmed
        if choice.how.startswith("the confirmation"):
            entry["why"] = decision.recommended.why
        if entry["confirmed_score"] is not None:
            entry["optimism"] = entry["confirmed_score"] - entry["test_auc"]
    return entry


def training_entry(s: ExportSettings, model: Shipped) -> dict:
    """How the shipped weights were trained, in words and numbers."""
    if model.members > 1:
        data = (f"an ensemble of {model.members} fold models from the confirmation stage, each trained on its "
                f"fold's training scans ({'/'.join(map(str, model.member_train_scans))} of train + validation) and "
                "scored on the rest; probabilities averaged")
        mode = "confirmation fold models"
    else:
        data, mode = "train + validation parts", "trained on train + validation"
    return {"data": data, "mode": mode, "device": s.device.type, "seed": s.seed,
            "augmentation": "the search's augmentation (search.training.loop.DEFAULT_AUGMENT)",
            "batchnorm_statistics": "recomputed over the training scans after training "
                                    "(search.training.loop.recalibrate_batchnorm), model and baseline alike",
            "test_inference": "float32 on the CPU, " + ("predicted grade the median (P(grade >= k) >= 0.5)"
                                                        if np.ndim(model.probs) == 2 else "threshold 0.5")}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def model_entry(t: Shipped, trial: FrozenTrial | None, size: tuple[int, int, int]) -> dict:
    grades = getattr(getattr(t, "model", None), "grades", 2)  # an ordinal head's cutpoints count too
    c = cost(t.spec, size, grades=grades)
    entry = {
        "trial": t.trial, "spec": t.spec.to_dict(), "architecture": describe_spec(t.spec.to_dict()),
        "train_spec": t.train_spec.to_dict(), "params": c.params, "keras_params": c.keras_params,
        "gflops": round(c.gflops, 4), "members": t.members, "member_train_scans": list(t.member_train_scans),
        "epochs": t.epochs, "epochs_rule": t.epochs_rule, "train_seconds": t.train_seconds, "note": t.note,
    }
    if trial is not None and trial.state == TrialState.COMPLETE:
        entry["search_cv_auc"] = trial.values[0]
        entry["search_cv_se"] = trial.user_attrs.get(schema.SCORE_SE)
    return entry


def data_entry(prepared: PreparedData, root: Path, settings: dict, test_ids: list[str] | None) -> dict:
    """The data summary with folder names in place of local paths, and the test ids only if asked for."""
    summary = prepared.summary()
    summary["root"] = Path(summary["root"]).name
    summary["split_file"] = Path(summary["split_file"]).name  # it names the data set's fingerprint and seed
    summary["phantoms"] = settings.get("data") is None or (root / PHANTOM_MARKER).is_file()
    if test_ids is not None:
        summary["test_ids"] = test_ids
    return summary


def shareable_settings(settings: dict) -> dict:
    """The study's settings with the data folder named, not located."""
    return settings | ({"data": Path(settings["data"]).name} if settings.get("data") else {})


def _rounded_p(p: np.ndarray | float) -> float | list[float]:
    """A probability, or an ordinal model's K-1 P(grade >= k), rounded for metrics.json."""
    return [round(float(v), 6) for v in p] if isinstance(p, np.ndarray) and p.ndim else round(float(p), 6)


def test_predictions(ids: list[str], test: Tensors, model: Shipped, base: Shipped | None) -> list[dict]:
    """Per test scan: study id, label, and each model's probability (for ROC curves made elsewhere).

    For an ordinal model the label is the grade and each probability is the list of P(grade >= k), k = 1..K-1.
    """
    rows = []
    for i, (sid, label) in enumerate(zip(ids, test.labels.tolist(), strict=True)):
        rows.append({"study_id": sid, "label": int(label), "p_model": _rounded_p(model.probs[i]),
                     "p_baseline": _rounded_p(base.probs[i]) if base is not None else None})
    return rows


def task_entry(info: ModelInfo) -> dict:
    """metrics.json's task: its name, description, class names and threshold; an ordinal task's grades too."""
    entry = {"name": info.task, "description": info.task_description, "classes": list(info.classes),
             "threshold": info.threshold}
    if info.ordinal:
        entry |= {"ordinal": True, "grades": [list(g) for g in info.grades],
                  "predicted_grade": "the median: the number of k with P(grade >= k) >= 0.5"}
    return entry


def metrics_json(*, study: optuna.Study, s: ExportSettings, info: ModelInfo, choice: Choice, result: dict,
                 model: Shipped, base: Shipped | None, base_trial: FrozenTrial | None, base_note: str | None,
                 data: dict, test: Tensors, test_ids: list[str], check: dict) -> dict:
    """The whole of metrics.json, section by section.

    Args:
        result: The test evaluation (:func:`evaluate`).
        base: The seed baseline trained beside the model (the model itself where it is the baseline; None where
            the baseline cannot run at the study's size, which ``base_note`` says).
        data: The data summary (:func:`data_entry`).
        test_ids: The test part's study ids, written per scan only with ``s.include_scan_ids``.
        check: The written folder's reload and ONNX check (``search.shipping.writing.check_export``).
    """
    stored = study.user_attrs[schema.STUDY_SETTINGS]
    return {
        "format_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "study": {"name": s.study, "storage": shareable_storage(s.storage),
                  "objectives": study.user_attrs.get(schema.STUDY_OBJECTIVES, ["auc"]),
                  "n_trials": len(study.trials), "settings": shareable_settings(stored)},
        "task": task_entry(info),
        "test": result,
        "selection": selection_entry(choice, result),
        "model": model_entry(model, choice.trial, s.size),
        "baseline": (model_entry(base, base_trial, s.size) | {"note": base_note}) if base is not None
        else {"note": base_note},
        "data": data,
        "training": training_entry(s, model),
        **({"test_predictions": test_predictions(test_ids, test, model, base)} if s.include_scan_ids else {}),
        "export_check": check,
        "versions": versions(),
    }


def print_test(result: dict, classes: tuple[str, ...]) -> None:
    if "n_per_grade" in result:
        print_grades(result)
        return
    print(f"\nlocked test part ({result['n']} scans: {result['n_negative']} {classes[0]}, "
          f"{result['n_positive']} {classes[1]}), evaluated once:")
    for key, label in (("model", "exported model"), ("baseline", "seed baseline")):
        r = result[key]
        if r is None:
            continue
        auc = Interval(**r["auc"]).text()
        rates = ", ".join(f"{k} {Interval(**r[k]).estimate:.3f}" for k in ("accuracy", "sensitivity", "specificity"))
        print(f"  {label:<15} AUC {auc}; {rates}")
    if result["baseline_is_model"]:
        print("  (the exported model is the seed baseline itself)")
    elif result["auc_difference"] is not None:
        print(f"  difference in AUC (model - baseline): {Interval(**result['auc_difference']).text()}")



def print_grades(result: dict) -> None:
    """An ordinal test evaluation in a few lines: per model the mean "grade >= k" AUC, QWK and MAE with CIs."""
    counts = ", ".join(f"{n} {name}" for n, name in zip(result["n_per_grade"], result["grades"], strict=True))
    print(f"\nlocked test part ({result['n']} scans: {counts}), evaluated once; grades "
          f"{' < '.join(result['grades'])}, predicted grade the median:")
    for key, label in (("model", "exported model"), ("baseline", "seed baseline")):
        r = result[key]
        if r is None or (key == "baseline" and result["baseline_is_model"]):
            continue
        at_least = ", ".join(f">= {e['grade']} {e['auc']['estimate']:.3f}" if e["auc"] else f">= {e['grade']} n/a"
                             for e in r["at_least"])
        macro = "n/a" if r["macro_auc"] is None else f"{r['macro_auc']:.3f}"
        print(f"  {label:<15} mean grade>=k AUC {Interval(**r['auc']).text()} ({at_least})")
        print(f"  {'':<15} QWK {Interval(**r['qwk']).text()}; MAE {Interval(**r['mae']).text()} grades; "
              f"macro one-vs-rest AUC {macro}")
    if result["baseline_is_model"]:
        print("  (the exported model is the seed baseline itself)")
    elif result["auc_difference"] is not None:
        print(f"  difference in mean grade>=k AUC (model - baseline): {Interval(**result['auc_difference']).text()}")
