"""search.selection.dashboard: the study note says what the tool recommends and what export measured."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from optuna_dashboard._note import get_note_from_system_attrs

from search.selection.dashboard import study_note, write_study_note
from search.study import schema

OLD_STUDY = Path(__file__).resolve().parents[1] / "commands" / "data" / "pre_layers_study" / "prelayers.db"


def _confirmed_study(tmp_path) -> optuna.Study:
    shutil.copy(OLD_STUDY, tmp_path / "s.db")  # 3 trials and a confirmation that kept the seed baseline
    return optuna.load_study(study_name="prelayers", storage=f"sqlite:///{tmp_path}/s.db")


def test_study_note_without_a_confirmation_says_how_to_run_it(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    note = study_note(study)
    assert note.startswith("## s: what lungct-nas recommends") and "0 trials (none finished)" in note
    assert "`python -m search.run --confirm-only`" in note and "### Export" not in note


def test_study_note_names_the_recommendation_not_the_best_search_score(tmp_path):
    study = _confirmed_study(tmp_path)
    note = study_note(study)
    assert "- Search: 3 trials (3 complete)" in note and "*Best Trial* is the best search score" in note
    assert "recommended: baseline" in note and "**Recommended: the seed baseline**: 4 levels 64-64-128-256" in note


def test_study_note_adds_the_exports_locked_test_auc(tmp_path):
    study = _confirmed_study(tmp_path)
    auc = {"estimate": 0.9, "low": 0.8, "high": 0.97, "confidence": 0.95, "method": "stratified bootstrap"}
    study.set_user_attr(schema.STUDY_EXPORTED, {
        "trial": 0, "baseline": True, "folder": "m",
        "test": {"n": 24, "model": {"auc": auc}, "baseline": {"auc": auc}, "baseline_is_model": True,
                 "auc_difference": None}})
    note = study_note(study)
    assert "### Export" in note
    assert "Exported the seed baseline; locked test part (24 scans, evaluated once): AUC 0.900" in note
    assert "seed baseline 0.900" not in note  # the baseline is the model: no second figure


def test_write_study_note_replaces_the_dashboards_study_note(tmp_path):
    study = _confirmed_study(tmp_path)
    write_study_note(study)
    write_study_note(study)
    stored = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), None)
    assert stored["body"] == study_note(study) and stored["version"] == 2


def test_study_note_of_a_severity_study_says_which_auc_it_scores(tmp_path):
    study = _confirmed_study(tmp_path)
    study.set_user_attr(schema.STUDY_SETTINGS, {**study.user_attrs[schema.STUDY_SETTINGS], "task": "severity"})
    auc = {"estimate": 0.7, "low": 0.6, "high": 0.8, "confidence": 0.95, "method": "stratified bootstrap"}
    study.set_user_attr(schema.STUDY_EXPORTED, {
        "trial": 0, "baseline": True, "folder": "m",
        "test": {"n": 24, "model": {"auc": auc}, "baseline": {"auc": auc}, "baseline_is_model": True,
                 "auc_difference": None}})
    note = study_note(study)
    assert "- Score: every AUC here (the search's, the confirmation's, the test's) is the mean AUC of grade >= k " \
           "(k = 1..3)" in note
    assert "locked test part (24 scans, evaluated once): grade>=k AUC 0.700" in note


def test_study_note_of_a_binary_study_has_no_score_line(tmp_path):
    assert "- Score:" not in study_note(_confirmed_study(tmp_path))


def test_write_study_note_names_a_severity_studys_objectives_for_its_task(tmp_path):
    study = _confirmed_study(tmp_path)
    study.set_user_attr(schema.STUDY_SETTINGS, {**study.user_attrs[schema.STUDY_SETTINGS], "task": "severity"})
    write_study_note(study)
    assert study.metric_names == ["CV mean AUC of grade >= k (k = 1..3) (search score)"]
