"""Sampling a spec from an Optuna trial: the only Optuna-aware code in `space`.

`sample(trial, bounds)` reads flat, stable parameters from the trial and returns an
`(ArchSpec, TrainSpec)` pair; building happens later, without Optuna (sample, then build).
`params_for(arch, train)` is its inverse: the parameters for which `sample(FixedTrial(params))` returns
that pair, which is what `study.enqueue_trial` needs for the baseline and the course's variants.

Parameters (the Optuna names; never rename one inside an existing study). The defaults are
`SpaceBounds()`, sized for a 50-trial CPU study (its docstring says why each is narrower than the
whole space); `SpaceBounds.full()` adds what the last column lists. "int" ranges include both ends:

=================  ===========  ==========================================  ==================
name               kind         default range or choices                    full() adds
=================  ===========  ==========================================  ==================
n_levels           int          2 .. 5, clamped to the input size (below)
base_filters       categorical  8, 16, 32, 64 (the first level's filters)
level2_growth ..   categorical  1, 2 (filters of level i = filters of
level5_growth                   level i-1 x growth); one parameter per
                                level 2 .. max n_levels
convs_per_level    int          1 .. 3 (every level)
block              categorical  plain, residual, residual_inception
                                (every level)
activation         categorical  relu, leaky_relu, elu, gelu, silu           sigmoid
pooling            categorical  max, avg
norm               categorical  batch, instance, none
padding            categorical  valid, same ('valid' where it fits, below)
head_layers        int          0 .. 2 (hidden dense layers)
head1_units,       categorical  64, 100, 128, 256, 512; one parameter per
head2_units                     layer up to max head_layers
dropout            float        0.0 .. 0.5 (uniform)
lr                 float        1e-4 .. 3e-3 (log scale)                    1e-5 .. 1e-2
weight_decay       categorical  0, 1e-5, 1e-4, 1e-3                         1e-2
optimizer          categorical  adam, adamw                                 sgd
batch_size         categorical  2                                           4, 8
=================  ===========  ==========================================  ==================

Every parameter is sampled in every trial, even where the spec does not use it (growth of levels
beyond `n_levels`, widths of head layers beyond `head_layers`). Optuna's importance evaluators assess
only parameters present in all completed trials, so a conditional parameter would silently drop out of
the importance plot; and the independent TPE sampler models each parameter on its own, so an unused
value only adds a little noise to that parameter's model and costs nothing else. Samplers that model
parameters jointly (multivariate TPE, CMA-ES, GP) do so over the intersection of all trials' search
spaces, which with unconditional parameters is the whole space. For the same reason
the convolution count and block type are global, not per level: one `block` parameter answers "does
the block type matter?" directly, where five per-level ones would split the evidence five ways.
Growth must stay per level, since the seed's widths (64, 64, 128, 256) grow unevenly.

Categorical choices hold powers of two and the course's unit counts (100, 512); an ordered int range
would let TPE interpolate, but would also propose widths such as 37 that nobody compares by hand.

Fitting to the input size (`space.fit`). 'valid' padding trims two voxels per convolution per axis,
so at a small input many specs cannot run; pruning them as "impossible" wasted about a third of the
trials at 32x64x64. Two deterministic steps remove that waste without changing what a parameter means:

- `bounds_for_size(bounds, size)` clamps `n_levels` to the most levels that run at the size with
  'same' padding under every norm. It is fixed for the study, so TPE simply never proposes a level
  count that cannot run, and no parameter becomes conditional on another.
- `fit_sampled(arch, size)` trains a 'valid' spec whose maps vanish at the size with 'same' padding
  instead, and the caller records the reason on the trial, as it does for the baseline's fallback.

The objective stays a function of the recorded parameters: the same parameters at the same size
always train the same spec, so TPE models a well-defined (noisy) function of its inputs, and the
importance evaluators see every parameter in every trial. `padding` then reads as "'valid' where it
fits, else 'same'", and its importance measures exactly that choice. The alternatives are worse:
pruning tells TPE that 'valid' (and deep nets) score worst, for a reason unrelated to learning;
sampling `padding` only where 'valid' fits makes it conditional, which drops it from the importance
analysis; and re-drawing until a spec fits makes the trained spec depend on more than the recorded
parameters.
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
