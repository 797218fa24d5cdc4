"""sample, params_for and baseline_params: Optuna parameters <-> specs."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.trial import FixedTrial

from space import (
    ArchSpec,
    LevelSpec,
    SpaceBounds,
    TrainSpec,
    baseline,
    baseline_params,
    baseline_train,
    param_names,
    params_for,
    sample,
    variants,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sampled_sequence(seed: int, n_trials: int) -> list[tuple[ArchSpec, TrainSpec]]:
    specs = []

    def objective(trial: optuna.Trial) -> float:
        arch, train = sample(trial)
        specs.append((arch, train))
        # Any deterministic value that depends on the spec lets TPE move after its startup trials.
        return sum(arch.filters) * arch.dropout + train.lr

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
    study.optimize(objective, n_trials=n_trials)
    return specs


def test_param_names_are_stable():
    assert param_names() == (
        "n_levels", "base_filters", "level2_growth", "level3_growth", "level4_growth", "level5_growth",
        "convs_per_level", "block", "activation", "pooling", "norm", "padding", "head_layers",
        "head1_units", "head2_units", "dropout", "lr", "weight_decay", "optimizer", "batch_size",
    )  # fmt: skip


def test_sample_with_baseline_params_gives_baseline():
    assert sample(FixedTrial(baseline_params())) == (baseline(), baseline_train())


def test_baseline_params_hold_seed_values():
    params = baseline_params()
    assert params["n_levels"] == 4
    assert params["base_filters"] == 64
    assert [params[f"level{i}_growth"] for i in (2, 3, 4)] == [1, 2, 2]
    assert params["lr"] == 1e-4
    assert params["batch_size"] == 2


@pytest.mark.parametrize("name", list(variants()))
def test_sample_with_fixed_trial_reproduces_each_variant(name):
    # The full space: the default one leaves out the sigmoid variant's activation.
    arch, train, bounds = variants()[name], baseline_train(), SpaceBounds.full()
    assert sample(FixedTrial(params_for(arch, train, bounds)), bounds) == (arch, train)


def test_sample_with_fixed_trial_reproduces_a_searched_spec():
    arch = ArchSpec(
        levels=(LevelSpec(16, 3, "residual"), LevelSpec(32, 3, "residual"), LevelSpec(32, 3, "residual")),
        activation="gelu",
        pooling="avg",
        norm="instance",
        padding="same",
        head_units=(),
        dropout=0.125,
    )
    train = TrainSpec(lr=2.5e-3, weight_decay=1e-3, optimizer="sgd", batch_size=8)
    bounds = SpaceBounds.full()
    assert sample(FixedTrial(params_for(arch, train, bounds)), bounds) == (arch, train)


def test_sample_same_seed_gives_same_sequence():
    assert _sampled_sequence(seed=7, n_trials=12) == _sampled_sequence(seed=7, n_trials=12)


def test_sample_different_seed_gives_different_sequence():
    assert _sampled_sequence(seed=7, n_trials=6) != _sampled_sequence(seed=8, n_trials=6)


def test_sample_records_every_parameter_in_every_trial():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: float(sample(trial)[0].n_levels), n_trials=8)
    for trial in study.trials:
        assert tuple(trial.params) == param_names()


def test_sample_is_a_function_of_the_recorded_params():
    bounds = SpaceBounds()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(25):
        trial = study.ask()
        arch, train = sample(trial, bounds)
        assert sample(FixedTrial(trial.params), bounds) == (arch, train)
        assert bounds.n_levels[0] <= arch.n_levels <= bounds.n_levels[1]
        assert len(arch.head_units) <= bounds.head_layers[1]
        study.tell(trial, 0.0)


def test_sample_records_single_choice_bounds():
    bounds = dataclasses.replace(SpaceBounds(), n_levels=(3, 3), block=("residual",), padding=("same",))
    study = optuna.create_study()
    trial = study.ask()
    arch, _ = sample(trial, bounds)
    assert (trial.params["n_levels"], trial.params["block"], trial.params["padding"]) == (3, "residual", "same")
    assert arch.n_levels == 3
    assert {level.block for level in arch.levels} == {"residual"}


def test_sample_narrowed_bounds_drop_unused_level_params():
    bounds = dataclasses.replace(SpaceBounds(), n_levels=(2, 3), head_layers=(0, 1))
    assert "level4_growth" not in param_names(bounds)
    assert "head2_units" not in param_names(bounds)


@pytest.mark.parametrize(
    ("arch", "pattern"),
    [
        (dataclasses.replace(baseline(), levels=(LevelSpec(64), LevelSpec(96))), r"level 2 filters 96"),
        (dataclasses.replace(baseline(), levels=(LevelSpec(64), LevelSpec(64, 1, "residual"))), r"block"),
        (dataclasses.replace(baseline(), levels=(LevelSpec(64), LevelSpec(64, 2))), r"n_convs"),
        (dataclasses.replace(baseline(), levels=(LevelSpec(48),) * 2), r"base_filters 48"),
        (dataclasses.replace(baseline(), head_units=(512, 100, 10)), r"head_layers 3"),
        (dataclasses.replace(baseline(), dropout=0.9), r"dropout 0.9"),
        (dataclasses.replace(baseline(), activation="sigmoid"), r"activation 'sigmoid'"),
    ],
)
def test_params_for_rejects_spec_outside_bounds_naming_field(arch, pattern):
    with pytest.raises(ValueError, match=pattern):
        params_for(arch, baseline_train())


@pytest.mark.parametrize(
    ("train", "pattern"),
    [
        (TrainSpec(lr=1.0), r"params_for: lr 1.0 is outside SpaceBounds.lr"),
        (TrainSpec(optimizer="sgd"), r"params_for: optimizer 'sgd' is outside SpaceBounds.optimizer"),
        (TrainSpec(batch_size=8), r"params_for: batch_size 8 is outside SpaceBounds.batch_size"),
    ],
)
def test_params_for_rejects_train_outside_bounds_naming_field(train, pattern):
    with pytest.raises(ValueError, match=pattern):
        params_for(baseline(), train)


def test_baseline_params_reject_bounds_that_exclude_baseline():
    with pytest.raises(ValueError, match=r"padding 'valid' is outside SpaceBounds.padding"):
        baseline_params(dataclasses.replace(SpaceBounds(), padding=("same",)))
