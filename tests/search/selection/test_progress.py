"""search.selection.progress: the one-line account of a finished trial, the bars or log lines of a run,
the summary table.

tests/search/selection/test_parallel.py covers one epoch bar per running trial; these cover the rest.
"""

import math
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.selection.progress import SearchProgress, best_auc, summary_table, trial_line
from search.study import schema
from search.study.notes import score_name
from space import baseline, describe_spec

SPEC = baseline().to_dict()


def _study(*trials) -> optuna.Study:
    study = optuna.create_study(study_name="lungct", direction="maximize")
    for t in trials:
        study.add_trial(t)
    return study


def _frozen(**kwargs):
    """A trial as a study holds it (numbered 0; a bare ``create_trial`` is numbered -1)."""
    return _study(create_trial(**kwargs)).trials[0]


def _done(value, **attrs):
    return create_trial(value=value, user_attrs={schema.PARAMS: 1_500_000, schema.GFLOPS: 2.25, schema.SPEC: SPEC,
                                                 **attrs})


def test_trial_line_of_a_complete_trial_says_auc_se_cost_and_epochs():
    trial = _frozen(value=0.8125, user_attrs={schema.SCORE_SE: 0.0412, schema.PARAMS: 1_234_567,
                                                   schema.GFLOPS: 3.456, schema.EPOCHS_RUN: 8,
                                                   schema.WALL_SECONDS: 61.6, schema.BASELINE: True})
    assert trial_line(trial, total=50) == ("trial 0/50 [baseline]: CV AUC 0.812 +- 0.041, 1.23M params, "
                                           "3.46 GFLOPs, 8 epochs, 62 s")


def test_trial_line_of_a_bare_complete_trial_says_only_its_auc():
    assert trial_line(_frozen(value=0.5)) == "trial 0: CV AUC 0.500"


def test_trial_line_of_a_pruned_trial_gives_its_reason_or_the_pruner():
    reasoned = _frozen(state=TrialState.PRUNED, user_attrs={schema.PRUNE_REASON: "non-finite loss"})
    assert trial_line(reasoned) == "trial 0: pruned (non-finite loss)"
    assert trial_line(_frozen(state=TrialState.PRUNED)) == "trial 0: pruned (by the pruner)"


def test_trial_line_of_a_failed_trial_gives_its_state_and_reason():
    failed = _frozen(state=TrialState.FAIL, user_attrs={schema.FAIL_REASON: "out of memory"})
    assert trial_line(failed) == "trial 0: fail (out of memory)"
    assert trial_line(_frozen(state=TrialState.FAIL)) == "trial 0: fail (see optuna-dashboard)"


def test_best_auc_is_the_highest_complete_value_or_none():
    assert best_auc(_study(create_trial(state=TrialState.PRUNED))) is None
    assert best_auc(_study(_done(0.6), _done(0.9), create_trial(state=TrialState.FAIL), _done(0.7))) == 0.9


def test_search_progress_off_a_terminal_prints_one_numbered_line_per_trial(capsys):
    study = _study(_done(0.7), create_trial(state=TrialState.PRUNED))
    progress = SearchProgress(n_trials=2, epochs=3, enabled=False)
    progress.on_epoch(SimpleNamespace(number=0), SimpleNamespace(train_loss=0.5))  # no bar off a terminal
    assert progress.epoch_bars == {}
    for trial in study.trials:
        progress.on_trial_end(study, trial)
    progress.note("worker recovered")
    progress.close()
    assert capsys.readouterr().out.splitlines() == [
        "[1/2] trial 0: CV AUC 0.700, 1.50M params, 2.25 GFLOPs",
        "[2/2] trial 1: pruned (by the pruner)",
        "worker recovered",
    ]
    assert progress.done == 2


def test_search_progress_on_a_terminal_closes_a_trials_epoch_bar_and_shows_the_best_auc(capsys):
    study = _study(_done(0.6), _done(0.75))
    progress = SearchProgress(n_trials=2, epochs=3, enabled=True)
    progress.on_epoch(SimpleNamespace(number=1), SimpleNamespace(train_loss=0.4))
    assert progress.epoch_bars[1].n == 1 and progress.epoch_bars[1].total == 3
    progress.on_trial_end(study, study.trials[1])
    assert 1 not in progress.epoch_bars
    assert progress.trials_bar.n == 1 and progress.trials_bar.postfix == "best_cv_auc=0.750"
    progress.close()
    assert capsys.readouterr().out == "trial 1: CV AUC 0.750, 1.50M params, 2.25 GFLOPs\n"  # above the bars, unnumbered


def test_search_progress_reuses_the_position_of_a_closed_epoch_bar():
    study = _study(_done(0.6))
    progress = SearchProgress(n_trials=3, epochs=2, enabled=True)
    progress.epoch_done(0, 0.7)
    progress.epoch_done(1, 0.7)
    progress.on_trial_end(study, study.trials[0])  # trial 0 ends: position 1 is free again
    progress.epoch_done(2, 0.7)
    assert {n: abs(b.pos) for n, b in progress.epoch_bars.items()} == {1: 2, 2: 1}
    progress.close()
    assert progress.epoch_bars == {}


def test_summary_table_of_a_study_without_a_complete_trial_counts_its_states():
    study = _study(create_trial(state=TrialState.PRUNED), create_trial(state=TrialState.FAIL),
                   create_trial(state=TrialState.PRUNED))
    assert summary_table(study) == "study 'lungct': 3 trials (2 pruned, 1 fail)\nno complete trial yet"


def test_summary_table_ranks_the_top_trials_with_cost_and_architecture():
    study = _study(_done(0.7), _done(0.9, **{schema.SCORE_SE: 0.05}), _done(0.8, **{schema.BASELINE: True}))
    lines = summary_table(study, top=5).splitlines()
    assert lines[0] == "study 'lungct': 3 trials (3 complete)"
    ranks = [line.split()[:3] for line in lines[2:5]]
    assert ranks == [["1", "1", "0.900"], ["2", "2", "0.800"], ["3", "0", "0.700"]]
    assert "0.050" in lines[2] and "nan" in lines[3]  # a trial without an SE says so
    assert "1.50M" in lines[2] and "2.25" in lines[2] and describe_spec(SPEC) in lines[2]
    assert lines[3].endswith("(seed baseline)")
    assert lines[-1].startswith("CV AUC: mean final-epoch validation AUC")


def test_summary_table_names_a_baseline_ranked_below_the_top():
    study = _study(_done(0.9), _done(0.8), _done(0.3, **{schema.BASELINE: True}))
    text = summary_table(study, top=2)
    assert "seed baseline: rank 3, trial 2, CV AUC 0.300" in text
    assert "(seed baseline)" not in text


def test_summary_table_shows_missing_costs_as_zero_params_and_nan_gflops():
    study = _study(create_trial(value=0.8))
    row = summary_table(study).splitlines()[2]
    assert "0.00M" in row and "nan" in row and row.rstrip().endswith("-")


@pytest.mark.parametrize("top", [1, 3])
def test_summary_table_lists_at_most_top_trials(top):
    study = _study(*(_done(v) for v in (0.5, 0.6, 0.7, 0.8)))
    rows = [line for line in summary_table(study, top=top).splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == top and not math.isnan(float(rows[0].split()[2]))


def _severity(study: optuna.Study) -> optuna.Study:
    study.set_user_attr(schema.STUDY_SETTINGS, {"task": "severity"})
    return study


def test_trial_line_of_a_severity_trial_names_the_mean_grade_auc():
    trial = _frozen(value=0.7125, user_attrs={schema.SCORE_SE: 0.03})
    assert trial_line(trial, score=score_name("severity")) == "trial 0: CV grade>=k AUC 0.713 +- 0.030"


def test_search_progress_of_a_severity_study_names_its_score_in_lines_and_bar(capsys):
    study = _severity(_study(_done(0.6), _done(0.75)))
    logged = SearchProgress(n_trials=2, epochs=1, enabled=False)
    logged.on_trial_end(study, study.trials[0])
    assert capsys.readouterr().out == "[1/2] trial 0: CV grade>=k AUC 0.600, 1.50M params, 2.25 GFLOPs\n"
    bars = SearchProgress(n_trials=2, epochs=1, enabled=True)
    bars.on_trial_end(study, study.trials[1])
    assert bars.trials_bar.postfix == "best_cv_grade_auc=0.750"
    bars.close()
    logged.close()


def test_summary_table_of_a_severity_study_names_and_defines_its_score():
    study = _severity(_study(_done(0.9), _done(0.8), _done(0.3, **{schema.BASELINE: True})))
    lines = summary_table(study, top=2).splitlines()
    assert lines[1].split()[:4] == ["rank", "trial", "CV", "grade>=k"]
    assert lines[1].index("grade>=k AUC") + len("grade>=k AUC") == lines[2].index("0.900") + len("0.900")
    assert "seed baseline: rank 3, trial 2, CV grade>=k AUC 0.300" in lines
    assert lines[-1].startswith("CV grade>=k AUC: mean final-epoch validation grade>=k AUC (mean AUC of grade >= k "
                                "(k = 1..3)) over the folds")
