"""The seed baseline (the Keras example's model) and the course's six modifications, as specs.

The seed is the Keras example "3D image classification from CT scans": four levels of
Conv3D(kernel 3, 'valid', ReLU) -> MaxPool3D(2) -> BatchNormalization with 64, 64, 128, 256 filters,
GlobalAveragePooling3D, Dense(512, ReLU), Dropout(0.3), Dense(1) (a logit here; the sigmoid lives in
the loss), trained with Adam at learning rate 1e-4 and batch size 2. Keras reports 1,352,897
parameters for it: 1,351,873 trainable plus 1,024 non-trainable BatchNorm moving means and variances
(see `space.cost`).

Each modification is a function `ArchSpec -> ArchSpec` that changes one named thing and nothing else:

- `dense100`: appends a hidden Dense(100) (with the spec's activation) just before the output.
- `double_conv`: doubles every level's convolutions (the seed's one becomes two, same filters).
- `sigmoid`: every hidden activation (convolutions and dense head) becomes a sigmoid.
- `avgpool`: max pooling becomes average pooling.
- `residual`: every level's block becomes a residual block (see `space.blocks`).
- `residual_inception`: every level's block becomes a residual-inception block.

`apply_modifications` combines them; the result does not depend on the order of the names, because
each modification changes a different field. `residual` and `residual_inception` both replace the
block, so asking for both is an error rather than an order-dependent result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from space.build import Size, SpecInputError, check_input_size
from space.spec import ArchSpec, LevelSpec, TrainSpec, check_choice


def baseline() -> ArchSpec:
    """Return the seed's architecture exactly (see the module docstring)."""
    return ArchSpec(
        levels=(LevelSpec(64), LevelSpec(64), LevelSpec(128), LevelSpec(256)),
        activation="relu",
        pooling="max",
        norm="batch",
        padding="valid",
        head_units=(512,),
        dropout=0.3,
    )


def baseline_train() -> TrainSpec:
    """Return the seed's training settings: Adam, learning rate 1e-4, no weight decay, batch size 2."""
    return TrainSpec(lr=1e-4, weight_decay=0.0, optimizer="adam", batch_size=2)


def dense100(spec: ArchSpec) -> ArchSpec:
    """Append a hidden dense layer of 100 units before the output."""
    return dataclasses.replace(spec, head_units=(*spec.head_units, 100))


def double_conv(spec: ArchSpec) -> ArchSpec:
    """Double the convolutions of every level."""
    levels = tuple(dataclasses.replace(level, n_convs=2 * level.n_convs) for level in spec.levels)
    return dataclasses.replace(spec, levels=levels)


def sigmoid(spec: ArchSpec) -> ArchSpec:
    """Make every hidden activation a sigmoid."""
    return dataclasses.replace(spec, activation="sigmoid")


def avgpool(spec: ArchSpec) -> ArchSpec:
    """Make every level pool by averaging instead of taking the maximum."""
    return dataclasses.replace(spec, pooling="avg")


def _with_block(spec: ArchSpec, block: str) -> ArchSpec:
    levels = tuple(dataclasses.replace(level, block=block) for level in spec.levels)
    return dataclasses.replace(spec, levels=levels)


def residual(spec: ArchSpec) -> ArchSpec:
    """Replace every level's convolutions with a residual block of the same depth."""
    return _with_block(spec, "residual")


def residual_inception(spec: ArchSpec) -> ArchSpec:
    """Replace every level's convolutions with a residual-inception block of the same depth."""
    return _with_block(spec, "residual_inception")


# Name -> modification, in the course's order (also the order `apply_modifications` applies them).
MODIFICATIONS: dict[str, Callable[[ArchSpec], ArchSpec]] = {
    "dense100": dense100,
    "double_conv": double_conv,
    "sigmoid": sigmoid,
    "avgpool": avgpool,
    "residual": residual,
    "residual_inception": residual_inception,
}

# Modifications that set the same field, so combining them would make the order matter.
_EXCLUSIVE = frozenset({"residual", "residual_inception"})


def apply_modifications(spec: ArchSpec, names: Iterable[str]) -> ArchSpec:
    """Apply named modifications to a spec, in `MODIFICATIONS` order whatever the order given.

    Args:
        spec: The spec to modify, e.g. `baseline()`.
        names: Modification names from `MODIFICATIONS`; may be empty.

    Returns:
        The modified spec.

    Raises:
        ValueError: A name is unknown (the nearest is suggested) or repeated, or both block
            replacements are asked for.
    """
    names = [check_choice("apply_modifications", "names", name, MODIFICATIONS) for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"apply_modifications.names: repeated {', '.join(repeated)}")
    if set(names) >= _EXCLUSIVE:
        raise ValueError(
            "apply_modifications.names: residual and residual_inception both replace the convolutions; "
            "pick one"
        )
    for name, modify in MODIFICATIONS.items():
        if name in names:
            spec = modify(spec)
    return spec


def variants(base: ArchSpec | None = None) -> dict[str, ArchSpec]:
    """Return the baseline and each single modification of it, keyed `baseline`, then `MODIFICATIONS` order.

    Args:
        base: The spec to modify; defaults to `baseline()` (pass `same_padding(baseline())` for small
            inputs).
    """
    base = base or baseline()
    return {"baseline": base, **{name: modify(base) for name, modify in MODIFICATIONS.items()}}


def same_padding(spec: ArchSpec) -> ArchSpec:
    """Return the spec with 'same' padding, so convolutions keep the map size and only pooling shrinks it."""
    return dataclasses.replace(spec, padding="same")


def fit_to_size(spec: ArchSpec, size: Size) -> tuple[ArchSpec, str | None]:
    """Return a spec that runs at `size`: the spec itself, or its 'same'-padding version, with the reason.

    The search uses this for the baseline and its variants when the input is smaller than the seed's:
    it trains the returned spec and records the returned reason on the trial.

    Args:
        spec: The spec to run.
        size: Input (D, H, W).

    Returns:
        The spec to run, and None if it is `spec` itself, else why 'same' padding replaced 'valid'.

    Raises:
        SpecInputError: Neither the spec nor its 'same'-padding version runs at `size`.
    """
    try:
        check_input_size(spec, size)
    except SpecInputError as error:
        if spec.padding == "same":
            raise
        fitted = same_padding(spec)
        check_input_size(fitted, size)
        return fitted, f"'same' padding, as {error}"
    return spec, None
