"""bounds_for_size, max_levels, fit_sampled and fit_cost: every spec sampled for a study runs, under its cost cap."""

from __future__ import annotations

import dataclasses
import itertools
import random

import optuna
import pytest
from optuna.trial import FixedTrial

from space import (
    ArchSpec,
    LevelSpec,
    SpaceBounds,
    SpecInputError,
    baseline,
    baseline_params,
    baseline_train,
    bounds_for_size,
    check_input_size,
    cost,
    fit_cost,
    fit_sampled,
    max_levels,
    param_names,
    same_padding,
    sample,
)
from space.sample import growth_param, head_units_param
from space.spec import NORMS
from tests.space.helpers import TINY_SIZE, run_forward_backward, tiny_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Every (D, H, W) from these axes: cubic and non-cubic, from too small for the seed to its full size.
DEPTHS = (8, 12, 16, 20, 24, 32, 48, 64)
SIDES = (16, 24, 32, 48, 64, 96, 128)
SIZES = tuple(itertools.product(DEPTHS, SIDES, SIDES))
DRAWS_PER_SIZE = 50


def _random_params(bounds: SpaceBounds, rng: random.Random) -> dict[str, object]:
    """Return a value for every parameter of `bounds`, drawn uniformly from its range or choices."""
    params: dict[str, object] = {
        "n_levels": rng.randint(*bounds.n_levels),
        "base_filters": rng.choice(bounds.base_filters),
        **{growth_param(i): rng.choice(bounds.growth) for i in range(2, bounds.n_levels[1] + 1)},
        "convs_per_level": rng.randint(*bounds.convs_per_level),
        "head_layers": rng.randint(*bounds.head_layers),
        **{head_units_param(j): rng.choice(bounds.head_units) for j in range(1, bounds.head_layers[1] + 1)},
        "dropout": rng.uniform(*bounds.dropout),
        "lr": rng.uniform(*bounds.lr),
    }
    for name in ("block", "activation", "pooling", "norm", "padding", "weight_decay", "optimizer", "batch_size"):
        params[name] = rng.choice(getattr(bounds, name))
    assert set(params) == set(param_names(bounds))
    return params


def _hardest_params(bounds: SpaceBounds) -> dict[str, object]:
    """Return the parameters that shrink the maps most: every level, every conv, 'valid', instance norm
    (the norm needing the largest smallest map) where the bounds hold it."""
    params = _random_params(bounds, random.Random(0))
    return params | {
        "n_levels": bounds.n_levels[1],
        "convs_per_level": bounds.convs_per_level[1],
        "padding": "valid",
        "norm": "instance" if "instance" in bounds.norm else bounds.norm[0],
    }


MAX_LEVELS = [
    ((8, 16, 16), 3), ((16, 32, 32), 4), ((32, 64, 64), 5), ((64, 128, 128), 6), ((16, 16, 16), 3), ((12, 96, 128), 3)
]  # fmt: skip


@pytest.mark.parametrize(("size", "expected"), MAX_LEVELS)
def test_max_levels_counts_halvings_that_keep_more_than_one_voxel(size, expected):
    assert max_levels(size) == expected


@pytest.mark.parametrize("size", [(8, 16, 16), (16, 16, 16), (12, 96, 128), (20, 24, 48)])
def test_max_levels_is_the_most_that_runs(size):
    n = max_levels(size)
    for norm in NORMS:
        check_input_size(ArchSpec(levels=(LevelSpec(1),) * n, padding="same", norm=norm), size)
    with pytest.raises(SpecInputError):
        check_input_size(ArchSpec(levels=(LevelSpec(1),) * (n + 1), padding="same", norm="instance"), size)


@pytest.mark.parametrize("size", [(2, 2, 2), (1, 64, 64)])
def test_max_levels_is_zero_where_no_level_runs(size):
    assert max_levels(size) == 0


@pytest.mark.parametrize(
    ("size", "n_levels"),
    [((8, 16, 16), (2, 3)), ((16, 32, 32), (2, 4)), ((32, 64, 64), (2, 5)), ((64, 128, 128), (2, 5))],
)
def test_bounds_for_size_clamps_n_levels_of_the_defaults(size, n_levels):
    assert bounds_for_size(SpaceBounds(), size).n_levels == n_levels


def test_bounds_for_size_keeps_every_other_field():
    bounds = SpaceBounds.full()
    clamped = bounds_for_size(bounds, (8, 24, 20))
    assert clamped.n_levels == (2, 3)
    assert dataclasses.replace(clamped, n_levels=bounds.n_levels) == bounds


def test_bounds_for_size_returns_bounds_that_already_fit_unchanged():
    bounds = SpaceBounds(n_levels=(1, 3))
    assert bounds_for_size(bounds, (32, 64, 64)) == bounds


def test_bounds_for_size_drops_growth_of_removed_levels():
    names = param_names(bounds_for_size(SpaceBounds(), (16, 32, 32)))
    assert "level4_growth" in names
    assert "level5_growth" not in names


@pytest.mark.parametrize(
    ("size", "bounds", "pattern"),
    [
        ((2, 16, 16), SpaceBounds(), r"input 2x16x16 is too small for SpaceBounds\.n_levels low 2: at most 1 level "),
        ((8, 8, 8), SpaceBounds(n_levels=(3, 5)), r"input 8x8x8 is too small .* low 3: at most 2 levels run"),
        ((2, 2, 2), SpaceBounds(n_levels=(1, 5)), r"input 2x2x2 is too small .* not even one level runs"),
    ],
)
def test_bounds_for_size_rejects_size_too_small_naming_it(size, bounds, pattern):
    with pytest.raises(SpecInputError, match=pattern):
        bounds_for_size(bounds, size)


def test_bounds_for_size_rejects_malformed_size():
    with pytest.raises(ValueError, match=r"size: must be three positive integers"):
        bounds_for_size(SpaceBounds(), (32, 64))


@pytest.mark.parametrize("size", [(32, 64, 64), (16, 32, 32)])
def test_bounds_for_size_keeps_the_baseline(size):
    bounds = bounds_for_size(SpaceBounds(), size)
    assert sample(FixedTrial(baseline_params(bounds)), bounds) == (baseline(), baseline_train())


def test_fit_sampled_keeps_a_spec_that_fits():
    spec = tiny_spec(padding="valid")
    assert fit_sampled(spec, TINY_SIZE) == (spec, None)


def test_fit_sampled_switches_valid_to_same_and_says_why():
    spec, reason = fit_sampled(baseline(), (32, 64, 64))
    assert spec == same_padding(baseline())
    assert reason.startswith("'same' padding, as level 4: feature map (0, 4, 4) vanishes at input 32x64x64")


def test_fit_sampled_points_to_bounds_for_size_when_same_padding_fails_too():
    spec = tiny_spec(levels=(LevelSpec(4),) * 5)
    with pytest.raises(SpecInputError, match=r"level 5: .*sample from bounds_for_size\(bounds, \(16, 16, 16\)\)"):
        fit_sampled(spec, (16, 16, 16))


@pytest.mark.parametrize("bounds", [SpaceBounds(), SpaceBounds.full()], ids=["defaults", "full"])
def test_fit_sampled_runs_every_spec_sampled_for_the_size(bounds):
    rng = random.Random(20240611)
    fallbacks = 0
    for size in SIZES:
        fitted_bounds = bounds_for_size(bounds, size)
        draws = [_hardest_params(fitted_bounds)]
        draws += [_random_params(fitted_bounds, rng) for _ in range(DRAWS_PER_SIZE)]
        for params in draws:
            arch, _ = sample(FixedTrial(params), fitted_bounds)
            fitted, reason = fit_sampled(arch, size)
            check_input_size(fitted, size)
            assert fitted == (arch if reason is None else same_padding(arch)), (size, params)
            fallbacks += reason is not None
    assert fallbacks > 0  # the grid does reach sizes where 'valid' cannot run


def test_fit_sampled_runs_what_an_optuna_study_asks_for():
    size = (32, 64, 64)
    bounds = bounds_for_size(SpaceBounds(), size)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(30):
        trial = study.ask()
        arch, _ = sample(trial, bounds)
        check_input_size(fit_sampled(arch, size)[0], size)
        study.tell(trial, 0.0)


def test_fit_sampled_is_deterministic():
    size = (20, 24, 48)
    bounds = bounds_for_size(SpaceBounds.full(), size)
    arch, _ = sample(FixedTrial(_hardest_params(bounds)), bounds)
    assert fit_sampled(arch, size) == fit_sampled(arch, size)


def test_fit_sampled_smallest_map_trains_with_instance_norm():
    # At 8x8x16 three levels leave a 1x1x2 map: the smallest that instance norm can still normalise.
    size = (8, 8, 16)
    assert max_levels(size) == 3
    spec = tiny_spec(levels=(LevelSpec(4),) * 3, norm="instance", padding="valid")
    fitted, reason = fit_sampled(spec, size)
    assert reason is not None
    run_forward_backward(fitted, size)


# fit_cost: a spec above the cost cap trains narrower instead of spending its trial on nothing.

def _widest(n_levels: int, block: str, n_convs: int = 3) -> ArchSpec:
    return ArchSpec(levels=tuple(LevelSpec(64 * 2**i, n_convs, block) for i in range(n_levels)),
                    activation="elu", pooling="avg", padding="same", head_units=(512, 512))


def test_fit_cost_keeps_a_spec_within_the_cap_unchanged():
    spec = same_padding(baseline())
    assert fit_cost(spec, (32, 64, 64), 100.0) == (spec, None)
    assert fit_cost(spec, (32, 64, 64), None) == (spec, None)
    assert fit_cost(spec, (32, 64, 64), 0.0) == (spec, None)


def test_fit_cost_halves_widths_keeping_depth_block_and_ratios():
    size = (32, 64, 64)
    spec = same_padding(baseline())  # 64-64-128-256, 5.44 GFLOPs
    fitted, reason = fit_cost(spec, size, 3.26)
    assert [lv.filters for lv in fitted.levels] == [32, 32, 64, 128]
    assert [lv.n_convs for lv in fitted.levels] == [1] * 4 and fitted.levels[0].block == spec.levels[0].block
    assert dataclasses.replace(fitted, levels=spec.levels) == spec  # nothing but the widths changed
    assert cost(fitted, size).gflops <= 3.26
    assert "halved once (64-64-128-256 -> 32-32-64-128)" in reason and "3.26" in reason


def test_fit_cost_drops_convolutions_once_widths_are_at_the_floor():
    size = (32, 64, 64)
    spec = ArchSpec(levels=(LevelSpec(8, 3, "residual_inception"),) * 3, padding="same")
    cap = cost(dataclasses.replace(spec, levels=(LevelSpec(8, 1, "residual_inception"),) * 3), size).gflops
    fitted, reason = fit_cost(spec, size, cap)
    assert [lv.filters for lv in fitted.levels] == [8, 8, 8]
    assert [lv.n_convs for lv in fitted.levels] == [1, 1, 1]
    assert "2 convolutions per level fewer (3 -> 1)" in reason and "still" not in reason


def test_fit_cost_says_when_nothing_brings_a_spec_under_the_cap():
    fitted, reason = fit_cost(_widest(3, "plain"), (32, 64, 64), 1e-6)
    assert fitted.levels[0].filters == 8 and all(lv.n_convs == 1 for lv in fitted.levels)
    assert reason.endswith("still above the cap")


@pytest.mark.parametrize("size", [(32, 64, 64), (16, 32, 32)])
@pytest.mark.parametrize("block", ["plain", "residual", "residual_inception"])
def test_fit_cost_brings_the_costliest_default_specs_under_the_cpu_cap(size, block):
    # The CPU cap is 0.6x the seed baseline's cost (search.training.fidelity); every default-space spec, up to the
    # widest of each depth, must train under it: no trial slot is left to a spec that trains nothing.
    cap = 0.6 * cost(fit_sampled(baseline(), size)[0], size).gflops
    for n_levels in range(2, max_levels(size) + 1):
        spec, _ = fit_sampled(_widest(n_levels, block), size)
        fitted, reason = fit_cost(spec, size, cap)
        assert cost(fitted, size).gflops <= cap, reason
        assert fitted.n_levels == n_levels and fitted.head_units == spec.head_units


def test_fit_cost_is_deterministic():
    spec = _widest(4, "residual")
    assert fit_cost(spec, (32, 64, 64), 1.0) == fit_cost(spec, (32, 64, 64), 1.0)
