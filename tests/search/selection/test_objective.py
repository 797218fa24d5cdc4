import dataclasses
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.training.unit
from search.selection.objective import FoldData, Objective, SearchSettings, fold_seed, score_of
from search.study import schema
from search.study.trial_run import KnownFailure
from search.training.data import Tensors
from search.training.loop import NonFiniteLossError, TrainingOutOfMemory
from space import SpaceBounds, bounds_for_size

SIZE = (16, 24, 20)


def _folds() -> list[FoldData]:
    g = torch.Generator().manual_seed(0)
    data = Tensors(torch.rand(4, 1, *SIZE, generator=g).half(), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    return [FoldData(i, data, data) for i in range(2)]


def _objective() -> Objective:
    settings = SearchSettings(size=SIZE, epochs=1, device=torch.device("cpu"),
                              bounds=bounds_for_size(SpaceBounds(), SIZE))
    return Objective(_folds(), settings)


def test_objective_score_is_the_mean_fold_auc_with_the_pooled_standard_error():
    mean, se = score_of([0.6, 0.8], [0.03, 0.04])
    assert mean == pytest.approx(0.7) and se == pytest.approx(0.025)
    assert math.isnan(score_of([0.6, 0.8], [0.03, math.nan])[1])


def test_objective_fold_zero_keeps_the_historic_seed():
    assert fold_seed(7, 3, 0) == 10 and fold_seed(7, 3, 1) != fold_seed(7, 4, 0)


def _study_with_baseline_rate(rate: float) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.7, user_attrs={schema.BASELINE: True,
                                                                      schema.SAMPLES_PER_S: rate}))
    return study


def _timed_epochs(monkeypatch, seconds: float) -> None:
    """Every epoch reports ``seconds``, whatever it really took."""
    real = search.training.unit.fit

    def timed(*args, on_epoch=None, **kwargs):
        def stamped(result):
            if on_epoch is not None:
                on_epoch(dataclasses.replace(result, seconds=seconds))
        return real(*args, on_epoch=stamped, **kwargs)

    monkeypatch.setattr(search.training.unit, "fit", timed)


def test_objective_prunes_a_trial_slower_than_the_speed_limit_at_its_second_epoch(monkeypatch):
    settings = SearchSettings(size=SIZE, epochs=3, device=torch.device("cpu"),
                              bounds=bounds_for_size(SpaceBounds(), SIZE), speed_limit=1.0)
    _timed_epochs(monkeypatch, 2.0)  # 4 training scans per fold in 2 s: 2 samples/s
    study = _study_with_baseline_rate(5.0)  # the baseline trained at 5: 2.5x faster
    study.optimize(Objective(_folds(), settings), n_trials=1)
    trial = study.trials[1]
    assert trial.state == TrialState.PRUNED and trial.user_attrs[schema.EPOCHS_RUN] == 2
    assert trial.user_attrs[schema.PRUNE_REASON].startswith(
        "too slow for the time budget: 2.0 samples/s at epoch 2, 2.5x slower than the seed baseline's trial (5)")


def test_objective_speed_limit_spares_a_fast_enough_trial_and_a_study_without_limit(monkeypatch):
    _timed_epochs(monkeypatch, 2.0)
    for limit, baseline_rate in ((3.0, 5.0), (None, 50.0)):
        settings = SearchSettings(size=SIZE, epochs=2, device=torch.device("cpu"),
                                  bounds=bounds_for_size(SpaceBounds(), SIZE), speed_limit=limit)
        study = _study_with_baseline_rate(baseline_rate)
        study.optimize(Objective(_folds(), settings), n_trials=1)
        assert study.trials[1].state == TrialState.COMPLETE


def test_objective_non_finite_loss_prunes_the_trial_naming_the_fold(monkeypatch):
    def diverging(*args, **kwargs):
        raise NonFiniteLossError(1, 2, math.nan)

    monkeypatch.setattr(search.training.unit, "fit", diverging)
    objective = _objective()
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1, catch=(KnownFailure,))
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and objective.running is None
    assert trial.user_attrs[schema.PRUNE_REASON] == "fold 1: non-finite training loss (nan) at epoch 1, step 2"
    assert trial.user_attrs[schema.EPOCHS_RUN] == 0 and schema.WORKER in trial.user_attrs


def test_objective_out_of_memory_fails_the_trial_and_the_study_goes_on(monkeypatch):
    def oom(*args, **kwargs):
        raise TrainingOutOfMemory("out of memory on cpu (MemoryError)")

    monkeypatch.setattr(search.training.unit, "fit", oom)
    ended = []
    objective = _objective()
    objective.on_trial_end = lambda *a: ended.append(a)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=2, catch=(KnownFailure,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert study.trials[0].user_attrs[schema.FAIL_REASON] == "out of memory on cpu (MemoryError)"
    assert not ended  # a failed trial stores no artifacts


def test_objective_ctrl_c_marks_the_trial_and_keeps_it_running_for_the_caller(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search.training.unit, "fit", interrupted)
    objective = _objective()
    study = optuna.create_study(direction="maximize")
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    assert objective.running == 0 and study.trials[0].user_attrs[schema.FAIL_REASON] == "interrupted (Ctrl-C)"
