"""The seed baseline, the six modifications, and the padding fallback."""

from __future__ import annotations

import itertools

import pytest

from space import (
    MODIFICATIONS,
    SpecInputError,
    apply_modifications,
    baseline,
    baseline_train,
    build,
    count_keras_params,
    count_params,
    fit_to_size,
    same_padding,
    variants,
)


def _flat(spec) -> dict[str, object]:
    """Return a spec's fields as one flat dict, e.g. 'levels[2].filters' -> 128."""
    flat = {}
    for key, value in spec.to_dict().items():
        if key == "levels":
            for i, level in enumerate(value):
                flat.update({f"levels[{i}].{k}": v for k, v in level.items()})
        else:
            flat[key] = value
    return flat


def _changes(before, after) -> dict[str, object]:
    old, new = _flat(before), _flat(after)
    assert old.keys() == new.keys()
    return {key: new[key] for key in new if new[key] != old[key]}


def test_baseline_trainable_params_match_keras():
    assert count_params(build(baseline())) == 1_351_873


def test_baseline_keras_params_match_keras_summary():
    assert count_keras_params(build(baseline())) == 1_352_897


def test_baseline_is_the_seed_model():
    spec = baseline()
    assert spec.filters == (64, 64, 128, 256)
    assert {(level.n_convs, level.block) for level in spec.levels} == {(1, "plain")}
    assert (spec.activation, spec.pooling, spec.norm, spec.padding) == ("relu", "max", "batch", "valid")
    assert (spec.head_units, spec.dropout) == ((512,), 0.3)


def test_baseline_train_is_the_seed_training():
    train = baseline_train()
    assert (train.optimizer, train.lr, train.weight_decay, train.batch_size) == ("adam", 1e-4, 0.0, 2)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dense100", {"head_units": [512, 100]}),
        ("double_conv", {f"levels[{i}].n_convs": 2 for i in range(4)}),
        ("sigmoid", {"activation": "sigmoid"}),
        ("avgpool", {"pooling": "avg"}),
        ("residual", {f"levels[{i}].block": "residual" for i in range(4)}),
        ("residual_inception", {f"levels[{i}].block": "residual_inception" for i in range(4)}),
    ],
)
def test_modification_changes_exactly_what_it_names(name, expected):
    assert _changes(baseline(), MODIFICATIONS[name](baseline())) == expected


def test_apply_modifications_is_order_independent():
    names = ["dense100", "double_conv", "sigmoid", "avgpool", "residual_inception"]
    results = {apply_modifications(baseline(), order) for order in itertools.permutations(names)}
    assert len(results) == 1


def test_apply_modifications_combines_their_changes():
    spec = apply_modifications(baseline(), ["sigmoid", "dense100"])
    assert _changes(baseline(), spec) == {"activation": "sigmoid", "head_units": [512, 100]}


def test_apply_modifications_with_no_names_returns_spec():
    assert apply_modifications(baseline(), []) == baseline()


def test_apply_modifications_rejects_both_block_replacements():
    with pytest.raises(ValueError, match="residual and residual_inception"):
        apply_modifications(baseline(), ["residual_inception", "residual"])


def test_apply_modifications_rejects_unknown_name_with_suggestion():
    with pytest.raises(ValueError, match=r"unknown 'dense_100'; did you mean 'dense100'\?"):
        apply_modifications(baseline(), ["dense_100"])


def test_apply_modifications_rejects_repeated_name():
    with pytest.raises(ValueError, match="repeated sigmoid"):
        apply_modifications(baseline(), ["sigmoid", "sigmoid"])


def test_variants_are_baseline_then_the_six_modifications_in_order():
    assert list(variants()) == [
        "baseline", "dense100", "double_conv", "sigmoid", "avgpool", "residual", "residual_inception"
    ]  # fmt: skip


def test_variants_modify_the_given_base():
    assert {spec.padding for spec in variants(same_padding(baseline())).values()} == {"same"}


def test_same_padding_changes_only_padding():
    assert _changes(baseline(), same_padding(baseline())) == {"padding": "same"}


def test_fit_to_size_keeps_a_spec_that_fits():
    assert fit_to_size(baseline(), (64, 128, 128)) == (baseline(), None)


def test_fit_to_size_switches_to_same_padding_and_says_why():
    spec, reason = fit_to_size(baseline(), (32, 64, 64))
    assert spec == same_padding(baseline())
    assert reason.startswith("'same' padding, as level 4: feature map (0, 4, 4) vanishes")


def test_fit_to_size_raises_when_same_padding_fails_too():
    with pytest.raises(SpecInputError, match=r"'same' padding"):
        fit_to_size(baseline(), (8, 8, 8))
