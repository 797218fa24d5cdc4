import multiprocessing

import optuna
import pytest
from optuna.trial import TrialState

from lungct.signals import Terminated
from search.study import schema
from search.study.recovery import INTERRUPTED
from search.study.trial_run import TERMINATED, KnownFailure, trial_run
from search.training.unit import NON_FINITE, OUT_OF_MEMORY, TrainingFailed


def _run_one(body, study: optuna.Study | None = None) -> optuna.trial.FrozenTrial:
    study = study or optuna.create_study()

    def objective(trial):
        with trial_run(trial) as run:
            return body(run)

    study.optimize(objective, n_trials=1, catch=(KnownFailure,))
    return study.trials[0]


def _raise(error):
    def body(run):
        raise error
    return body


def test_trial_run_records_the_worker():
    trial = _run_one(lambda run: 1.0)
    assert trial.state == TrialState.COMPLETE and set(trial.user_attrs[schema.WORKER]) >= {"host", "pid"}


def test_trial_run_out_of_memory_fails_the_trial_with_its_reason_and_the_study_goes_on():
    trial = _run_one(_raise(TrainingFailed(OUT_OF_MEMORY, "out of memory on cpu (MemoryError)")))
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[schema.FAIL_REASON] == "out of memory on cpu (MemoryError)"


def test_trial_run_non_finite_loss_prunes_the_trial_with_its_place_in_the_reason():
    def body(run):
        run.where = "fold 2"
        raise TrainingFailed(NON_FINITE, "non-finite training loss (nan) at epoch 1, step 3")

    trial = _run_one(body)
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[schema.PRUNE_REASON] == "fold 2: non-finite training loss (nan) at epoch 1, step 3"


def test_trial_run_calls_on_failure_before_it_maps_the_failure():
    seen = []

    def body(run):
        run.on_failure = lambda e: (seen.append(e.kind), run.trial.set_user_attr("partial", True))
        raise TrainingFailed(NON_FINITE, "non-finite training loss (inf) at epoch 2, step 1")

    trial = _run_one(body)
    assert seen == [NON_FINITE] and trial.user_attrs["partial"]
    assert trial.user_attrs[schema.PRUNE_REASON] == "non-finite training loss (inf) at epoch 2, step 1"


def test_trial_run_prune_records_the_reason():
    trial = _run_one(lambda run: run.prune("too costly"))
    assert trial.state == TrialState.PRUNED and trial.user_attrs[schema.PRUNE_REASON] == "too costly"


def test_trial_run_ctrl_c_marks_the_trial_interrupted_and_propagates():
    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt):
        _run_one(_raise(KeyboardInterrupt()), study=study)
    assert study.trials[0].user_attrs[schema.FAIL_REASON] == INTERRUPTED


def test_trial_run_sigterm_marks_the_trial_interrupted_by_sigterm_and_propagates():
    study = optuna.create_study()
    with pytest.raises(Terminated):
        _run_one(_raise(Terminated()), study=study)
    assert study.trials[0].user_attrs[schema.FAIL_REASON] == TERMINATED == "interrupted (SIGTERM)"


def test_trial_run_sigterm_in_a_worker_process_keeps_the_ctrl_c_reason(monkeypatch):
    # A --jobs worker's SIGTERM is its parent's stop request, which the parent sends for its own Ctrl-C too.
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    study = optuna.create_study()
    with pytest.raises(Terminated):
        _run_one(_raise(Terminated()), study=study)
    assert study.trials[0].user_attrs[schema.FAIL_REASON] == INTERRUPTED


def test_trial_run_leaves_other_errors_alone():
    with pytest.raises(ZeroDivisionError):
        _run_one(_raise(ZeroDivisionError("a bug")))
