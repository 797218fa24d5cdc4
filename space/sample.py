"""Sampling a spec from an Optuna trial: the only Optuna-aware code in `space`.

`sample(trial, bounds)` reads flat, stable parameters from the trial and returns an
`(ArchSpec, TrainSpec)` pair; building happens later, without Optuna (sample, then build).
`params_for(arch, train)` is its inverse: the parameters for which `sample(FixedTrial(params))` returns
that pair, which is what `study.enqueue_trial` needs for the baseline and the course's variants.

The parameters, their ranges, why every one is sampled in every trial and how a spec is fitted to the input
size: docs/explanation/space.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from space.baseline import baseline, baseline_train
from space.bounds import SpaceBounds
from space.spec import ArchSpec, LevelSpec, TrainSpec

if TYPE_CHECKING:
    # Only for annotations: sampling calls suggest_* on whatever trial it is given, so importing
    # space never imports optuna.
    from optuna.trial import BaseTrial


def growth_param(level: int) -> str:
    """Return the parameter name for a level's growth factor (levels count from 1)."""
    return f"level{level}_growth"


def head_units_param(layer: int) -> str:
    """Return the parameter name for a hidden dense layer's width (layers count from 1)."""
    return f"head{layer}_units"


def param_names(bounds: SpaceBounds | None = None) -> tuple[str, ...]:
    """Return every parameter name that `sample` records under `bounds`, in sampling order.

    Args:
        bounds: The space; defaults to `SpaceBounds()`.

    Returns:
        The flat parameter names.
    """
    b = bounds or SpaceBounds()
    growth = tuple(growth_param(i) for i in range(2, b.n_levels[1] + 1))
    units = tuple(head_units_param(j) for j in range(1, b.head_layers[1] + 1))
    architecture = ("n_levels", "base_filters", *growth, "convs_per_level", "block", "activation")
    head = ("pooling", "norm", "padding", "head_layers", *units, "dropout")
    return (*architecture, *head, "lr", "weight_decay", "optimizer", "batch_size")


def sample(trial: BaseTrial, bounds: SpaceBounds | None = None) -> tuple[ArchSpec, TrainSpec]:
    """Draw an architecture and its training settings from a trial.

    Every parameter in `param_names(bounds)` is suggested in every call, so a choice with one option
    is still recorded and the importance analysis sees every parameter in every trial.

    Args:
        trial: An Optuna trial (`Trial`, `FixedTrial` or `FrozenTrial`).
        bounds: The space; defaults to `SpaceBounds()`.

    Returns:
        The architecture and training specs.
    """
    b = bounds or SpaceBounds()
    n_levels = trial.suggest_int("n_levels", *b.n_levels)
    base_filters = trial.suggest_categorical("base_filters", b.base_filters)
    growth = [trial.suggest_categorical(growth_param(i), b.growth) for i in range(2, b.n_levels[1] + 1)]
    n_convs = trial.suggest_int("convs_per_level", *b.convs_per_level)
    block = trial.suggest_categorical("block", b.block)
    activation = trial.suggest_categorical("activation", b.activation)
    pooling = trial.suggest_categorical("pooling", b.pooling)
    norm = trial.suggest_categorical("norm", b.norm)
    padding = trial.suggest_categorical("padding", b.padding)
    head_layers = trial.suggest_int("head_layers", *b.head_layers)
    units = [trial.suggest_categorical(head_units_param(j), b.head_units) for j in range(1, b.head_layers[1] + 1)]
    dropout = trial.suggest_float("dropout", *b.dropout)
    lr = trial.suggest_float("lr", *b.lr, log=True)
    weight_decay = trial.suggest_categorical("weight_decay", b.weight_decay)
    optimizer = trial.suggest_categorical("optimizer", b.optimizer)
    batch_size = trial.suggest_categorical("batch_size", b.batch_size)

    filters = [base_filters]
    for factor in growth[: n_levels - 1]:
        filters.append(filters[-1] * factor)
    arch = ArchSpec(
        levels=tuple(LevelSpec(f, n_convs, block) for f in filters),
        activation=activation,
        pooling=pooling,
        norm=norm,
        padding=padding,
        head_units=tuple(units[:head_layers]),
        dropout=dropout,
    )
    return arch, TrainSpec(lr=lr, weight_decay=weight_decay, optimizer=optimizer, batch_size=batch_size)


def _outside(field: str, value: object, bound: object) -> ValueError:
    return ValueError(f"params_for: {field} {value!r} is outside SpaceBounds.{field} {bound!r}")


def _in_range(field: str, value: float, bound: tuple) -> None:
    if not bound[0] <= value <= bound[1]:
        raise _outside(field, value, bound)


def _in_choices(field: str, value: object, bound: tuple) -> None:
    if value not in bound:
        raise _outside(field, value, bound)


def params_for(arch: ArchSpec, train: TrainSpec, bounds: SpaceBounds | None = None) -> dict[str, object]:
    """Return the trial parameters for which `sample` gives back `(arch, train)`.

    Parameters that the spec does not use (growth beyond its levels, widths beyond its head) take
    the first choice in `bounds`, so the dict is complete enough for `optuna.trial.FixedTrial`.

    Args:
        arch: The architecture; its levels must share one conv count and block type, and each
            level's filters must be the previous level's times a growth choice.
        train: The training settings.
        bounds: The space; defaults to `SpaceBounds()`.

    Returns:
        Parameter name to value, for `study.enqueue_trial` or `FixedTrial`.

    Raises:
        ValueError: The pair is not reachable by `sample` within `bounds`; the message names the field.
    """
    b = bounds or SpaceBounds()
    _in_range("n_levels", arch.n_levels, b.n_levels)
    _in_choices("base_filters", arch.levels[0].filters, b.base_filters)
    params: dict[str, object] = {"n_levels": arch.n_levels, "base_filters": arch.levels[0].filters}
    for i in range(2, b.n_levels[1] + 1):
        if i > arch.n_levels:
            params[growth_param(i)] = b.growth[0]
            continue
        before, after = arch.levels[i - 2].filters, arch.levels[i - 1].filters
        if after % before or after // before not in b.growth:
            raise ValueError(
                f"params_for: level {i} filters {after} are not level {i - 1}'s {before} times a "
                f"SpaceBounds.growth choice {b.growth}"
            )
        params[growth_param(i)] = after // before
    for attr, field in (("n_convs", "convs_per_level"), ("block", "block")):
        values = {getattr(level, attr) for level in arch.levels}
        if len(values) > 1:
            raise ValueError(f"params_for: levels differ in {attr} {sorted(values)}; sample sets one {field}")
    params["convs_per_level"] = arch.levels[0].n_convs
    _in_range("convs_per_level", arch.levels[0].n_convs, b.convs_per_level)
    params["block"] = arch.levels[0].block
    _in_choices("block", arch.levels[0].block, b.block)
    for field in ("activation", "pooling", "norm", "padding"):
        params[field] = getattr(arch, field)
        _in_choices(field, params[field], getattr(b, field))
    params["head_layers"] = len(arch.head_units)
    _in_range("head_layers", len(arch.head_units), b.head_layers)
    for j in range(1, b.head_layers[1] + 1):
        units = arch.head_units[j - 1] if j <= len(arch.head_units) else b.head_units[0]
        _in_choices("head_units", units, b.head_units)
        params[head_units_param(j)] = units
    _in_range("dropout", arch.dropout, b.dropout)
    _in_range("lr", train.lr, b.lr)
    _in_choices("weight_decay", train.weight_decay, b.weight_decay)
    _in_choices("optimizer", train.optimizer, b.optimizer)
    _in_choices("batch_size", train.batch_size, b.batch_size)
    params.update(
        dropout=arch.dropout,
        lr=train.lr,
        weight_decay=train.weight_decay,
        optimizer=train.optimizer,
        batch_size=train.batch_size,
    )
    return {name: params[name] for name in param_names(b)}


def baseline_params(bounds: SpaceBounds | None = None) -> dict[str, object]:
    """Return the parameters of the seed baseline, for `study.enqueue_trial` as trial 0.

    `sample(FixedTrial(baseline_params()))` returns `(baseline(), baseline_train())`.

    Args:
        bounds: The space; defaults to `SpaceBounds()`, which contains the baseline.

    Raises:
        ValueError: `bounds` exclude the baseline; the message names the field.
    """
    return params_for(baseline(), baseline_train(), bounds)
