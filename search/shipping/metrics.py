"""What export measures and records in ``metrics.json``: the locked-test evaluation and its provenance.

The model's and the baseline's test metrics with 95% intervals and the curves their pictures are drawn
from (``evaluate``), how the model was chosen and how optimistic its confirmed score was, how it was
trained, the data summary without local paths or scan ids, and the versions it ran with.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from lungct.phantom import MARKER_NAME
from search.selection.confirm import BASELINE_KEY
from search.shipping.figures import curve_metrics
from search.shipping.models import Choice, ExportSettings, Shipped
from search.stats.intervals import Interval, bootstrap_auc, bootstrap_auc_difference, wilson
from search.stats.metrics import BinaryMetrics
from search.study import schema
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


def evaluate(model: Shipped, base: Shipped | None, test: Tensors, n_resamples: int, seed: int) -> dict:
    """Test metrics of the model (and the baseline) with 95% CIs, and the paired difference in AUC.

    Each model's entry also holds the numbers its pictures are drawn from (``search.shipping.figures.curve_metrics``:
    ROC curve and bootstrap band, from the AUC interval's resamples, calibration bins, Brier score), which
    name no scan.
    """
    labels = test.labels.numpy().astype(int)
    out = {"n": int(labels.size), "n_negative": int(np.sum(labels == 0)), "n_positive": int(np.sum(labels == 1))}
    for key, t in (("model", model), ("baseline", base)):
        if t is None:
            out[key] = None
            continue
        out[key] = {"auc": bootstrap_auc(labels, t.probs, n_resamples, seed=seed).to_dict(), **rates(t.metrics),
                    **curve_metrics(labels, t.probs, n_resamples, seed=seed)}
    out["baseline_is_model"] = base is model
    out["auc_difference"] = (bootstrap_auc_difference(labels, model.probs, base.probs, n_resamples, seed=seed)
                             .to_dict() if base is not None else None)
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
            "test_inference": "float32 on the CPU, threshold 0.5"}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def model_entry(t: Shipped, trial: FrozenTrial | None, size: tuple[int, int, int]) -> dict:
    c = cost(t.spec, size)
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


def test_predictions(ids: list[str], test: Tensors, model: Shipped, base: Shipped | None) -> list[dict]:
    """Per test scan: study id, label, and each model's probability (for ROC curves made elsewhere)."""
    rows = []
    for i, (sid, label) in enumerate(zip(ids, test.labels.tolist(), strict=True)):
        rows.append({"study_id": sid, "label": int(label), "p_model": round(float(model.probs[i]), 6),
                     "p_baseline": round(float(base.probs[i]), 6) if base is not None else None})
    return rows


def print_test(result: dict, classes: tuple[str, str]) -> None:
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

