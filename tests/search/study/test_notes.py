"""search.study.notes: objective names and a note per trial for optuna-dashboard."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from optuna_dashboard._note import get_note_from_system_attrs

from search.study import schema
from search.study.notes import TrialNote, name_objectives, trial_note
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
