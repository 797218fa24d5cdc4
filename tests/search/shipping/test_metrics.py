"""search.shipping.metrics: the entries of metrics.json built from a decision, a choice and test probabilities,
without training: the test evaluation, the selection (and its optimism), the training, the model, the data.

A real export's metrics.json is checked end to end in tests/search/commands/test_export.py; the curves behind
the pictures in tests/search/shipping/test_figures.py.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from sklearn.metrics import roc_auc_score

import search.shipping.metrics as shipping_metrics
from search.selection.confirm import Decision
from search.shipping.metrics import (
    PHANTOM_MARKER,
    VERSIONED,
    data_entry,
    evaluate,
    model_entry,
    print_test,
    rates,
    selection_entry,
    shareable_settings,
    training_entry,
    versions,
)
from search.shipping.models import Choice
from search.stats.intervals import wilson
from search.stats.metrics import binary_metrics
from search.study import schema
from space import ArchSpec, TrainSpec, baseline, baseline_train, cost, same_padding

SIZE = (16, 24, 20)
RESAMPLES = 200
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0])
P_MODEL = np.array([0.1, 0.2, 0.3, 0.6, 0.15, 0.8, 0.7, 0.4, 0.9, 0.05, 0.65, 0.35])
P_BASE = np.array([0.4, 0.5, 0.2, 0.7, 0.45, 0.6, 0.3, 0.55, 0.65, 0.35, 0.5, 0.25])
TEST = SimpleNamespace(labels=torch.tensor(LABELS, dtype=torch.float32))
SMALL = same_padding(baseline())
SMALL = ArchSpec.from_dict(SMALL.to_dict() | {"levels": SMALL.to_dict()["levels"][:2]})


def _shipped(probs, **changes):
    """What evaluate and the entries read of a search.shipping.models.Shipped."""
    fields = {"probs": np.asarray(probs, dtype=float), "metrics": binary_metrics(LABELS, probs), "trial": 3,
              "spec": SMALL, "train_spec": baseline_train(), "members": 1, "member_train_scans": (), "epochs": 4,
              "epochs_rule": "the confirmation's epochs", "train_seconds": 1.5, "note": None}
    return SimpleNamespace(**(fields | changes))


def _row(key, trial, is_baseline, confirmed) -> dict:
    return {"key": key, "trial": trial, "baseline": is_baseline, "spec": SMALL.to_dict(),
            "train_spec": baseline_train().to_dict(), "search_score": 0.8, "search_se": 0.05, "fold_aucs": [confirmed],
            "confirmed": confirmed, "members": None, "difference": None, "difference_low": None,
            "beats_baseline": False, "reason": None}


DECISION = Decision.from_dict({
    "rule": "the rule", "settings": {"epochs": 4, "seed": 0}, "folds": [[0, 0]],
    "candidates": [_row("baseline", 0, True, 0.65), _row("trial3", 3, False, 0.77)],
    "recommended": {"key": "trial3", "trial": 3, "baseline": False, "confirmed": 0.77, "spec": SMALL.to_dict(),
                    "train_spec": baseline_train().to_dict(), "why": "trial3 beats the seed baseline by +0.120"}})


def _trials(n: int = 8) -> list:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    for i in range(n):
        study.add_trial(create_trial(value=0.5 + i / 100, user_attrs={schema.SCORE_SE: 0.01 * i}))
    return study.trials


def _choice(trial_number, how, is_baseline=False, decision=DECISION) -> Choice:
    trial = _trials()[trial_number] if trial_number is not None else None
    return Choice(SMALL, baseline_train(), trial, is_baseline, how, decision)


@pytest.fixture(scope="module")
def result():
    return evaluate(_shipped(P_MODEL), _shipped(P_BASE), TEST, RESAMPLES, seed=0)


def test_rates_give_wilson_intervals_and_the_confusion_matrix():
    m = binary_metrics(LABELS, P_MODEL)
    r = rates(m)
    assert r["confusion_matrix"] == {"tn": m.tn, "fp": m.fp, "fn": m.fn, "tp": m.tp} == {"tn": 6, "fp": 1, "fn": 1,
                                                                                         "tp": 4}
    assert r["accuracy"] == wilson(10, 12).to_dict() and r["accuracy"]["estimate"] == pytest.approx(10 / 12)
    assert r["sensitivity"]["estimate"] == pytest.approx(4 / 5) and r["specificity"]["estimate"] == pytest.approx(6 / 7)
    assert r["threshold"] == 0.5


def test_evaluate_counts_the_test_part_and_scores_both_models(result):
    assert (result["n"], result["n_negative"], result["n_positive"]) == (12, 7, 5)
    assert result["model"]["auc"]["estimate"] == pytest.approx(roc_auc_score(LABELS, P_MODEL))
    assert result["baseline"]["auc"]["estimate"] == pytest.approx(roc_auc_score(LABELS, P_BASE))
    assert f"{RESAMPLES} resamples, seed 0" in result["model"]["auc"]["method"]
    assert result["model"]["confusion_matrix"] == {"tn": 6, "fp": 1, "fn": 1, "tp": 4}
    assert {"roc", "calibration", "brier_score"} <= result["model"].keys()
    assert result["baseline_is_model"] is False


def test_evaluate_gives_the_paired_difference_model_minus_baseline(result):
    diff = result["auc_difference"]
    assert diff["estimate"] == pytest.approx(roc_auc_score(LABELS, P_MODEL) - roc_auc_score(LABELS, P_BASE))
    assert diff["low"] <= diff["estimate"] <= diff["high"] and "paired" in diff["method"]


def test_evaluate_is_plain_json_and_repeats_with_the_same_seed(result):
    again = evaluate(_shipped(P_MODEL), _shipped(P_BASE), TEST, RESAMPLES, seed=0)
    assert json.loads(json.dumps(result)) == result == again
    other = evaluate(_shipped(P_MODEL), _shipped(P_BASE), TEST, RESAMPLES, seed=1)
    assert other["model"]["auc"]["method"].endswith("seed 1") and other["auc_difference"]["method"].endswith("seed 1")


def test_evaluate_without_a_baseline_leaves_its_entry_and_the_difference_out():
    out = evaluate(_shipped(P_MODEL), None, TEST, RESAMPLES, seed=0)
    assert out["baseline"] is None and out["auc_difference"] is None and out["baseline_is_model"] is False


def test_evaluate_of_the_baseline_as_the_model_says_so_with_a_zero_difference():
    model = _shipped(P_MODEL)
    out = evaluate(model, model, TEST, RESAMPLES, seed=0)
    assert out["baseline_is_model"] is True and out["baseline"] == out["model"]
    assert out["auc_difference"]["estimate"] == out["auc_difference"]["low"] == out["auc_difference"]["high"] == 0


def test_selection_entry_of_the_recommendation_gives_its_confirmed_score_why_and_optimism(result):
    entry = selection_entry(_choice(3, "the confirmation's recommendation: trial3"), result)
    test_auc = result["model"]["auc"]["estimate"]
    assert entry == {"how": "the confirmation's recommendation: trial3", "is_baseline": False, "rule": "the rule",
                     "why": "trial3 beats the seed baseline by +0.120", "confirmed_score": 0.77,
                     "baseline_confirmed_score": 0.65, "test_auc": test_auc, "optimism": pytest.approx(0.77 - test_auc)}


def test_selection_entry_of_a_kept_baseline_confirms_it_with_the_baselines_score(result):
    entry = selection_entry(_choice(0, "the confirmation's recommendation: the seed baseline", True), result)
    assert entry["confirmed_score"] == entry["baseline_confirmed_score"] == 0.65
    assert entry["optimism"] == pytest.approx(0.65 - result["model"]["auc"]["estimate"])


def test_selection_entry_of_a_trial_the_confirmation_did_not_run_has_no_confirmed_score_or_why(result):
    entry = selection_entry(_choice(7, "trial 7, as given by --trial"), result)
    assert entry["confirmed_score"] is None and entry["optimism"] is None and entry["why"] is None
    assert entry["rule"] == "the rule" and entry["baseline_confirmed_score"] == 0.65


def test_selection_entry_of_a_confirmed_trial_given_by_trial_keeps_its_score_but_not_the_why(result):
    entry = selection_entry(_choice(3, "trial 3, as given by --trial"), result)
    assert entry["confirmed_score"] == 0.77 and entry["why"] is None


def test_selection_entry_without_a_confirmation_holds_the_test_auc_alone(result):
    entry = selection_entry(_choice(3, "trial 3, as given by --trial", decision=None), result)
    assert entry == {"how": "trial 3, as given by --trial", "is_baseline": False, "rule": None, "why": None,
                     "confirmed_score": None, "baseline_confirmed_score": None,
                     "test_auc": result["model"]["auc"]["estimate"], "optimism": None}


def test_training_entry_of_one_model_says_train_and_validation():
    s = SimpleNamespace(device=torch.device("cpu"), seed=9)
    entry = training_entry(s, _shipped(P_MODEL))
    assert entry["data"] == "train + validation parts" and entry["mode"] == "trained on train + validation"
    assert entry["device"] == "cpu" and entry["seed"] == 9 and "threshold 0.5" in entry["test_inference"]


def test_training_entry_of_an_ensemble_gives_each_members_training_scans():
    s = SimpleNamespace(device=torch.device("cpu"), seed=9)
    entry = training_entry(s, _shipped(P_MODEL, members=3, member_train_scans=(12, 12, 13)))
    assert entry["mode"] == "confirmation fold models"
    assert entry["data"].startswith("an ensemble of 3 fold models") and "(12/12/13 of train + validation)" in entry[
        "data"]


def test_model_entry_of_a_complete_trial_holds_its_cost_and_search_score():
    trial = _trials()[3]
    entry = model_entry(_shipped(P_MODEL), trial, SIZE)
    c = cost(SMALL, SIZE)
    assert entry["params"] == c.params and entry["keras_params"] == c.keras_params
    assert entry["gflops"] == round(c.gflops, 4)
    assert entry["spec"] == SMALL.to_dict() and ArchSpec.from_dict(entry["spec"]) == SMALL
    assert TrainSpec.from_dict(entry["train_spec"]) == baseline_train()
    assert entry["search_cv_auc"] == 0.53 and entry["search_cv_se"] == 0.03
    assert entry["architecture"].startswith("2 levels") and entry["member_train_scans"] == []
    assert json.loads(json.dumps(entry)) == entry


@pytest.mark.parametrize("trial", [None, create_trial(state=TrialState.PRUNED)], ids=["no-trial", "pruned"])
def test_model_entry_without_a_complete_trial_has_no_search_score(trial):
    entry = model_entry(_shipped(P_MODEL), trial, SIZE)
    assert "search_cv_auc" not in entry and "search_cv_se" not in entry


def _prepared(root: Path):
    return SimpleNamespace(summary=lambda: {"root": str(root), "split_file": str(root.parent / "splits" / "s-1.json"),
                                            "n_test": 4})


@pytest.mark.parametrize("data, marker, phantoms", [(None, False, True), ("/d", True, True), ("/d", False, False)])
def test_data_entry_names_folders_without_their_paths_and_tells_phantoms(tmp_path, data, marker, phantoms):
    root = tmp_path / "scans"
    root.mkdir()
    if marker:
        (root / PHANTOM_MARKER).write_text("")
    entry = data_entry(_prepared(root), root, {"data": data}, None)
    assert entry == {"root": "scans", "split_file": "s-1.json", "n_test": 4, "phantoms": phantoms}


def test_data_entry_holds_the_test_ids_only_when_asked_for(tmp_path):
    entry = data_entry(_prepared(tmp_path), tmp_path, {"data": None}, ["s3", "s1"])
    assert entry["test_ids"] == ["s3", "s1"]


def test_shareable_settings_name_the_data_folder_without_changing_the_stored_dict():
    stored = {"data": "/home/me/mosmed", "epochs": 2}
    assert shareable_settings(stored) == {"data": "mosmed", "epochs": 2}
    assert stored == {"data": "/home/me/mosmed", "epochs": 2}
    assert shareable_settings({"data": None, "epochs": 2}) == {"data": None, "epochs": 2}


def test_test_predictions_give_each_scans_label_and_rounded_probabilities():
    ids = [f"s{i}" for i in range(12)]
    rows = shipping_metrics.test_predictions(ids, TEST, _shipped(P_MODEL + 1e-9), _shipped(P_BASE))
    assert rows[0] == {"study_id": "s0", "label": 0, "p_model": 0.1, "p_baseline": 0.4}
    assert [r["label"] for r in rows] == LABELS.tolist() and all(isinstance(r["label"], int) for r in rows)
    assert all(r["p_baseline"] is None for r in shipping_metrics.test_predictions(ids, TEST, _shipped(P_MODEL), None))


def test_test_predictions_refuse_ids_that_do_not_match_the_scans():
    with pytest.raises(ValueError):
        shipping_metrics.test_predictions(["s0"], TEST, _shipped(P_MODEL), None)


def test_versions_name_python_and_every_versioned_package(monkeypatch):
    found = versions()
    assert set(found) == {"python", *VERSIONED}
    assert found["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    monkeypatch.setattr(shipping_metrics, "VERSIONED", ("no-such-package-lungct",))
    assert versions()["no-such-package-lungct"] == "not installed"


def test_print_test_states_the_test_part_each_model_and_the_difference(result, capsys):
    print_test(result, ("CT-0", "CT-2 or CT-3"))
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "locked test part (12 scans: 7 CT-0, 5 CT-2 or CT-3), evaluated once:"
    assert out[2].startswith(f"  exported model  AUC {roc_auc_score(LABELS, P_MODEL):.3f} (95% CI ")
    assert out[2].endswith("accuracy 0.833, sensitivity 0.800, specificity 0.857")
    assert out[3].startswith("  seed baseline   AUC ")
    assert out[4].startswith("  difference in AUC (model - baseline): ")


def test_print_test_of_the_baseline_as_the_model_says_so(capsys):
    model = _shipped(P_MODEL)
    print_test(evaluate(model, model, TEST, RESAMPLES, seed=0), ("CT-0", "CT-2 or CT-3"))
    assert capsys.readouterr().out.rstrip().endswith("(the exported model is the seed baseline itself)")
