"""search.study.notes: objective names and a note per trial for optuna-dashboard."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from optuna_dashboard._note import get_note_from_system_attrs

from search.study import schema
from search.study.notes import BINARY_SCORE, TrialNote, name_objectives, score_name, trial_note
from space import baseline


def _note(study: optuna.Study, trial_id: int | None) -> str:
    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial_id)["body"]


def _trial(state=TrialState.COMPLETE, **attrs):
    value = 0.812 if state == TrialState.COMPLETE else None
    return create_trial(state=state, value=value, params={}, distributions={},
                        user_attrs={schema.SPEC: baseline().to_dict(), schema.PARAMS: 1_351_873,
                                    schema.GFLOPS: 3.25, **attrs})


def test_trial_note_of_a_complete_trial_names_its_architecture_score_and_cost():
    trial = _trial(**{schema.SCORE: 0.8123, schema.SCORE_SE: 0.041, schema.BASELINE: True})
    note = trial_note(trial)
    assert note.startswith(f"**Trial {trial.number} (the seed baseline)**: 4 levels 64-64-128-256")
    assert "CV AUC 0.812 ± 0.041" in note and "1,351,873 parameters, 3.25 GFLOPs" in note
    assert "pruned" not in note and "failed" not in note


def test_trial_note_says_why_a_trial_was_pruned_failed_or_narrowed():
    pruned = trial_note(_trial(TrialState.PRUNED, **{schema.PRUNE_REASON: "fold 1: non-finite training loss"}))
    assert "- pruned: fold 1: non-finite training loss" in pruned and "score" not in pruned
    failed = trial_note(_trial(TrialState.FAIL, **{schema.FAIL_REASON: "out of memory"}))
    assert "- failed: out of memory" in failed
    narrowed = trial_note(_trial(**{schema.COST_FALLBACK: "widths halved to fit 3.26 GFLOPs"}))
    assert "- fitted: widths halved to fit 3.26 GFLOPs" in narrowed


def test_trial_note_callback_writes_each_finished_trials_note(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    study.add_trial(_trial(**{schema.SCORE: 0.7, schema.SCORE_SE: 0.05}))
    finished = study.trials[0]
    TrialNote()(study, finished)
    assert _note(study, finished._trial_id) == trial_note(finished)


def test_name_objectives_names_a_study_once_and_keeps_other_names(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", directions=["maximize", "minimize"])
    name_objectives(study, ("auc", "gflops"))
    assert study.metric_names == ["CV AUC (search score)", "GFLOPs"]
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["mine", "also mine"])
    name_objectives(study, ("auc", "gflops"))
    assert study.metric_names == ["mine", "also mine"]


def _severity_study(tmp_path, objectives=("auc",)) -> optuna.Study:
    """A study whose stored settings name the ordinal severity task, as search.run stores them."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/sev.db", directions=["maximize"] * len(objectives))
    study.set_user_attr(schema.STUDY_SETTINGS, {"task": "severity", "size": [16, 32, 32], "epochs": 1})
    study.set_user_attr(schema.STUDY_OBJECTIVES, list(objectives))
    return study


@pytest.mark.parametrize("task", ["course", "any", "severe", None, "a-task-of-a-newer-version"])
def test_score_name_of_a_binary_or_unknown_task_is_the_roc_auc(task):
    assert score_name(task) == BINARY_SCORE
    assert (BINARY_SCORE.cv, BINARY_SCORE.metric, BINARY_SCORE.definition) == ("CV AUC", "ROC AUC", "")


def test_score_name_of_the_severity_task_is_the_mean_grade_auc_over_its_three_cuts():
    score = score_name("severity")
    assert score.ordinal and score.grades == 4
    assert (score.cv, score.metric, score.long) == ("CV grade>=k AUC", "mean grade>=k AUC",
                                                    "mean AUC of grade >= k (k = 1..3)")
    assert "4 ordered grades" in score.definition and '"grade >= k" against "grade < k"' in score.definition


def test_name_objectives_of_a_severity_study_names_its_ordinal_score(tmp_path):
    study = _severity_study(tmp_path)
    name_objectives(study, ("auc",))
    assert study.metric_names == ["CV mean AUC of grade >= k (k = 1..3) (search score)"]


def test_name_objectives_renames_a_severity_study_named_before_its_task_was_stored_but_not_a_users_names(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/sev.db", directions=["maximize", "minimize"])
    name_objectives(study, ("auc", "gflops"))  # as search.study.storage does, before the settings are stored
    assert study.metric_names == ["CV AUC (search score)", "GFLOPs"]
    study.set_user_attr(schema.STUDY_SETTINGS, {"task": "severity"})
    name_objectives(study, ("auc", "gflops"))
    assert study.metric_names == ["CV mean AUC of grade >= k (k = 1..3) (search score)", "GFLOPs"]
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["mine", "also mine"])
    name_objectives(study, ("auc", "gflops"))
    assert study.metric_names == ["mine", "also mine"]


def test_trial_note_of_a_severity_trial_names_the_mean_grade_auc():
    note = trial_note(_trial(**{schema.SCORE: 0.7123, schema.SCORE_SE: 0.03}), score_name("severity"))
    assert ("- score: CV grade>=k AUC 0.712 ± 0.030 (mean final-epoch validation grade>=k AUC over the folds; "
            "mean AUC of grade >= k (k = 1..3))") in note


def test_trial_note_callback_of_a_severity_study_names_its_score_and_objectives(tmp_path):
    study = _severity_study(tmp_path)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["CV AUC (search score)"])  # named at creation, before the task was known
    study.add_trial(_trial(**{schema.SCORE: 0.7, schema.SCORE_SE: 0.05}))
    finished = study.trials[0]
    TrialNote()(study, finished)
    assert "CV grade>=k AUC 0.700" in _note(study, finished._trial_id)
    assert study.metric_names == ["CV mean AUC of grade >= k (k = 1..3) (search score)"]


def test_trial_note_callback_leaves_a_binary_studys_names_alone(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    study.set_user_attr(schema.STUDY_SETTINGS, {"task": "course"})
    study.add_trial(_trial(**{schema.SCORE: 0.7}))
    TrialNote()(study, study.trials[0])
    assert study.metric_names is None  # the storage names a binary study; the callback has no reason to
