"""search.shipping.model_card: MODEL_CARD.md's text for a given metrics.json dict: the disclaimer, the test
part's size, the intervals, the phantoms note, the choice and its optimism, an ensemble, an older file.

A real export's card is checked end to end in tests/search/commands/test_export.py.
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from search.model.routing import CLINICAL_NOTE, DISCLAIMER, ROUTING
from search.shipping.figures import CALIBRATION_PNG, CONFUSION_PNG, FIGURES, ROC_PNG
from search.shipping.metrics import evaluate
from search.shipping.model_card import render_model_card, storage_text
from search.stats.intervals import Interval
from search.stats.metrics import binary_metrics

LABELS = np.array([0, 0, 0, 0, 1, 1, 1])
P_MODEL = np.array([0.1, 0.3, 0.2, 0.6, 0.8, 0.4, 0.9])
P_BASE = np.array([0.4, 0.5, 0.2, 0.7, 0.6, 0.3, 0.55])
PHANTOM_WORDS = "**Trained and tested on synthetic phantoms**"


def _tested(probs):
    return SimpleNamespace(probs=probs, metrics=binary_metrics(LABELS, probs))


def _test(with_baseline=True, p_model=P_MODEL) -> dict:
    model = _tested(p_model)
    return evaluate(model, _tested(P_BASE) if with_baseline else None,
                    SimpleNamespace(labels=torch.tensor(LABELS)), 100, seed=0)


def _metrics(phantoms=False, with_baseline=True, members=1, **changes) -> dict:
    """A metrics.json dict in search.export's layout, its test entry made by search.shipping.metrics.evaluate."""
    train_spec = {"optimizer": "adam", "lr": 0.0001, "weight_decay": 0.0, "batch_size": 2}
    m = {
        "created": "2025-01-01T00:00:00+00:00",
        "study": {"name": "lungct", "storage": "sqlite:///lungct.db", "objectives": ["auc"], "n_trials": 9},
        "task": {"name": "course", "description": "CT-0 (normal) vs CT-2/CT-3", "classes": ["CT-0", "CT-2 or CT-3"],
                 "threshold": 0.5},
        "test": _test(with_baseline),
        "selection": {"how": "the confirmation's recommendation: trial3", "is_baseline": False, "rule": "the rule",
                      "why": "trial3 beats the seed baseline by +0.120", "confirmed_score": 0.77,
                      "baseline_confirmed_score": 0.65, "test_auc": 0.6, "optimism": 0.17},
        "model": {"trial": 3, "architecture": "2 levels 64-64", "params": 12345, "keras_params": 12400,
                  "gflops": 0.0421, "members": members, "member_train_scans": [12, 13][:members] if members > 1 else [],
                  "epochs": 4, "epochs_rule": "the confirmation's epochs", "train_spec": train_spec,
                  "search_cv_auc": 0.812},
        "baseline": ({"architecture": "4 levels 64-64-128-256", "epochs": 4, "epochs_rule": "the same",
                      "note": None} if with_baseline else {"note": "the seed baseline cannot run at 8x8x8"}),
        "data": {"root": "mosmed", "layout": "mosmed", "size": [16, 24, 20], "hu_window": [-1000, 400],
                 "split_seed": 0, "split_file": "split-abc-s0.json", "n_train": 20, "n_val": 5, "n_test": 7,
                 "excluded": 2, "skipped": 1, "phantoms": phantoms},
        "training": {"device": "cpu", "augmentation": "the search's augmentation"},
        "export_check": {"weights_max_abs_diff": 1e-6, "onnx_max_abs_diff": 2e-5, "onnx_runtime": "onnxruntime",
                         "tolerance": 1e-4},
        "versions": {"python": "3.11.9", "torch": "2.4.0"},
    }
    m.update(changes)
    return m


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}\n")[1].split("\n## ")[0]


@pytest.fixture(scope="module")
def card() -> str:
    return render_model_card(_metrics())


def test_model_card_opens_with_its_title_and_the_disclaimer(card):
    lines = card.splitlines()
    assert lines[0] == "# Model card: CT-0 vs CT-2 or CT-3 — trial 3 of study 'lungct'"
    assert lines[2] == f"> **{DISCLAIMER}**"
    assert PHANTOM_WORDS not in card and card.endswith(".\n")


def test_model_card_names_the_test_part_size_and_class_counts(card):
    evaluation = _section(card, "Locked test evaluation")
    assert evaluation.startswith("\n7 test scans: 4 CT-0, 3 CT-2 or CT-3.\n")
    assert "(this one has 7 scans)" in evaluation
    assert "20 train, 5 validation, 7 test scans; 2 scans outside the task, 1 unreadable scans skipped" in card


def test_model_card_gives_each_metric_with_its_95_percent_interval_for_both_models(card):
    m = _metrics()
    for label, key in (("ROC AUC", "auc"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                       ("specificity", "specificity")):
        model, base = (Interval(**m["test"][who][key]).text() for who in ("model", "baseline"))
        assert f"| {label} | {model} | {base} |" in card
    cm = m["test"]["model"]["confusion_matrix"]
    assert f"| confusion matrix (TN / FP / FN / TP) | {cm['tn']} / {cm['fp']} / {cm['fn']} / {cm['tp']} |" in card
    assert "95% CI" in card and f"ROC AUC by {m['test']['model']['auc']['method']}" in card


def test_model_card_states_the_difference_in_auc_with_its_interval(card):
    diff = Interval(**_metrics()["test"]["auc_difference"]).text()
    assert f"Difference in AUC, exported model minus seed baseline: {diff}; an interval that contains 0" in card


def test_model_card_without_a_baseline_says_why_and_leaves_its_column_empty():
    card = render_model_card(_metrics(with_baseline=False))
    assert "Seed baseline: not trained (the seed baseline cannot run at 8x8x8)." in card
    assert "| confusion matrix (TN / FP / FN / TP) | " in card and card.count(" | - |") == 5
    assert "Difference in AUC" not in card


def test_model_card_of_phantoms_says_so_under_the_disclaimer_and_in_the_limits():
    card = render_model_card(_metrics(phantoms=True))
    lines = card.splitlines()
    assert lines[2] == f"> **{DISCLAIMER}**" and lines[4].startswith(f"> {PHANTOM_WORDS}, not on patients' scans")
    assert "synthetic phantoms: yes" in card
    assert _section(card, "Limits").rstrip().endswith("- Trained on synthetic phantoms: its outputs on real scans "
                                                      "are meaningless.")


def test_model_card_of_real_scans_has_no_phantoms_note(card):
    assert "synthetic phantoms: no" in card and "outputs on real scans are meaningless" not in card


def test_model_card_lists_the_routing_table(card):
    for category, decision in ROUTING.items():
        assert f"| {category} | {decision} |" in card
    assert len(ROUTING) == 5 and CLINICAL_NOTE in card  # every grade, and what the table weighs that a CT lacks


def test_model_card_says_how_the_model_was_chosen_and_how_optimistic_its_score_was(card):
    chosen = _section(card, "How this model was chosen")
    assert chosen.splitlines()[1:] == [
        "- The confirmation's recommendation: trial3.", "- Why: trial3 beats the seed baseline by +0.120.",
        "- Rule: the rule.",
        "- Confirmed score (mean fold AUC on fresh folds): 0.770; locked test AUC: 0.600; optimism (confirmed - test): "
        "+0.170.", "- The seed baseline's confirmed score: 0.650."]


def test_model_card_of_a_kept_baseline_does_not_repeat_its_confirmed_score():
    selection = {"how": "the confirmation's recommendation: the seed baseline", "is_baseline": True,
                 "confirmed_score": 0.65, "baseline_confirmed_score": 0.65, "test_auc": 0.7, "optimism": -0.05}
    chosen = _section(render_model_card(_metrics(selection=selection)), "How this model was chosen")
    assert "optimism (confirmed - test): -0.050" in chosen and "The seed baseline's confirmed score" not in chosen


def test_model_card_without_a_selection_has_no_section_for_it():
    assert "## How this model was chosen" not in render_model_card(_metrics(selection=None))


def test_model_card_states_the_model_its_training_and_provenance(card):
    model = _section(card, "Model")
    assert "- Architecture (16x24x20 input): 2 levels 64-64." in model
    assert "- 12,345 trainable parameters (12,400 as Keras counts them), 0.042 GFLOPs per scan." in model
    assert "- Trained on the train + validation parts (25 scans) for 4 epochs (the confirmation's epochs), " \
           "optimiser adam, learning rate 0.0001, weight decay 0, batch size 2, on cpu" in model
    provenance = _section(card, "Provenance")
    assert "Study `lungct` in `sqlite:///lungct.db` (9 trials, objectives auc); exported trial 3, cross-validated " \
           "AUC 0.812 in the search." in provenance
    assert "reloaded weights differ by 1.0e-06, ONNX by 2.0e-05 (tolerance 0.0001)." in provenance
    assert "- Versions: python 3.11.9, torch 2.4.0." in provenance


def test_model_card_without_onnx_runtime_names_what_was_used_instead():
    m = _metrics()
    m["export_check"] = m["export_check"] | {"onnx_max_abs_diff": None, "onnx_runtime": "not installed"}
    assert "ONNX by not installed (tolerance 0.0001)" in render_model_card(m)


def test_model_card_of_an_ensemble_describes_its_members():
    card = render_model_card(_metrics(members=2))
    model = _section(card, "Model")
    assert "- An ensemble of 2 copies of this architecture, trained on different folds;" in model
    assert "- Each member: 12,345 trainable parameters" in model
    assert "in all 24,690 parameters and 0.084 GFLOPs" in model
    assert "Each member trained by the confirmation stage on one cross-validation fold's training scans (12/13 of " \
           "the 25 train + validation scans)" in model
    assert "`ensemble.json`" in _section(card, "Files")
    assert "on all 25 train + validation scans" in _section(card, "Locked test evaluation")


def test_model_card_of_one_model_mentions_no_ensemble(card):
    assert "ensemble.json" not in card and "Each member" not in card


def test_model_card_links_the_three_pictures_with_the_threshold(card):
    evaluation = _section(card, "Locked test evaluation")
    for name in (ROC_PNG, CALIBRATION_PNG, CONFUSION_PNG):
        assert f"]({name})" in evaluation
    assert "the dot marks the threshold 0.5" in evaluation and "Confusion counts at threshold 0.5" in evaluation
    assert all(f"`{name}`" in _section(card, "Files") for name in FIGURES)


def test_model_card_of_an_older_metrics_json_without_curves_draws_no_pictures():
    m = _metrics()
    for key in ("model", "baseline"):
        m["test"][key] = {k: v for k, v in m["test"][key].items() if k not in ("roc", "calibration", "brier_score")}
    card = render_model_card(m)
    assert "![" not in card and ROC_PNG not in card and "write_model_figures" not in card
    assert "7 test scans: 4 CT-0, 3 CT-2 or CT-3." in card


def test_model_card_of_a_perfect_separator_warns_that_its_interval_collapses():
    m = _metrics()
    m["test"] = _test(p_model=np.where(LABELS == 1, 0.9, 0.1))
    card = render_model_card(m)
    assert m["test"]["model"]["auc"]["estimate"] == 1.0
    assert "the interval collapses to a point" in card
    assert "collapses to a point" not in render_model_card(_metrics())


def test_model_card_says_whether_metrics_json_holds_scan_ids(card):
    assert "no study id, no local path" in card and "--include-scan-ids" not in card
    with_ids = render_model_card(_metrics(test_predictions=[{"study_id": "s1", "label": 1, "p_model": 0.9}]))
    assert "as asked for by --include-scan-ids" in with_ids and "no study id" not in with_ids


def test_model_card_reads_the_metrics_dict_without_changing_it():
    m = _metrics(members=2)
    before = copy.deepcopy(m)
    render_model_card(m)
    assert m == before


# What a PostgreSQL storage URL says about the machine that ran the study, as search.export stored it (password masked).
POSTGRES = "postgresql+psycopg2://alice:***@db.clinic.internal:6543/optuna_lungct?host=/var/run/postgresql"
LOCAL = ("alice", "db.clinic.internal", "6543", "optuna_lungct", "/var/run/postgresql", "***")


def test_model_card_names_a_postgresql_study_by_its_kind_without_host_socket_or_user():
    m = _metrics()
    m["study"]["storage"] = POSTGRES
    card = render_model_card(m)
    assert "Study `lungct` in a PostgreSQL database (9 trials" in _section(card, "Provenance")
    assert not [word for word in LOCAL if word in card]


@pytest.mark.parametrize("url, text", [
    ("sqlite:////home/alice/studies/lungct.db?password=***", "`sqlite:///lungct.db`"),
    ("sqlite:///lungct.db", "`sqlite:///lungct.db`"),
    (POSTGRES, "a PostgreSQL database"),
    ("mysql://bob@10.0.0.7/optuna", "a MySQL database"),
    ("oracle://x@y/z", "an Oracle database"),
    ("not a url at /home/alice", "a database"),
])
def test_storage_text_keeps_only_the_kind_of_database_or_a_sqlite_files_name(url, text):
    assert storage_text(url) == text
