"""SpaceBounds: defaults, validation, dict round trip."""

from __future__ import annotations

import dataclasses

import pytest

from space import SpaceBounds
from space.bounds import MAX_CHOICES
from space.spec import ACTIVATIONS, BLOCKS, NORMS, OPTIMIZERS, PADDINGS, POOLINGS

RANGES = ("n_levels", "convs_per_level", "head_layers", "dropout", "lr")


def test_spacebounds_defaults_span_the_architecture_space():
    bounds = SpaceBounds()
    assert bounds.n_levels == (2, 5)
    assert bounds.convs_per_level == (1, 3)
    assert set(bounds.block) == {"plain", "residual", "residual_inception"}
    assert set(bounds.activation) == {"relu", "leaky_relu", "elu", "gelu", "silu"}
    assert set(bounds.pooling) == {"max", "avg"}
    assert set(bounds.norm) == {"batch"}  # per-scan and no normalisation only in full(): see SpaceBounds
    assert set(SpaceBounds.full().norm) == {"batch", "instance", "none"}
    assert set(bounds.padding) == {"valid", "same"}
    assert bounds.head_layers == (0, 2)
    assert {100, 512} <= set(bounds.head_units)


def test_spacebounds_defaults_leave_out_what_a_short_cpu_study_wastes():
    bounds = SpaceBounds()
    assert bounds.batch_size == (2,)
    assert set(bounds.optimizer) == {"adam", "adamw"}
    assert bounds.lr == (1e-4, 3e-3)
    assert "sigmoid" not in bounds.activation
    assert bounds.weight_decay == (0.0, 1e-5, 1e-4, 1e-3)


def test_spacebounds_full_holds_every_table_name():
    full = SpaceBounds.full()
    assert set(full.activation) == set(ACTIVATIONS)
    assert set(full.block) == set(BLOCKS)
    assert set(full.norm) == set(NORMS)
    assert set(full.pooling) == set(POOLINGS)
    assert set(full.padding) == set(PADDINGS)
    assert set(full.optimizer) == set(OPTIMIZERS)
    assert (full.lr, full.batch_size) == ((1e-5, 1e-2), (2, 4, 8))


def test_spacebounds_defaults_lie_inside_full():
    defaults, full = SpaceBounds(), SpaceBounds.full()
    for field in dataclasses.fields(SpaceBounds):
        inner, outer = getattr(defaults, field.name), getattr(full, field.name)
        if field.name in RANGES:
            assert outer[0] <= inner[0] <= inner[1] <= outer[1], field.name
        else:
            assert set(inner) <= set(outer), field.name


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"n_levels": (3, 2)}, r"SpaceBounds\.n_levels: low 3 is above high 2"),
        ({"n_levels": (0, 2)}, r"SpaceBounds\.n_levels\[0\]: must be >= 1"),
        ({"n_levels": (2,)}, r"SpaceBounds\.n_levels: must be a \(low, high\) pair"),
        ({"activation": ("relu", "rellu")}, r"SpaceBounds\.activation: unknown 'rellu'; did you mean 'relu'\?"),
        ({"base_filters": ()}, r"SpaceBounds\.base_filters: must be a non-empty tuple"),
        ({"batch_size": (2, 2)}, r"SpaceBounds\.batch_size: has repeated choices"),
        ({"dropout": (0.0, 1.0)}, r"SpaceBounds\.dropout\[1\]"),
        ({"lr": (0.0, 1e-3)}, r"SpaceBounds\.lr: low must be > 0"),
        ({"weight_decay": (-1.0,)}, r"SpaceBounds\.weight_decay\[0\]"),
        ({"head_layers": (-1, 2)}, r"SpaceBounds\.head_layers\[0\]: must be >= 0"),
    ],
)
def test_spacebounds_rejects_bad_value_naming_field(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        dataclasses.replace(SpaceBounds(), **changes)


def test_spacebounds_from_dict_narrows_and_keeps_other_defaults():
    bounds = SpaceBounds.from_dict({"n_levels": [2, 3], "padding": ["same"]})
    assert bounds.n_levels == (2, 3)
    assert bounds.padding == ("same",)
    assert bounds.block == SpaceBounds().block


def test_spacebounds_from_dict_rejects_unknown_key_with_suggestion():
    with pytest.raises(ValueError, match=r"unknown 'n_level'; did you mean 'n_levels'\?"):
        SpaceBounds.from_dict({"n_level": [2, 3]})


def test_spacebounds_dict_round_trip_gives_equal_bounds():
    bounds = SpaceBounds(n_levels=(1, 4), lr=(1e-4, 1e-3))
    assert SpaceBounds.from_dict(bounds.to_dict()) == bounds


@pytest.mark.parametrize(("changes", "field"), [
    ({"base_filters": (64, 512), "growth": (1, 2)}, "base_filters"),  # 512 x 2**4 = 8192 filters at level 5
    ({"convs_per_level": (1, 9)}, "convs_per_level"),
    ({"n_levels": (2, 9)}, "n_levels"),
    ({"head_layers": (0, 5)}, "head_layers"),
    ({"head_units": (64, 8192)}, "head_units"),
])
def test_bounds_beyond_the_spec_limits_are_refused_when_read(changes, field):
    with pytest.raises(ValueError, match=rf"SpaceBounds\.{field}: .*space\.spec limit"):
        SpaceBounds.from_dict(changes)


def test_full_bounds_stay_within_the_spec_limits():
    SpaceBounds.full()  # raises if the widest space this project searches could draw an invalid spec


HUGE = 99999999999999999999  # a 20-digit integer, as TOML may hold


@pytest.mark.parametrize(("changes", "field"), [
    ({"n_levels": (1, HUGE), "growth": (2,)}, "n_levels"),  # 2 ** (HUGE - 1) would never finish
    ({"convs_per_level": (1, HUGE)}, "convs_per_level"),
    ({"head_layers": (0, HUGE)}, "head_layers"),
    ({"head_units": (64, HUGE)}, "head_units"),
    ({"base_filters": (HUGE,)}, "base_filters"),
    ({"n_levels": (1, 1), "growth": (HUGE,)}, "growth"),  # one level draws no growth, so nothing else limits it
    ({"batch_size": (2, HUGE)}, "batch_size"),
])
def test_spacebounds_huge_integer_is_refused_by_its_own_fields_limit(changes, field):
    with pytest.raises(ValueError, match=rf"^SpaceBounds\.{field}: (high|choice) {HUGE}, above the .* limit of \d+$"):
        SpaceBounds.from_dict(changes)


def test_spacebounds_choice_field_holds_at_most_max_choices():
    assert len(SpaceBounds(base_filters=tuple(range(1, MAX_CHOICES + 1))).base_filters) == MAX_CHOICES
    with pytest.raises(ValueError, match=rf"^SpaceBounds\.weight_decay: 5,000 choices, more than the {MAX_CHOICES}"):
        SpaceBounds(weight_decay=tuple(i * 1e-6 for i in range(5000)))


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"n_levels": (True, 3)}, r"SpaceBounds\.n_levels\[0\]: must be an integer, got True"),
    ({"batch_size": (True,)}, r"SpaceBounds\.batch_size\[0\]: must be an integer, got True"),
    ({"head_units": (64, False)}, r"SpaceBounds\.head_units\[1\]: must be an integer, got False"),
    ({"dropout": (False, 0.5)}, r"SpaceBounds\.dropout\[0\]: must be a finite number, got False"),
    ({"block": (True,)}, r"SpaceBounds\.block: unknown True"),
    ({"n_levels": True}, r"SpaceBounds\.n_levels: must be a \(low, high\) pair, got True"),
])
def test_spacebounds_refuses_a_bool_where_a_number_or_name_is_expected(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        SpaceBounds.from_dict(changes)


def test_spacebounds_message_abridges_a_deeply_nested_value():
    nested: list = [2]
    for _ in range(500):
        nested = [nested]
    with pytest.raises(ValueError, match=r"^SpaceBounds\.n_levels: must be a \(low, high\) pair") as caught:
        SpaceBounds.from_dict({"n_levels": nested})
    assert len(str(caught.value)) < 200
