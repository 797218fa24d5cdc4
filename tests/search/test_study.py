import optuna
import pytest
from optuna.trial import TrialState

from search.study import make_pruner, parse_objectives


def _controlled_study(pruner_name: str) -> optuna.Study:
    """Trials whose fold AUCs are fixed by a parameter: good trials first, then clearly poor ones.

    Each trial reports after each of 3 folds, as the search's objective does (step k = mean of k folds).
    """
    # A fixed name: Hyperband assigns trials to brackets by a hash of the study name.
    study = optuna.create_study(study_name="controlled", direction="maximize",
                                pruner=make_pruner(pruner_name, max_folds=3),
                                sampler=optuna.samplers.TPESampler(seed=0))
    for quality in [0.9] * 6 + [0.2] * 6:
        study.enqueue_trial({"quality": quality})

    def objective(trial):
        quality = trial.suggest_float("quality", 0.0, 1.0)
        for fold in range(1, 4):
            trial.report(quality + 0.001 * fold, fold)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return quality

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=12)
    return study


@pytest.mark.parametrize("name", ["hyperband", "median"])
def test_make_pruner_prunes_clearly_worse_trials(name):
    trials = _controlled_study(name).trials
    poor = [t for t in trials if t.params["quality"] < 0.5]
    assert sum(t.state == TrialState.PRUNED for t in poor) >= 3
    good = [t for t in trials if t.params["quality"] > 0.5]
    assert all(t.state == TrialState.COMPLETE for t in good)
    # Pruning saves folds: the poor trials ran fewer folds than the good ones did.
    assert sum(len(t.intermediate_values) for t in poor) < 0.75 * sum(len(t.intermediate_values) for t in good)


def test_make_pruner_none_never_prunes():
    assert all(t.state == TrialState.COMPLETE for t in _controlled_study("none").trials)


def test_make_pruner_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match="pruner: unknown pruner 'asha'"):
        make_pruner("asha", 5)


def test_parse_objectives_accepts_auc_first_only():
    assert parse_objectives("auc, params") == ("auc", "params")
    with pytest.raises(ValueError):
        parse_objectives("params,auc")
