"""The architecture and training specs: frozen dataclasses of primitives, validated when made.

`ArchSpec` is the single contract between sampling (`space.sample`), building (`space.build`), storing
on a trial (a user attr holding `to_dict()`), exporting (`spec.json`) and reporting. It holds no torch
or optuna object, so a stored spec rebuilds the same model anywhere. `TrainSpec` holds the optimiser
settings that the search samples beside it.

The name tables below are the one place each choice is listed. They map a spec name to the MONAI layer
factory name and arguments that `space.blocks` resolves; they stay primitives so that this module needs
neither torch nor MONAI. A name outside a table fails when the spec is made, with the nearest valid
name suggested, never halfway through training.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# name -> (MONAI `Act` factory name, constructor kwargs). Keras is the course's reference, so where
# Keras and torch defaults differ, Keras wins: leaky_relu uses Keras 3's negative slope 0.2 (torch's
# default is 0.01); gelu is exact in both. MONAI has no "silu" entry; its Swish with alpha 1 is SiLU.
ACTIVATIONS: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "relu": ("relu", {}),
        "leaky_relu": ("leakyrelu", {"negative_slope": 0.2}),
        "elu": ("elu", {}),
        "gelu": ("gelu", {}),
        "silu": ("swish", {"alpha": 1.0}),
        "sigmoid": ("sigmoid", {}),
    }
)

# name -> MONAI `Pool` factory name; every level pools with window 2, stride 2, no padding (Keras
# MaxPool3D(2) / AveragePooling3D(2)), so odd sizes round down.
POOLINGS: Mapping[str, str] = MappingProxyType({"max": "max", "avg": "avg"})

# name -> (MONAI `Norm` factory name, kwargs), or None for no normalisation layer at all.
# Batch norm takes Keras's defaults (epsilon 1e-3, momentum 0.99, which is torch momentum 0.01) so the
# baseline trains as the seed does. Instance norm is affine so it has a learnt scale and shift like
# batch norm; it keeps no running statistics.
NORMS: Mapping[str, tuple[str, Mapping[str, Any]] | None] = MappingProxyType(
    {
        "batch": ("batch", {"eps": 1e-3, "momentum": 0.01}),
        "instance": ("instance", {"affine": True}),
        "none": None,
    }
)

# The designs are documented in `space.blocks`, which maps each name to its module class.
BLOCKS: tuple[str, ...] = ("plain", "residual", "residual_inception")

# 'valid' as in Keras (no zero padding: each 3x3x3 convolution trims one voxel from every face);
# 'same' keeps the size through convolutions, so only pooling shrinks the maps.
PADDINGS: tuple[str, ...] = ("valid", "same")

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")

# Upper limits of a spec, so that a corrupt or hostile spec.json is refused when it is read, before any
# network is built. Each is well above what `SpaceBounds.full()` can draw (5 levels from 64 filters, doubling
# to 1024; 3 convolutions per level; 2 hidden layers of up to 512): a spec beyond them was not made here.
# A spec within them can still be too big for a machine at its input size; `space.cost.memory` says how big.
MAX_LEVELS = 8  # an input of at most 256**3 voxels has an axis of at most 256, which halves to 1 in 8 levels
MAX_FILTERS = 2048
MAX_CONVS = 8
MAX_HEAD_LAYERS = 4
MAX_HEAD_UNITS = 4096


def check_choice(owner: str, field: str, value: object, choices: tuple[str, ...] | Mapping[str, Any]) -> str:
    """Return `value` if it is one of `choices`, else raise naming the field and the nearest choice.

    Args:
        owner: The class (or function) whose field is checked, for the message.
        field: The field name, for the message.
        value: The value to check.
        choices: The valid names (a tuple, or a table whose keys are the names).

    Returns:
        The value, unchanged.

    Raises:
        ValueError: `value` is not one of `choices`.
    """
    names = tuple(choices)
    if isinstance(value, str) and value in names:
        return value
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{owner}.{field}: unknown {value!r}{hint} (choose from {', '.join(names)})")


def check_int(owner: str, field: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """Return `value` as an int if it is an integer in [`minimum`, `maximum`], else raise naming the field.

    Args:
        owner: The class whose field is checked, for the message.
        field: The field name, for the message.
        value: The value to check; bools are refused although Python counts them as ints.
        minimum: The smallest valid value.
        maximum: The largest valid value (None: no limit).

    Returns:
        The value as a built-in int (so numpy integers become JSON-ready).

    Raises:
        ValueError: `value` is not an integer, or is outside [`minimum`, `maximum`].
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}.{field}: must be an integer, got {value!r}")
    number = int(value)
    if number < minimum:
        raise ValueError(f"{owner}.{field}: must be >= {minimum}, got {value}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{owner}.{field}: must be <= {maximum:,} (space.spec limit), got {value:,}")
    return number


def check_float(owner: str, field: str, value: object, low: float, high: float, high_open: bool = False) -> float:
    """Return `value` as a float if it is a finite number in [low, high] (or [low, high)), else raise.

    Args:
        owner: The class whose field is checked, for the message.
        field: The field name, for the message.
        value: The value to check; bools are refused.
        low: The smallest valid value.
        high: The largest valid value (excluded when `high_open`).
        high_open: Whether `high` itself is invalid.

    Returns:
        The value as a built-in float.

    Raises:
        ValueError: `value` is not a finite real number in range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value):
        raise ValueError(f"{owner}.{field}: must be a finite number, got {short_repr(value)}")
    bracket = ")" if high_open else "]"
    number = float(value)
    if number < low or number > high or (high_open and number == high):
        raise ValueError(f"{owner}.{field}: must be in [{low}, {high}{bracket}, got {value}")
    return number


def _finite(value: numbers.Real) -> bool:
    """Whether ``value`` is finite as a float: an int too large for one (JSON and TOML allow 10**400) is not."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def short_repr(value: object) -> str:
    """``repr`` of a value for a message, abridged (``reprlib``) so a 400-digit number or a deeply nested list
    still makes a short line."""
    return reprlib.repr(value)


def check_keys(cls: type, data: object) -> dict[str, Any]:
    """Return `data` as a dict after checking that it is a mapping whose keys are fields of `cls`.

    Args:
        cls: A dataclass.
        data: The mapping to check, e.g. parsed JSON or a TOML table.

    Returns:
        A shallow copy of `data`.

    Raises:
        ValueError: `data` is not a mapping, a key is not a field (the nearest field is suggested), or a field
            without a default is missing.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
    names = tuple(f.name for f in dataclasses.fields(cls))
    for key in data:
        check_choice(cls.__name__, "<field name>", key, names)
    for f in dataclasses.fields(cls):  # a required field left out is the mapping's mistake, not a TypeError
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{cls.__name__}.{f.name}: missing")
    return dict(data)


def _jsonable(value: Any) -> Any:
    """Turn tuples (and nested dataclass dicts) into the lists and dicts that JSON holds."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class LevelSpec:
    """One resolution level: a block of convolutions, then pooling, then normalisation.

    Attributes:
        filters: Output channels of every convolution in the level.
        n_convs: Depth of the level in 3x3x3 convolutions (see `space.blocks` for what a depth means
            for each block type); it sets how much 'valid' padding trims: one voxel per face per conv.
        block: One of `BLOCKS`.
    """

    filters: int
    n_convs: int = 1
    block: str = "plain"

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", check_int("LevelSpec", "filters", self.filters, 1, MAX_FILTERS))
        object.__setattr__(self, "n_convs", check_int("LevelSpec", "n_convs", self.n_convs, 1, MAX_CONVS))
        check_choice("LevelSpec", "block", self.block, BLOCKS)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LevelSpec:
        """Make a level from `to_dict()` output; unknown keys raise `ValueError` naming them."""
        return cls(**check_keys(cls, data))


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: levels of convolutions, global average pooling, a dense head, one logit.

    The defaults are the seed's global choices; only `levels` must be given. Lists are accepted for
    the tuple fields and stored as tuples, so a spec is hashable and compares equal after JSON.

    Attributes:
        levels: The levels, input side first; widths follow from each level's `filters`.
        activation: Every hidden activation (convolutions and dense head); one of `ACTIVATIONS`.
        pooling: The downsampling at the end of every level; one of `POOLINGS`.
        norm: The normalisation after each level's pooling; one of `NORMS`.
        padding: Padding of every 3x3x3 convolution; one of `PADDINGS`.
        head_units: Widths of the hidden dense layers between global pooling and the output logit.
        dropout: Drop probability, applied once: after the first hidden dense layer, or straight
            before the output layer when the head has no hidden layer (see `space.build`).
    """

    levels: tuple[LevelSpec, ...]
    activation: str = "relu"
    pooling: str = "max"
    norm: str = "batch"
    padding: str = "valid"
    head_units: tuple[int, ...] = (512,)
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if not isinstance(self.levels, (list, tuple)):
            raise ValueError(f"ArchSpec.levels: must be a tuple of LevelSpec, got {type(self.levels).__name__}")
        object.__setattr__(self, "levels", tuple(self.levels))
        if not self.levels:
            raise ValueError("ArchSpec.levels: need at least one level, got 0 (n_levels must be >= 1)")
        if len(self.levels) > MAX_LEVELS:
            raise ValueError(f"ArchSpec.levels: at most {MAX_LEVELS} levels (space.spec limit), got {len(self.levels)}")
        for i, level in enumerate(self.levels):
            if not isinstance(level, LevelSpec):
                raise ValueError(f"ArchSpec.levels[{i}]: must be a LevelSpec, got {type(level).__name__}")
        check_choice("ArchSpec", "activation", self.activation, ACTIVATIONS)
        check_choice("ArchSpec", "pooling", self.pooling, POOLINGS)
        check_choice("ArchSpec", "norm", self.norm, NORMS)
        check_choice("ArchSpec", "padding", self.padding, PADDINGS)
        if not isinstance(self.head_units, (list, tuple)):
            raise ValueError(f"ArchSpec.head_units: must be a tuple of ints, got {self.head_units!r}")
        if len(self.head_units) > MAX_HEAD_LAYERS:
            raise ValueError(f"ArchSpec.head_units: at most {MAX_HEAD_LAYERS} hidden layers (space.spec limit), "
                             f"got {len(self.head_units)}")
        units = tuple(check_int("ArchSpec", f"head_units[{i}]", u, 1, MAX_HEAD_UNITS)
                      for i, u in enumerate(self.head_units))
        object.__setattr__(self, "head_units", units)
        object.__setattr__(self, "dropout", check_float("ArchSpec", "dropout", self.dropout, 0.0, 1.0, True))

    @property
    def n_levels(self) -> int:
        """Number of levels."""
        return len(self.levels)

    @property
    def filters(self) -> tuple[int, ...]:
        """Output channels of each level, input side first."""
        return tuple(level.filters for level in self.levels)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict (tuples become lists, levels become dicts)."""
        return _jsonable(dataclasses.asdict(self))

    def describe(self) -> str:
        """The architecture in words (:func:`describe_spec`)."""
        return describe_spec(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        """Make a spec from `to_dict()` output (or parsed JSON).

        Args:
            data: Field name to value; `levels` items may be dicts or `LevelSpec`.

        Returns:
            The spec, equal to the one that produced `data`.

        Raises:
            ValueError: A key is not a field, `levels` is missing, or a value is invalid.
        """
        fields = check_keys(cls, data)
        if "levels" not in fields:
            raise ValueError("ArchSpec.levels: missing")
        levels = fields["levels"]
        if not isinstance(levels, (list, tuple)):
            raise ValueError(f"ArchSpec.levels: must be a list of levels, got {type(levels).__name__}")
        parsed = []
        for i, level in enumerate(levels):
            if isinstance(level, LevelSpec):
                parsed.append(level)
                continue
            try:
                parsed.append(LevelSpec.from_dict(level))
            except ValueError as error:
                raise ValueError(f"ArchSpec.levels[{i}]: {error}") from None
        fields["levels"] = tuple(parsed)
        return cls(**fields)

    def to_json(self, indent: int | None = 2) -> str:
        """Return the spec as JSON text (what `spec.json` and trial user attrs hold)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        """Parse `to_json()` output back into an equal spec."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class TrainSpec:
    """Optimiser settings sampled with the architecture. Defaults are the seed's.

    Epochs are not here: they are a property of the run (`--epochs`), shared by every trial.

    Attributes:
        lr: Learning rate.
        weight_decay: Weight decay (L2 for adam and sgd, decoupled for adamw).
        optimizer: One of `OPTIMIZERS`.
        batch_size: Scans per step.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"
    batch_size: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", check_float("TrainSpec", "lr", self.lr, 0.0, math.inf))
        if self.lr == 0.0:
            raise ValueError("TrainSpec.lr: must be > 0, got 0.0")
        wd = check_float("TrainSpec", "weight_decay", self.weight_decay, 0.0, math.inf)
        object.__setattr__(self, "weight_decay", wd)
        check_choice("TrainSpec", "optimizer", self.optimizer, OPTIMIZERS)
        object.__setattr__(self, "batch_size", check_int("TrainSpec", "batch_size", self.batch_size, 1))

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainSpec:
        """Make a training spec from `to_dict()` output; unknown keys raise `ValueError` naming them."""
        return cls(**check_keys(cls, data))

    def to_json(self, indent: int | None = 2) -> str:
        """Return the spec as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        """Parse `to_json()` output back into an equal spec."""
        return cls.from_dict(json.loads(text))


def describe_spec(spec: Mapping[str, Any] | None) -> str:
    """A spec (as `ArchSpec.to_dict()` stores it on a trial) in words, `-` for none.

    For example `4 levels 64-64-128-256, 1x plain, relu, max pool, batch norm, valid pad, head 512,
    dropout 0.30`. It reads the stored dict, not an `ArchSpec`, so a trial's spec can be shown as stored.
    """
    if not spec:
        return "-"
    levels = spec["levels"]
    widths = "-".join(str(level["filters"]) for level in levels)
    convs = {level["n_convs"] for level in levels}
    blocks = {level["block"] for level in levels}
    head = "-".join(map(str, spec.get("head_units", ()))) or "none"
    conv_text = f"{'/'.join(map(str, sorted(convs)))}x {'/'.join(sorted(blocks)).replace('_', '-')}"
    return (f"{len(levels)} levels {widths}, {conv_text}, {spec['activation']}, {spec['pooling']} pool, "
            f"{spec['norm']} norm, {spec['padding']} pad, head {head}, dropout {spec['dropout']:.2f}")
