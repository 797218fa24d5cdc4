"""Export's building blocks without a study: trial choice, AUC intervals, model-folder round trips, ONNX.

(Split from test_export.py, whose tests run a real export; these need none.)
"""


import numpy as np
import optuna
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lungct.records import PreprocessConfig, get_task
from search.export import choose
from search.model.folder import (
    ONNX,
    Ensemble,
    ModelInfo,
    export_onnx,
    fixed_input,
    load_model,
    logits,
    onnx_logits,
    save_model,
)
from search.stats.intervals import auc_rows, bootstrap_auc, stratified_resamples, wilson
from search.study.trials import best_trial
from space import ArchSpec, LevelSpec, TrainSpec, build

SIZE = (16, 16, 32)  # the seed baseline's four levels fit ('same' padding)


def test_export_refuses_a_trial_that_did_not_complete():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.8, user_attrs={"spec": {}}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"spec": {}}))
    with pytest.raises(ValueError, match="--trial: trial 1 is pruned"):
        choose(study, 1, SIZE)


def test_export_best_trial_breaks_auc_ties_by_fewer_params():
    study = optuna.create_study(direction="maximize")
    for params in (9000, 3000, 5000):
        study.add_trial(optuna.trial.create_trial(value=0.8, user_attrs={"params": params}))
    assert best_trial(study).user_attrs["params"] == 3000


def test_export_auc_rows_match_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    probs = np.round(rng.random(40), 1)  # many ties
    assert auc_rows(labels, probs)[0] == pytest.approx(roc_auc_score(labels, probs))


def test_export_bootstrap_resamples_keep_class_counts_and_bracket_the_auc():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(12, int), np.ones(8, int)]
    probs = rng.random(20)
    rows = stratified_resamples(labels, 50, seed=1)
    assert (labels[rows].sum(axis=1) == 8).all()
    ci = bootstrap_auc(labels, probs, 500, seed=1)
    assert ci.low < ci.estimate < ci.high


def test_export_wilson_interval_stays_in_unit_range_at_the_edges():
    ci = wilson(5, 5)
    assert ci.estimate == 1.0 and 0.0 < ci.low < 1.0 and ci.high == pytest.approx(1.0)


def test_export_model_folder_round_trips_batch_norm_statistics(tmp_path):
    size = (16, 24, 20)
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8, block="residual")), norm="batch", padding="same")
    model = build(spec)
    model(torch.rand(4, 1, *size))  # a training-mode pass moves the running statistics off their defaults
    save_model(tmp_path, model, spec, TrainSpec(), ModelInfo.for_task(get_task("course"), PreprocessConfig(size)))
    export_onnx(model, size, tmp_path / ONNX)
    x = fixed_input(size, n=3)
    expected = logits(model, x)
    reloaded, _, _ = load_model(tmp_path)
    assert reloaded.features.level1.norm.running_mean.abs().sum() > 0
    assert np.max(np.abs(logits(reloaded, x) - expected)) <= 1e-4
    assert np.max(np.abs(onnx_logits(tmp_path / ONNX, x) - expected)) <= 1e-4


def test_export_onnx_of_an_ensemble_of_confident_members_matches_torch(tmp_path):
    # Members sure of label 1 (logits 24, 22.5, 16): the ensemble's logit hangs on probabilities near
    # 1e-10, which onnxruntime's fast sigmoid cannot resolve; an exported Log(Sigmoid) was 0.48 off.
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(4)), padding="same", head_units=())
    members = []
    for bias in (24.0, 22.5, 16.0):
        member = build(spec).eval()
        with torch.no_grad():
            member.head.out.weight.mul_(0.1)
            member.head.out.bias.fill_(bias)
        members.append(member)
    ensemble = Ensemble(members).eval()
    size = (8, 8, 8)
    export_onnx(ensemble, size, tmp_path / "e.onnx")
    x = fixed_input(size, n=3, seed=1)
    expected = logits(ensemble, x)
    assert np.all(expected > 15) and np.max(np.abs(onnx_logits(tmp_path / "e.onnx", x) - expected)) <= 1e-4
