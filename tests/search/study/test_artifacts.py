"""search.study.artifacts: where a study's artifacts live, the atomic store, and what each trial uploads.

tests/search/commands/test_hostile_storage.py covers a failed atomic write leaving nothing and a study whose artifacts
fill the disk; these cover each unit's own behaviour on a small in-memory study.
"""

import csv
import errno
import io
import json
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import create_trial
from safetensors.torch import load_file

from search.study import schema
from search.study.artifacts import (
    CHECKPOINT,
    CHECKPOINT_SPEC,
    LEARNING_CURVE,
    AtomicArtifactStore,
    TrialArtifacts,
    artifact_dir,
)
from search.study.faults import FULL, StorageError


def _fits(*losses_per_fold):
    """Stand-ins for the fits of a trial: only ``history`` entries' epoch, train_loss and seconds are read."""
    return [SimpleNamespace(history=[SimpleNamespace(epoch=e, train_loss=loss, seconds=0.5 * e)
                                     for e, loss in enumerate(losses, start=1)]) for losses in losses_per_fold]


def _trial(study, **attrs):
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


def _files(store_dir, trial):
    """Uploaded file name -> its bytes, for one trial."""
    store = AtomicArtifactStore(store_dir)
    return {m.filename: store.open_reader(m.artifact_id).read() for m in get_all_artifact_meta(trial)}


@pytest.fixture
def study():
    return optuna.create_study(direction="maximize")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))


def test_artifact_dir_is_the_study_name_with_an_artifacts_suffix(tmp_path):
    assert artifact_dir(tmp_path, "lungct-2") == tmp_path / "lungct-2-artifacts"
    assert artifact_dir(str(tmp_path), "a") == tmp_path / "a-artifacts"


def test_artifact_dir_refuses_a_name_that_is_a_path(tmp_path):
    with pytest.raises(ValueError, match=r"^--study: "):
        artifact_dir(tmp_path, "../escape")


def test_atomic_artifact_store_writes_the_whole_body_under_its_id_and_nothing_else(tmp_path):
    store = AtomicArtifactStore(tmp_path)
    store.write("abc", io.BytesIO(b"x" * 100_000))
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]
    assert store.open_reader("abc").read() == b"x" * 100_000


def test_trial_artifacts_makes_its_folder(tmp_path):
    TrialArtifacts(tmp_path / "new" / "s-artifacts")
    assert (tmp_path / "new" / "s-artifacts").is_dir()


def test_trial_artifacts_learning_curve_has_each_folds_epochs_and_final_auc_on_the_last_epoch(tmp_path, study, model):
    trial = _trial(study, **{schema.FOLD_AUCS: [0.75]})  # the second fold recorded no AUC
    TrialArtifacts(tmp_path)(trial, _fits([0.9, 0.7], [0.8, 0.6, 0.5]), model)
    rows = list(csv.reader(io.StringIO(_files(tmp_path, trial)[LEARNING_CURVE].decode())))
    assert rows == [["fold", "epoch", "train_loss", "seconds", "fold_val_auc_final"],
                    ["1", "1", "0.900000", "0.500", ""], ["1", "2", "0.700000", "1.000", "0.750000"],
                    ["2", "1", "0.800000", "0.500", ""], ["2", "2", "0.600000", "1.000", ""],
                    ["2", "3", "0.500000", "1.500", ""]]


def test_trial_artifacts_store_a_checkpoint_for_the_first_scored_trial(tmp_path, study, model):
    spec = {"levels": [{"filters": 2}]}
    trial = _trial(study, **{schema.FOLD_AUCS: [0.7, 0.8], schema.N_VAL: [5, 5], schema.SCORE: 0.75,
                             schema.SPEC: spec})
    TrialArtifacts(tmp_path)(trial, _fits([0.9], [0.8, 0.6]), model)
    files = _files(tmp_path, trial)
    assert set(files) == {LEARNING_CURVE, CHECKPOINT, CHECKPOINT_SPEC}
    assert json.loads(files[CHECKPOINT_SPEC]) == {"spec": spec, "fold": 2, "epoch": 2, "cv_score": 0.75}
    (weights,) = [m.artifact_id for m in get_all_artifact_meta(trial) if m.filename == CHECKPOINT]
    saved = load_file(str(tmp_path / weights))
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_trial_artifacts_store_a_checkpoint_only_when_the_score_beats_every_earlier_trial(tmp_path, study, model):
    study.add_trial(create_trial(value=0.8))
    store = TrialArtifacts(tmp_path)
    attrs = {schema.FOLD_AUCS: [0.8], schema.N_VAL: [4]}
    equal, better = _trial(study, **attrs, **{schema.SCORE: 0.8}), _trial(study, **attrs, **{schema.SCORE: 0.81})
    store(equal, _fits([0.5]), model)
    store(better, _fits([0.5]), model)
    assert CHECKPOINT not in _files(tmp_path, equal)
    assert CHECKPOINT in _files(tmp_path, better)


@pytest.mark.parametrize("attrs", [
    {schema.FOLD_AUCS: [0.9]},  # no score: the trial failed before it was scored
    {schema.FOLD_AUCS: [0.9], schema.N_VAL: [4, 4], schema.SCORE: 0.9},  # one of two folds trained
    {schema.FOLD_AUCS: [float("nan")], schema.N_VAL: [4], schema.SCORE: float("nan")},
], ids=["unscored", "incomplete", "nan"])
def test_trial_artifacts_store_no_checkpoint_for_an_unscored_incomplete_or_nan_trial(tmp_path, study, model, attrs):
    trial = _trial(study, **attrs)
    TrialArtifacts(tmp_path)(trial, _fits([0.5]), model)
    assert set(_files(tmp_path, trial)) == {LEARNING_CURVE}


def test_trial_artifacts_full_disk_is_a_storage_error_recorded_on_the_trial(tmp_path, study, model, monkeypatch):
    def full(self, artifact_id, body):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AtomicArtifactStore, "write", full)
    trial = _trial(study)
    with pytest.raises(StorageError) as caught:
        TrialArtifacts(tmp_path)(trial, _fits([0.5]), model)
    assert caught.value.kind == FULL and caught.value.where == str(tmp_path)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    reason = study.trials[trial.number].user_attrs[schema.FAIL_REASON]
    assert reason.startswith("its files could not be written: storage: ") and "full" in reason


def test_trial_artifacts_leave_an_os_error_that_is_no_storage_fault_as_it_is(tmp_path, study, model, monkeypatch):
    def missing(self, artifact_id, body):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(AtomicArtifactStore, "write", missing)
    trial = _trial(study)
    with pytest.raises(FileNotFoundError):
        TrialArtifacts(tmp_path)(trial, _fits([0.5]), model)
    assert schema.FAIL_REASON not in study.trials[trial.number].user_attrs
