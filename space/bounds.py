"""The search space's bounds: the ranges and choices that `space.sample` may draw from.

Each field bounds the Optuna parameter of the same name (see `space.sample`), except `growth`, which
bounds every `level<i>_growth`, and `head_units`, which bounds every `head<j>_units`. A range is a
(low, high) pair, both included; a choice field is a tuple of allowed values.

The defaults are sized for a study of about 50 trials of a few epochs each on CPUs: they leave out
choices that such a study can only waste trials on (see `SpaceBounds`), and contain the seed
baseline, so the search can enqueue it as trial 0. `SpaceBounds.full()` is the whole space that the
name tables allow; a TOML file (`SpaceBounds.from_dict`) or `dataclasses.replace` narrows or widens
either. `space.fit.bounds_for_size` then clamps the number of levels to what the study's input size
can run.

Each field is checked on its own first (its type, its `space.spec` limits, at most `MAX_CHOICES` choices),
and only then the limit that combines fields (the widest level), so that any value is refused quickly.

Changing the bounds changes the distributions (and, for `n_levels` and `head_layers`, the set of
parameter names) that a study records, so keep one set of bounds per study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from space.spec import (
    ACTIVATIONS,
    BLOCKS,
    MAX_CONVS,
    MAX_FILTERS,
    MAX_HEAD_LAYERS,
    MAX_HEAD_UNITS,
    MAX_LEVELS,
    NORMS,
    OPTIMIZERS,
    PADDINGS,
    POOLINGS,
    check_choice,
    check_float,
    check_int,
    check_keys,
    short_repr,
)

_OWNER = "SpaceBounds"
MAX_CHOICES = 64  # entries of one choice field: every name table is far smaller, and so is any sensible int list
# A batch of 1024 scans at the seed's 64x128x128 is 4 GiB of input alone; no data set here has that many scans.
MAX_BATCH_SIZE = 1024


def _at_most(field: str, what: str, value: int, limit: int, source: str = "space.spec") -> None:
    if value > limit:
        raise ValueError(f"{_OWNER}.{field}: {what} {value}, above the {source} limit of {limit}")


def _int_range(field: str, value: object, minimum: int, maximum: int) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{_OWNER}.{field}: must be a (low, high) pair, got {short_repr(value)}")
    low = check_int(_OWNER, f"{field}[0]", value[0], minimum)
    high = check_int(_OWNER, f"{field}[1]", value[1], minimum)
    if low > high:
        raise ValueError(f"{_OWNER}.{field}: low {low} is above high {high}")
    _at_most(field, "high", high, maximum)
    return low, high


def _float_range(field: str, value: object, low_limit: float, high_limit: float, high_open: bool) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{_OWNER}.{field}: must be a (low, high) pair, got {short_repr(value)}")
    low = check_float(_OWNER, f"{field}[0]", value[0], low_limit, high_limit, high_open)
    high = check_float(_OWNER, f"{field}[1]", value[1], low_limit, high_limit, high_open)
    if low > high:
        raise ValueError(f"{_OWNER}.{field}: low {low} is above high {high}")
    return low, high


def _choices(field: str, value: object, check) -> tuple:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{_OWNER}.{field}: must be a non-empty tuple of choices, got {short_repr(value)}")
    if len(value) > MAX_CHOICES:
        raise ValueError(f"{_OWNER}.{field}: {len(value):,} choices, more than the {MAX_CHOICES} a field may hold")
    items = tuple(check(f"{field}[{i}]", item) for i, item in enumerate(value))
    if len(set(items)) != len(items):
        raise ValueError(f"{_OWNER}.{field}: has repeated choices {items}")
    return items


def _name_choices(field: str, value: object, table) -> tuple[str, ...]:
    return _choices(field, value, lambda _, item: check_choice(_OWNER, field, item, table))


def _int_choices(field: str, value: object, minimum: int, maximum: int,
                 source: str = "space.spec") -> tuple[int, ...]:
    items = _choices(field, value, lambda name, item: check_int(_OWNER, name, item, minimum))
    _at_most(field, "choice", max(items), maximum, source)
    return items


def _check_widest_level(checked: dict) -> None:
    """Refuse bounds that can draw a level wider than `space.spec` allows, when the bounds are read (a --space
    file) rather than halfway through a study, when the first such draw fails.

    It combines fields, so it runs after each field is checked against its own limits: an unchecked
    ``n_levels`` of 10**20 would make ``growth ** (n_levels - 1)`` run for minutes and exhaust memory.
    """
    levels = checked["n_levels"][1]
    widest = max(checked["base_filters"]) * max(checked["growth"]) ** (levels - 1)
    if widest > MAX_FILTERS:
        raise ValueError(f"{_OWNER}.base_filters: the widest last level (base_filters x growth ** (n_levels - 1)) "
                         f"would have {widest} filters, above the space.spec limit of {MAX_FILTERS}")


@dataclass(frozen=True)
class SpaceBounds:
    """Ranges and choices for every sampled parameter; validated when made.

    The defaults suit a 50-trial CPU study whose trials train a few epochs each; where they are
    narrower than `full()`, the reason is:

    - `batch_size` is 2 only: the trial budget is counted in epochs, and on CPUs the time per sample
      is about the same at batch 2 and 8 (measured on a 16-32-64 net: 45 vs 50 ms/sample), so batch 8
      got a quarter of batch 2's optimiser steps in the same time; that is a bias against it, not a
      choice the search can make fairly.
    - `optimizer` is adam or adamw: sgd needs a different learning-rate range and a schedule to be
      competitive within a few epochs.
    - `lr` is 1e-4 .. 3e-3 (log scale), not three decades: at 1e-5 a net cannot learn in a few epochs,
      and at 1e-2 Adam diverges, so trials there were wasted.
    - `activation` leaves out sigmoid, which mostly fails to train in a few epochs; the course's
      sigmoid modification is assessed by `search.ablate` instead, and `full()` still holds it.
    - `weight_decay` stops at 1e-3: a trial of a few epochs is limited by underfitting more than by
      overfitting, so the strongest penalty is left to `full()`.
    - `norm` is batch norm only, measured on a 50-trial CPU study (benchmarks/RESULTS.md): instance norm
      scored chance (0.50) in every trial, as it takes away each scan's HU level, the strongest single
      sign of involvement; specs without normalisation took the top cross-validation scores while their
      training loss stayed at chance (ln 2), did not improve with twice the scans, and the model shipped
      from them was significantly worse than the seed baseline on fresh scans, twice.

    The rest span the whole space: 2 .. 5 levels of 1 .. 3 convolutions, every block, pooling and
    padding, 0 .. 2 hidden dense layers, dropout 0 .. 0.5. The seed baseline lies inside them.

    Attributes:
        n_levels: Range of the number of levels.
        base_filters: Choices for the first level's filters.
        growth: Choices for each later level's filters as a multiple of the level before.
        convs_per_level: Range of 3x3x3 convolutions per level (the same for every level).
        block: Block types.
        activation: Activations.
        pooling: Poolings.
        norm: Normalisations.
        padding: Paddings.
        head_layers: Range of the number of hidden dense layers.
        head_units: Choices for each hidden dense layer's width.
        dropout: Range of the dropout probability (uniform).
        lr: Range of the learning rate (sampled on a log scale).
        weight_decay: Choices for weight decay; a choice, not a log range, because 0 must be reachable.
        optimizer: Optimisers.
        batch_size: Batch sizes.
    """

    n_levels: tuple[int, int] = (2, 5)
    base_filters: tuple[int, ...] = (8, 16, 32, 64)
    growth: tuple[int, ...] = (1, 2)
    convs_per_level: tuple[int, int] = (1, 3)
    block: tuple[str, ...] = BLOCKS
    activation: tuple[str, ...] = ("relu", "leaky_relu", "elu", "gelu", "silu")
    pooling: tuple[str, ...] = tuple(POOLINGS)
    norm: tuple[str, ...] = ("batch",)
    padding: tuple[str, ...] = PADDINGS
    head_layers: tuple[int, int] = (0, 2)
    head_units: tuple[int, ...] = (64, 100, 128, 256, 512)
    dropout: tuple[float, float] = (0.0, 0.5)
    lr: tuple[float, float] = (1e-4, 3e-3)
    weight_decay: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)
    optimizer: tuple[str, ...] = ("adam", "adamw")
    batch_size: tuple[int, ...] = (2,)

    def __post_init__(self) -> None:
        checked = {
            "n_levels": _int_range("n_levels", self.n_levels, 1, MAX_LEVELS),
            "base_filters": _int_choices("base_filters", self.base_filters, 1, MAX_FILTERS),
            "growth": _int_choices("growth", self.growth, 1, MAX_FILTERS),
            "convs_per_level": _int_range("convs_per_level", self.convs_per_level, 1, MAX_CONVS),
            "block": _name_choices("block", self.block, BLOCKS),
            "activation": _name_choices("activation", self.activation, ACTIVATIONS),
            "pooling": _name_choices("pooling", self.pooling, POOLINGS),
            "norm": _name_choices("norm", self.norm, NORMS),
            "padding": _name_choices("padding", self.padding, PADDINGS),
            "head_layers": _int_range("head_layers", self.head_layers, 0, MAX_HEAD_LAYERS),
            "head_units": _int_choices("head_units", self.head_units, 1, MAX_HEAD_UNITS),
            "dropout": _float_range("dropout", self.dropout, 0.0, 1.0, True),
            "lr": _float_range("lr", self.lr, 0.0, float("inf"), False),
            "weight_decay": _choices(
                "weight_decay",
                self.weight_decay,
                lambda name, item: check_float(_OWNER, name, item, 0.0, float("inf")),
            ),
            "optimizer": _name_choices("optimizer", self.optimizer, OPTIMIZERS),
            "batch_size": _int_choices("batch_size", self.batch_size, 1, MAX_BATCH_SIZE, _OWNER),
        }
        if checked["lr"][0] <= 0.0:
            raise ValueError(f"{_OWNER}.lr: low must be > 0 for a log scale, got {checked['lr'][0]}")
        _check_widest_level(checked)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def full(cls) -> SpaceBounds:
        """Return the whole space: every name in the tables, and the widest ranges this project searches.

        That is the defaults plus sigmoid, sgd, learning rates 1e-5 .. 1e-2, weight decay 1e-2, batch
        sizes 4 and 8, instance norm and no normalisation; for studies with more trials, epochs or a GPU.
        """
        return cls(
            activation=tuple(ACTIVATIONS),
            norm=tuple(NORMS),
            lr=(1e-5, 1e-2),
            weight_decay=(0.0, 1e-5, 1e-4, 1e-3, 1e-2),
            optimizer=OPTIMIZERS,
            batch_size=(2, 4, 8),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the bounds as a JSON- and TOML-ready dict (tuples become lists)."""
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpaceBounds:
        """Make bounds from a (partial) mapping, e.g. a TOML table; missing fields keep their defaults.

        Raises:
            ValueError: A key is not a field (the nearest field is suggested), or a value is invalid.
        """
        return cls(**check_keys(cls, data))
