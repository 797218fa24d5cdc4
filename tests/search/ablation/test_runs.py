"""search.ablation.runs: a run's record read from its trial, its seed and key, which runs are finished, how the
runner maps training's outcomes to the trial (with training stubbed), and the progress lines."""

import math
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

import search.ablation.runs as runs
from lungct.splits import Fold
from search.ablation.runs import (
    ORDINAL_RUN_COLUMNS,
    RUN_COLUMNS,
    AblationProgress,
    AblationRunner,
    RunRecord,
    finished_runs,
    run_all,
    run_columns,
    run_key,
    run_seed,
)
from search.ablation.settings import AblationSettings
from search.ablation.variants import make_variants
from search.stats.metrics import BinaryMetrics, OrdinalMetrics
from search.study import schema
from search.study.notes import score_name
from search.study.recovery import INTERRUPTED
from search.training.loop import EpochResult, FitResult
from search.training.unit import NON_FINITE, OUT_OF_MEMORY, TrainingFailed

SIZE = (16, 24, 20)
CPU = torch.device("cpu")
SETTINGS = AblationSettings(data=None, task="course", size=SIZE, split_seed=0, n_phantoms=60, epochs=2, folds=2,
                            repeats=1, seed=7)
IDS = tuple(f"s{i}" for i in range(6))
FOLD0 = Fold(repeat=0, fold=0, train=IDS[:4], val=IDS[4:])
FOLD1 = Fold(repeat=0, fold=1, train=IDS[2:], val=IDS[:2])


def _study() -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")


def _attrs(variant="baseline", key="k1", repeat=0, fold=1, **extra) -> dict:
    return {schema.VARIANT: variant, schema.SPEC_KEY: key, schema.REPEAT: repeat, schema.FOLD: fold,
            schema.SEED: 1001, **extra}


def _metrics(auc: float) -> BinaryMetrics:
    return BinaryMetrics(auc=auc, accuracy=0.75, sensitivity=0.5, specificity=1.0, threshold=0.5, n=4, tp=1, fp=0,
                         tn=2, fn=1)


class _Prepared:
    """Stands in for PreparedData: ``loaded.select(ids)`` gives one (1, D, H, W) volume per id, and is counted."""

    def __init__(self):
        self.selected: list[tuple[str, ...]] = []
        self.loaded = SimpleNamespace(select=self._select)

    def _select(self, ids):
        self.selected.append(tuple(ids))
        n = len(ids)
        return torch.zeros(n, 1, *SIZE, dtype=torch.float16), torch.tensor([i % 2 for i in range(n)],
                                                                            dtype=torch.float32)


@pytest.fixture
def variant():
    return make_variants(["baseline"], SIZE)[0]


def _stub_training(monkeypatch, epochs: list[tuple[float, float | None]], fail: BaseException | None = None,
                   calls: list | None = None):
    """Replace train_model: report ``epochs`` as (loss, val AUC), then raise ``fail`` or return a fit result."""

    def train_model(arch, train_spec, data, val, *, epochs: int, device, seed, amp, on_epoch, grades=2):
        if calls is not None:
            calls.append({"seed": seed, "n_train": len(data), "n_val": len(val), "epochs": epochs, "amp": amp,
                          "grades": grades})
        history = []
        for i, (loss, auc) in enumerate(planned, start=1):
            result = EpochResult(i, loss, _metrics(auc) if auc is not None else None, 0.1)
            history.append(result)
            on_epoch(result)
        if fail is not None:
            raise fail
        best = max(range(len(history)), key=lambda i: history[i].val.auc)
        return SimpleNamespace(fitted=FitResult(history=history, best_epoch=best + 1,
                                                best_auc=history[best].val.auc, train_seconds=1.23456))

    planned = epochs
    monkeypatch.setattr(runs, "train_model", train_model)


def test_run_record_from_trial_reads_every_column_of_a_complete_run():
    trial = create_trial(value=0.7, user_attrs=_attrs(**{
        schema.AUC: 0.7, schema.ACCURACY: 0.75, schema.SENSITIVITY: 0.5, schema.SPECIFICITY: 1.0,
        schema.AUC_BEST_EPOCH: 0.9, schema.BEST_EPOCH: 1, schema.EPOCHS_RUN: 2, schema.TRAIN_SECONDS: 1.23,
        schema.N_TRAIN: 4, schema.N_VAL: 2, schema.PARAMS: 1234, schema.GFLOPS: 0.5, schema.DEVICE: "cpu"}))
    record = RunRecord.from_trial(trial)
    assert record == RunRecord(variant="baseline", repeat=0, fold=1, seed=1001, state="complete", auc=0.7,
                               accuracy=0.75, sensitivity=0.5, specificity=1.0, auc_best_epoch=0.9, best_epoch=1,
                               epochs=2, train_seconds=1.23, n_train=4, n_val=2, params=1234, gflops=0.5,
                               device="cpu", trial=trial.number, reason="")
    assert record.scored


def test_run_record_from_trial_of_a_pruned_run_is_unscored_with_its_reason_and_nan_metrics():
    trial = create_trial(state=TrialState.PRUNED, user_attrs=_attrs(**{schema.PRUNE_REASON: "non-finite loss"}))
    record = RunRecord.from_trial(trial)
    assert record.state == "pruned" and record.reason == "non-finite loss" and not record.scored
    assert math.isnan(record.auc) and math.isnan(record.accuracy) and math.isnan(record.gflops)
    assert (record.best_epoch, record.epochs, record.n_train, record.params, record.device) == (0, 0, 0, 0, "")


def test_run_record_from_trial_takes_the_fail_reason_when_no_prune_reason():
    trial = create_trial(state=TrialState.FAIL, user_attrs=_attrs(**{schema.FAIL_REASON: "out of memory"}))
    record = RunRecord.from_trial(trial)
    assert record.state == "fail" and record.reason == "out of memory" and not record.scored


def test_run_record_of_a_complete_run_with_a_nan_auc_is_not_scored():
    trial = create_trial(value=0.5, user_attrs=_attrs(**{schema.AUC: math.nan}))
    assert not RunRecord.from_trial(trial).scored


def test_run_record_from_trial_casts_stored_numbers_to_ints():
    record = RunRecord.from_trial(create_trial(value=0.5, user_attrs=_attrs(repeat=2.0, fold="3")))
    assert (record.repeat, record.fold, record.seed) == (2, 3, 1001)
    assert all(isinstance(v, int) for v in (record.repeat, record.fold, record.seed))


def test_run_record_to_row_has_the_run_columns_in_order():
    record = RunRecord.from_trial(create_trial(value=0.7, user_attrs=_attrs(**{schema.AUC: 0.7})))
    row = record.to_row()
    assert tuple(row) == RUN_COLUMNS
    assert row["variant"] == "baseline" and row["auc"] == 0.7 and row["state"] == "complete"


def test_run_seed_is_base_plus_1000_per_repeat_plus_the_fold():
    assert run_seed(7, 0, 0) == 7
    assert run_seed(7, 2, 3) == 2010
    assert len({run_seed(0, r, f) for r in range(3) for f in range(5)}) == 15


def test_run_key_is_the_variants_name_and_spec_key_with_the_fold(variant):
    assert run_key(variant, FOLD1) == ("baseline", variant.key, 0, 1)


def test_finished_runs_keeps_complete_and_pruned_runs_and_skips_failed_running_and_foreign_trials():
    study = _study()
    study.add_trial(create_trial(value=0.7, user_attrs=_attrs(fold=0)))
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=_attrs(fold=1)))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=_attrs(fold=2)))
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs=_attrs(fold=3)))
    study.add_trial(create_trial(value=0.9, user_attrs={schema.VARIANT: "baseline"}))  # lacks the key's fields
    done = finished_runs(study)
    assert set(done) == {("baseline", "k1", 0, 0), ("baseline", "k1", 0, 1)}
    assert done[("baseline", "k1", 0, 1)].state == TrialState.PRUNED


def test_finished_runs_keeps_the_first_trial_of_a_key_and_tells_spec_keys_apart():
    study = _study()
    study.add_trial(create_trial(value=0.6, user_attrs=_attrs()))
    study.add_trial(create_trial(value=0.8, user_attrs=_attrs()))
    study.add_trial(create_trial(value=0.9, user_attrs=_attrs(key="k2")))
    done = finished_runs(study)
    assert done[("baseline", "k1", 0, 1)].number == 0 and done[("baseline", "k2", 0, 1)].number == 2


def test_runner_fold_data_selects_the_folds_scans_once_per_fold():
    prepared = _Prepared()
    runner = AblationRunner(prepared, SETTINGS, CPU)
    data, val = runner.fold_data(FOLD0)
    assert data.volumes.shape == (4, 1, *SIZE) and len(val) == 2
    assert runner.fold_data(FOLD0)[0] is data  # the same fold again: kept, not selected again
    assert prepared.selected == [FOLD0.train, FOLD0.val]
    runner.fold_data(FOLD1)
    assert prepared.selected[2:] == [FOLD1.train, FOLD1.val]


def test_runner_scores_a_run_by_its_last_epoch_and_stores_its_curve(monkeypatch, variant):
    calls = []
    _stub_training(monkeypatch, [(0.7, 0.9), (0.6, 0.65)], calls=calls)
    study = _study()
    record = AblationRunner(_Prepared(), SETTINGS, CPU).run(study, variant, FOLD1)
    trial = study.trials[record.trial]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.65  # the last epoch's, not the best's
    assert record.auc == 0.65 and record.auc_best_epoch == 0.9 and record.best_epoch == 1 and record.scored
    assert record.seed == run_seed(SETTINGS.seed, 0, 1) == calls[0]["seed"] == 8
    assert calls == [{"seed": 8, "n_train": 4, "n_val": 2, "epochs": 2, "amp": False, "grades": 2}]
    assert (record.n_train, record.n_val, record.epochs, record.train_seconds) == (4, 2, 2, 1.23)
    assert record.device == "cpu" and record.params > 0 and record.gflops > 0
    assert trial.intermediate_values == {1: 0.9, 2: 0.65}
    assert trial.user_attrs[schema.TRAIN_LOSS] == [0.7, 0.6] and trial.user_attrs[schema.VAL_AUC] == [0.9, 0.65]
    assert trial.user_attrs[schema.SPEC_KEY] == variant.key and trial.user_attrs[schema.VARIANT] == "baseline"
    assert finished_runs(study).keys() == {run_key(variant, FOLD1)}


def test_runner_records_running_out_of_memory_as_a_failed_run_and_the_study_goes_on(monkeypatch, variant):
    _stub_training(monkeypatch, [(0.7, 0.6)], fail=TrainingFailed(OUT_OF_MEMORY, "out of memory at batch size 2"))
    study = _study()
    runner = AblationRunner(_Prepared(), SETTINGS, CPU)
    record = runner.run(study, variant, FOLD0)
    assert record.state == "fail" and record.reason == "out of memory at batch size 2" and not record.scored
    assert record.epochs == 1 and study.trials[record.trial].user_attrs[schema.TRAIN_LOSS] == [0.7]
    assert runner.running is None
    assert finished_runs(study) == {}  # a failed run is redone


def test_runner_records_a_non_finite_loss_as_a_pruned_run_that_counts_as_finished(monkeypatch, variant):
    _stub_training(monkeypatch, [(math.nan, None)], fail=TrainingFailed(NON_FINITE, "non-finite loss in epoch 1"))
    study = _study()
    record = AblationRunner(_Prepared(), SETTINGS, CPU).run(study, variant, FOLD0)
    assert record.state == "pruned" and record.reason == "non-finite loss in epoch 1" and not record.scored
    assert study.trials[record.trial].user_attrs[schema.VAL_AUC] == [None]
    assert run_key(variant, FOLD0) in finished_runs(study)


def test_run_all_after_ctrl_c_leaves_the_running_run_failed_and_propagates(monkeypatch, variant, capsys):
    _stub_training(monkeypatch, [(0.7, 0.6)], fail=KeyboardInterrupt())
    study = _study()
    progress = AblationProgress(2, SETTINGS.epochs, enabled=False)
    with pytest.raises(KeyboardInterrupt):
        run_all(study, [(FOLD0, variant), (FOLD1, variant)], AblationRunner(_Prepared(), SETTINGS, CPU), progress)
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs[schema.FAIL_REASON] == INTERRUPTED
    assert progress.done == 0 and capsys.readouterr().out == ""


def test_run_all_runs_each_todo_in_order_and_prints_one_line_per_run(monkeypatch, variant, capsys):
    _stub_training(monkeypatch, [(0.7, 0.9), (0.6, 0.65)])
    study = _study()
    progress = AblationProgress(2, SETTINGS.epochs, enabled=False)
    run_all(study, [(FOLD0, variant), (FOLD1, variant)], AblationRunner(_Prepared(), SETTINGS, CPU), progress)
    assert [t.user_attrs[schema.FOLD] for t in study.trials] == [0, 1]
    assert capsys.readouterr().out.splitlines() == [
        "[1/2] baseline repeat 0 fold 0: AUC 0.650, accuracy 0.750, 1 s",
        "[2/2] baseline repeat 0 fold 1: AUC 0.650, accuracy 0.750, 1 s"]


def test_progress_line_of_an_unscored_run_gives_its_state_and_reason(capsys):
    progress = AblationProgress(3, 2, enabled=False)
    pruned = RunRecord.from_trial(create_trial(state=TrialState.PRUNED,
                                               user_attrs=_attrs(**{schema.PRUNE_REASON: "non-finite loss"})))
    failed = RunRecord.from_trial(create_trial(state=TrialState.FAIL, user_attrs=_attrs()))
    progress.on_run_end(pruned)
    progress.on_run_end(failed)
    progress.close()
    assert capsys.readouterr().out.splitlines() == [
        "[1/3] baseline repeat 0 fold 1: pruned (non-finite loss)",
        "[2/3] baseline repeat 0 fold 1: fail (see optuna-dashboard)"]


def _ordinal(auc: float) -> OrdinalMetrics:
    return OrdinalMetrics(auc=auc, auc_at_least=(auc, auc, auc), macro_auc=math.nan, qwk=0.4, mae=0.75,
                          balanced_accuracy=0.375, confusion=((1, 1, 0, 0), (0, 0, 1, 0), (0, 0, 1, 0), (0, 0, 0, 0)),
                          n=4, grades=4)


def test_runner_of_a_severity_ablation_trains_four_grades_and_records_the_ordinal_metrics(monkeypatch, variant):
    calls = []

    def train_model(arch, train_spec, data, val, *, epochs, device, seed, amp, on_epoch, grades=2):
        calls.append(grades)
        result = EpochResult(1, 0.5, _ordinal(0.7), 0.1)
        on_epoch(result)
        return SimpleNamespace(fitted=FitResult(history=[result], best_epoch=1, best_auc=0.7, train_seconds=1.0))

    monkeypatch.setattr(runs, "train_model", train_model)
    settings = AblationSettings(data=None, task="severity", size=SIZE, split_seed=0, n_phantoms=60, epochs=1,
                                folds=2, repeats=1, seed=7)
    record = AblationRunner(_Prepared(), settings, CPU).run(_study(), variant, FOLD0)
    assert calls == [4]
    assert (record.auc, record.accuracy, record.balanced_accuracy, record.qwk, record.mae) == (0.7, 0.5, 0.375,
                                                                                            0.4, 0.75)
    assert math.isnan(record.sensitivity) and math.isnan(record.specificity) and record.scored
    row = record.to_row(ORDINAL_RUN_COLUMNS)
    assert tuple(row) == ORDINAL_RUN_COLUMNS and row["qwk"] == 0.4


def test_ordinal_run_columns_swap_sensitivity_and_specificity_for_the_ordinal_metrics():
    assert run_columns(False) == RUN_COLUMNS and run_columns(True) == ORDINAL_RUN_COLUMNS
    assert [c for c in RUN_COLUMNS if c not in ("sensitivity", "specificity")] == \
        [c for c in ORDINAL_RUN_COLUMNS if c not in ("balanced_accuracy", "qwk", "mae")]
    binary = RunRecord.from_trial(create_trial(value=0.7, user_attrs=_attrs(**{schema.AUC: 0.7})))
    assert (binary.qwk, binary.mae, binary.balanced_accuracy) == (None, None, None)
    assert all(math.isnan(v) for v in map(binary.to_row(ORDINAL_RUN_COLUMNS).get, ("qwk", "mae")))


def test_progress_line_of_a_severity_run_names_the_mean_grade_auc(capsys):
    record = RunRecord.from_trial(create_trial(value=0.7, user_attrs=_attrs(**{
        schema.AUC: 0.7, schema.ACCURACY: 0.5, "qwk": 0.4, schema.TRAIN_SECONDS: 3.0})))
    progress = AblationProgress(1, 1, enabled=False, score=score_name("severity"))
    progress.on_run_end(record)
    progress.close()
    assert capsys.readouterr().out == "[1/1] baseline repeat 0 fold 1: grade>=k AUC 0.700, grade accuracy 0.500, " \
                                      "QWK 0.400, 3 s\n"
