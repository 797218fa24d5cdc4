"""search.study.trials: the ranking of a study's trials, the baseline's trial, and AUC against cost
for the Pareto views.

tests/search/shipping/test_models.py covers the tie on AUC broken by fewer parameters;
tests/search/commands/test_report.py
a basic front and a pruned trial's last intermediate value. These cover the rest of each unit.
"""

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.study import schema
from search.study.trials import TrialPoint, baseline_trial, best_trial, non_dominated, ranked_trials, trial_points

DIST = {"x": FloatDistribution(0, 1)}


def _study(*trials, name="s") -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="maximize")
    for t in trials:
        study.add_trial(t)
    return study


def _done(value, params=1000, gflops=1.0, **attrs):
    return create_trial(value=value, params={"x": 0.5}, distributions=DIST,
                        user_attrs={schema.PARAMS: params, schema.GFLOPS: gflops, **attrs})


def _pruned(intermediate=None, params=1000, gflops=1.0, **attrs):
    return create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions=DIST,
                        intermediate_values=intermediate or {},
                        user_attrs={schema.PARAMS: params, schema.GFLOPS: gflops, **attrs})


def test_ranked_trials_orders_by_auc_then_params_then_number():
    study = _study(_done(0.7), _done(0.9, params=5000), _done(0.9, params=2000), _done(0.9, params=2000))
    assert [t.number for t in ranked_trials(study)] == [2, 3, 1, 0]


def test_ranked_trials_puts_a_trial_without_params_after_its_equals():
    study = _study(create_trial(value=0.8), _done(0.8, params=10**9))
    assert [t.number for t in ranked_trials(study)] == [1, 0]


def test_ranked_trials_keeps_only_complete_trials_with_a_finite_auc():
    study = _study(_done(0.6), _pruned({1: 0.99}), create_trial(state=TrialState.FAIL), _done(-math.inf))
    assert [t.number for t in ranked_trials(study)] == [0]


def test_best_trial_is_the_first_ranked():
    study = _study(_done(0.7), _done(0.8), _done(0.75))
    assert best_trial(study).number == 1


def test_best_trial_of_a_study_without_a_complete_trial_names_the_study():
    study = _study(_pruned({1: 0.9}), name="lungct-x")
    with pytest.raises(ValueError, match=r"^study: 'lungct-x' has no complete trial yet"):
        best_trial(study)


def test_baseline_trial_is_found_whatever_its_state():
    study = _study(_done(0.9), _pruned({1: 0.5}, **{schema.BASELINE: True}), _done(0.8))
    assert baseline_trial(study).number == 1


def test_baseline_trial_is_none_when_no_trial_is_the_baseline():
    assert baseline_trial(_study(_done(0.9), _done(0.8, **{schema.BASELINE: False}))) is None


def test_trial_point_cost_names_params_or_gflops():
    point = TrialPoint(0, 0.8, 1234, 2.5, True, False, None)
    assert point.cost("params") == 1234.0 and isinstance(point.cost("params"), float)
    assert point.cost("gflops") == 2.5


def test_trial_points_carry_each_trials_auc_costs_and_flags():
    spec = {"levels": []}
    study = _study(_done(0.8, params=3000, gflops=1.5, spec=spec, **{schema.BASELINE: True}),
                   _pruned({1: 0.6, 3: 0.4, 2: 0.7}, params=4000, gflops=2.0))
    complete, pruned = trial_points(study)
    assert complete == TrialPoint(0, 0.8, 3000, 1.5, True, True, spec)
    assert pruned == TrialPoint(1, 0.4, 4000, 2.0, False, False, None)  # the last step's value, not the last added


def test_trial_points_of_a_pruned_trial_without_steps_read_its_last_validation_auc():
    study = _study(_pruned(None, **{schema.VAL_AUC: [0.5, 0.65]}))
    (point,) = trial_points(study)
    assert point.auc == 0.65 and not point.complete


def test_trial_points_leave_out_untrained_and_scoreless_trials():
    study = _study(create_trial(state=TrialState.PRUNED, user_attrs={schema.PRUNE_REASON: "too big"}),
                   create_trial(value=0.9, user_attrs={schema.PARAMS: 10}),  # no gflops
                   _pruned(None),  # trained but reported nothing
                   create_trial(state=TrialState.FAIL, user_attrs={schema.PARAMS: 1, schema.GFLOPS: 1.0}),
                   _done(0.7))
    assert [p.number for p in trial_points(study)] == [4]


def test_non_dominated_depends_on_the_cost_named():
    points = [TrialPoint(0, 0.8, 1000, 3.0, True, False, None),
              TrialPoint(1, 0.8, 2000, 1.0, True, False, None)]
    assert non_dominated(points, "params") == {0}
    assert non_dominated(points, "gflops") == {1}


def test_non_dominated_keeps_every_trial_with_identical_auc_and_cost():
    points = [TrialPoint(n, 0.8, 1000, 1.0, True, False, None) for n in (4, 7)]
    assert non_dominated(points, "params") == {4, 7}


def test_non_dominated_ignores_a_better_pruned_trial_and_of_nothing_is_empty():
    points = [TrialPoint(0, 0.7, 1000, 1.0, True, False, None), TrialPoint(1, 0.9, 10, 0.1, False, False, None)]
    assert non_dominated(points, "params") == {0}
    assert non_dominated([], "params") == set()
