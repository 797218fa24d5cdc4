"""search.ablation.experiment: the resumable bookkeeping around the runs, without training: the ablation's study
(named by its settings and scans, its settings stored once) and the runs collected back from it in run order.

The whole ablation, data to outputs, runs end to end in tests/search/commands/test_ablate.py.
"""

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lungct.splits import Fold
from search.ablation.experiment import AblationResult, collect_runs, open_ablation_study
from search.ablation.runs import RunRecord
from search.ablation.settings import SETTINGS_ATTR, AblationSettings
from search.ablation.variants import make_variants
from search.study import schema

SIZE = (16, 24, 20)
SETTINGS = AblationSettings(size=SIZE, epochs=2, folds=2, repeats=1, seed=5, n_phantoms=40)
FOLDS = [Fold(0, 0, ("a", "b"), ("c",)), Fold(0, 1, ("b", "c"), ("a",))]
SUMMARY = {"root": "phantoms", "n_train": 3}


def _prepared(summary=SUMMARY):
    return SimpleNamespace(summary=lambda: dict(summary))


@pytest.fixture
def storage():
    return optuna.storages.InMemoryStorage()


@pytest.fixture(scope="module")
def variant_list():
    return make_variants(["baseline", "sigmoid"], SIZE)


def _add_run(study, variant, fold, state=TrialState.COMPLETE, auc=0.7, key=None):
    attrs = {schema.VARIANT: variant.name, schema.SPEC_KEY: key or variant.key, schema.REPEAT: fold.repeat,
             schema.FOLD: fold.fold, schema.SEED: 5 + fold.fold, schema.AUC: auc}
    study.add_trial(create_trial(state=state, value=auc if state == TrialState.COMPLETE else None, user_attrs=attrs))


def test_open_ablation_study_names_it_by_settings_and_scans_and_stores_what_it_runs_with(storage):
    study = open_ablation_study(storage, SETTINGS, "f00d", Path("splits/folds-x.json"), _prepared())
    assert study.study_name == SETTINGS.study_name("f00d") == "ablation-f00d-course-16x24x20-e2-k2r1-s5"
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs == {SETTINGS_ATTR: SETTINGS.to_dict(), schema.FOLDS_FILE: "splits/folds-x.json",
                                schema.STUDY_DATA_SUMMARY: SUMMARY}


def test_open_ablation_study_samples_nothing_and_prunes_nothing(storage):
    study = open_ablation_study(storage, SETTINGS, "f00d", Path("folds.json"), _prepared())
    assert isinstance(study.pruner, optuna.pruners.NopPruner)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)


def test_open_ablation_study_again_resumes_the_same_study_and_keeps_what_it_stored(storage, variant_list):
    first = open_ablation_study(storage, SETTINGS, "f00d", Path("folds.json"), _prepared())
    _add_run(first, variant_list[0], FOLDS[0])
    again = open_ablation_study(storage, SETTINGS, "f00d", Path("other.json"), _prepared({"root": "moved"}))
    assert again.study_name == first.study_name and len(again.trials) == 1
    assert again.user_attrs[schema.FOLDS_FILE] == "folds.json"
    assert again.user_attrs[schema.STUDY_DATA_SUMMARY] == SUMMARY
    assert len(storage.get_all_studies()) == 1


def test_open_ablation_study_with_other_settings_or_scans_opens_another_study(storage):
    first = open_ablation_study(storage, SETTINGS, "f00d", Path("folds.json"), _prepared())
    longer = AblationSettings(size=SIZE, epochs=3, folds=2, repeats=1, seed=5, n_phantoms=40)
    other = open_ablation_study(storage, longer, "f00d", Path("folds.json"), _prepared())
    rescanned = open_ablation_study(storage, SETTINGS, "beef", Path("folds.json"), _prepared())
    assert len({first.study_name, other.study_name, rescanned.study_name}) == 3
    assert other.user_attrs[SETTINGS_ATTR]["epochs"] == 3
    assert len(storage.get_all_studies()) == 3


def test_collect_runs_lists_finished_runs_fold_by_fold_in_variant_order(storage, variant_list):
    study = open_ablation_study(storage, SETTINGS, "f00d", Path("folds.json"), _prepared())
    base, sigmoid = variant_list
    # Stored out of order, as a resumed ablation stores them.
    _add_run(study, sigmoid, FOLDS[1], auc=0.61)
    _add_run(study, base, FOLDS[1], auc=0.71)
    _add_run(study, sigmoid, FOLDS[0], auc=0.60)
    _add_run(study, base, FOLDS[0], auc=0.70)
    runs = collect_runs(study, FOLDS, variant_list)
    assert [(r.variant, r.fold, r.auc) for r in runs] == [("baseline", 0, 0.70), ("sigmoid", 0, 0.60),
                                                          ("baseline", 1, 0.71), ("sigmoid", 1, 0.61)]
    assert all(isinstance(r, RunRecord) for r in runs)


def test_collect_runs_leaves_out_failed_runs_and_keeps_diverged_ones(storage, variant_list):
    study = open_ablation_study(storage, SETTINGS, "f00d", Path("folds.json"), _prepared())
    base, sigmoid = variant_list
    _add_run(study, base, FOLDS[0])
    _add_run(study, sigmoid, FOLDS[0], state=TrialState.FAIL)  # out of memory: redone on the next run
    _add_run(study, sigmoid, FOLDS[1], state=TrialState.PRUNED)  # non-finite loss: the same seed would repeat it
    runs = collect_runs(study, FOLDS, variant_list)
    assert [(r.variant, r.fold, r.state) for r in runs] == [("baseline", 0, "complete"), ("sigmoid", 1, "pruned")]


def test_collect_runs_ignores_runs_of_another_spec_under_the_same_name(storage, variant_list):
    study = open_ablation_study(storage, SETTINGS, "f00d", Path("folds.json"), _prepared())
    base, _ = variant_list
    _add_run(study, base, FOLDS[0], key="0123456789ab")  # a baseline as an older version fitted it
    assert collect_runs(study, FOLDS, [base]) == []
    _add_run(study, base, FOLDS[0])
    assert [r.trial for r in collect_runs(study, FOLDS, [base])] == [1]


def test_collect_runs_only_of_the_folds_and_variants_asked_for(storage, variant_list):
    study = open_ablation_study(storage, SETTINGS, "f00d", Path("folds.json"), _prepared())
    _, sigmoid = variant_list
    for fold in FOLDS:
        for v in variant_list:
            _add_run(study, v, fold)
    runs = collect_runs(study, FOLDS[1:], [sigmoid])
    assert [(r.variant, r.fold) for r in runs] == [("sigmoid", 1)]


def test_ablation_result_is_frozen(tmp_path):
    result = AblationResult(SETTINGS, "name", "sqlite:///x.db", [], [], 0, [tmp_path / "ablation.csv"])
    with pytest.raises(AttributeError):
        result.missing = 1
