"""space: the architecture search space, the model builder, the seed baseline and its modifications."""

from space.baseline import (
    MODIFICATIONS,
    apply_modifications,
    baseline,
    baseline_train,
    fit_to_size,
    same_padding,
    variants,
)
from space.bounds import SpaceBounds
from space.build import (
    OrdinalCuts,
    SpecInputError,
    SpecNet,
    build,
    check_input_size,
    feature_shapes,
    grade_probabilities,
    last_block_name,
)
from space.cost import Cost, Memory, cost, count_flops, count_keras_params, count_params, memory
from space.fit import bounds_for_size, fit_cost, fit_sampled, max_levels
from space.sample import baseline_params, param_names, params_for, sample
from space.spec import ArchSpec, LevelSpec, TrainSpec, describe_spec

__all__ = [
    "MODIFICATIONS",
    "ArchSpec",
    "Cost",
    "LevelSpec",
    "Memory",
    "OrdinalCuts",
    "SpaceBounds",
    "SpecInputError",
    "SpecNet",
    "TrainSpec",
    "apply_modifications",
    "baseline",
    "baseline_params",
    "baseline_train",
    "bounds_for_size",
    "build",
    "check_input_size",
    "cost",
    "count_flops",
    "count_keras_params",
    "count_params",
    "describe_spec",
    "feature_shapes",
    "fit_cost",
    "fit_sampled",
    "fit_to_size",
    "grade_probabilities",
    "last_block_name",
    "max_levels",
    "memory",
    "param_names",
    "params_for",
    "same_padding",
    "sample",
    "variants",
]
