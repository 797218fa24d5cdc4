"""ArchSpec, LevelSpec and TrainSpec: validation, JSON round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from space import ArchSpec, LevelSpec, TrainSpec, apply_modifications, baseline, baseline_train


def test_archspec_json_round_trip_gives_equal_spec():
    spec = apply_modifications(baseline(), ["dense100", "double_conv", "residual_inception"])
    assert ArchSpec.from_json(spec.to_json()) == spec


def test_archspec_to_dict_is_what_json_gives_back():
    spec = baseline()
    assert spec.to_dict() == json.loads(spec.to_json())


def test_archspec_from_json_restores_tuples():
    spec = ArchSpec.from_json(baseline().to_json())
    assert isinstance(spec.levels, tuple)
    assert isinstance(spec.head_units, tuple)
    assert hash(spec) == hash(baseline())


def test_trainspec_json_round_trip_gives_equal_spec():
    spec = TrainSpec(lr=3.2e-4, weight_decay=1e-5, optimizer="adamw", batch_size=4)
    assert TrainSpec.from_json(spec.to_json()) == spec


def test_archspec_accepts_lists_as_tuples():
    spec = ArchSpec(levels=[LevelSpec(8)], head_units=[16, 4])
    assert spec.levels == (LevelSpec(8),)
    assert spec.head_units == (16, 4)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"activation": "rellu"}, r"ArchSpec\.activation: unknown 'rellu'; did you mean 'relu'\?"),
        ({"activation": "leakyrelu"}, r"activation.*did you mean 'leaky_relu'\?"),
        ({"pooling": "maxpool"}, r"pooling.*'max'"),
        ({"norm": "batchnorm"}, r"norm.*did you mean 'batch'\?"),
        ({"padding": "full"}, r"ArchSpec\.padding: unknown 'full'"),
        ({"dropout": 1.0}, r"ArchSpec\.dropout: must be in \[0.0, 1.0\)"),
        ({"dropout": -0.1}, r"ArchSpec\.dropout"),
        ({"dropout": float("nan")}, r"ArchSpec\.dropout"),
        ({"head_units": (512, 0)}, r"ArchSpec\.head_units\[1\]: must be >= 1"),
        ({"levels": ()}, r"ArchSpec\.levels: need at least one level"),
        ({"levels": ({"filters": 8},)}, r"ArchSpec\.levels\[0\]: must be a LevelSpec"),
        ({"levels": (LevelSpec(8),) * 9}, r"ArchSpec\.levels: at most 8 levels"),
        ({"head_units": (100_000,)}, r"ArchSpec\.head_units\[0\]: must be <= 4,096"),
        ({"head_units": (8,) * 5}, r"ArchSpec\.head_units: at most 4 hidden layers"),
    ],
)
def test_archspec_rejects_bad_value_naming_field(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        dataclasses.replace(baseline(), **changes)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"filters": 0}, r"LevelSpec\.filters: must be >= 1, got 0"),
        ({"filters": 8.0}, r"LevelSpec\.filters: must be an integer"),
        ({"filters": True}, r"LevelSpec\.filters: must be an integer"),
        ({"filters": 8, "n_convs": 0}, r"LevelSpec\.n_convs: must be >= 1"),
        ({"filters": 8, "block": "residul"}, r"LevelSpec\.block: unknown 'residul'; did you mean 'residual'\?"),
        ({"filters": 8192}, r"LevelSpec\.filters: must be <= 2,048 \(space\.spec limit\), got 8,192"),
        ({"filters": 8, "n_convs": 1000}, r"LevelSpec\.n_convs: must be <= 8"),
    ],
)
def test_levelspec_rejects_bad_value_naming_field(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LevelSpec(**kwargs)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"lr": 0.0}, r"TrainSpec\.lr: must be > 0"),
        ({"lr": -1e-3}, r"TrainSpec\.lr"),
        ({"weight_decay": -1e-4}, r"TrainSpec\.weight_decay"),
        ({"optimizer": "adma"}, r"TrainSpec\.optimizer: unknown 'adma'; did you mean 'adam'\?"),
        ({"batch_size": 0}, r"TrainSpec\.batch_size: must be >= 1"),
    ],
)
def test_trainspec_rejects_bad_value_naming_field(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        dataclasses.replace(baseline_train(), **changes)


def test_archspec_from_dict_rejects_unknown_key_with_suggestion():
    data = baseline().to_dict() | {"activaton": "relu"}
    with pytest.raises(ValueError, match=r"unknown 'activaton'; did you mean 'activation'\?"):
        ArchSpec.from_dict(data)


def test_archspec_from_dict_names_the_bad_level():
    data = baseline().to_dict()
    data["levels"][1]["filters"] = 0
    with pytest.raises(ValueError, match=r"ArchSpec\.levels\[1\]: LevelSpec\.filters: must be >= 1"):
        ArchSpec.from_dict(data)


def test_archspec_from_dict_requires_levels():
    with pytest.raises(ValueError, match=r"ArchSpec\.levels: missing"):
        ArchSpec.from_dict({"activation": "relu"})


def test_archspec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        baseline().activation = "gelu"


def test_spec_limits_admit_everything_the_full_space_can_draw():
    from space import SpaceBounds
    from space.spec import MAX_CONVS, MAX_FILTERS, MAX_HEAD_LAYERS, MAX_HEAD_UNITS, MAX_LEVELS

    full = SpaceBounds.full()
    widest = max(full.base_filters) * max(full.growth) ** (full.n_levels[1] - 1)
    assert widest <= MAX_FILTERS and full.convs_per_level[1] <= MAX_CONVS and full.n_levels[1] <= MAX_LEVELS
    assert full.head_layers[1] <= MAX_HEAD_LAYERS and max(full.head_units) <= MAX_HEAD_UNITS


def test_levelspec_from_dict_without_filters_names_the_missing_field():
    with pytest.raises(ValueError, match=r"LevelSpec.filters: missing$"):
        ArchSpec.from_dict({"levels": [{}]})


def test_archspec_a_number_too_large_for_a_float_is_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match=r"^ArchSpec.dropout: must be a finite number, got 1000"):
        ArchSpec.from_dict({"levels": [{"filters": 8}], "dropout": 10 ** 400})
