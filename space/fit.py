"""Fitting the search space and each sampled spec to the study's input size, so no trial is lost as "impossible".

Two deterministic steps, both functions of the study's settings alone, make every sampled spec runnable:

- `bounds_for_size(bounds, size)`, once per study: clamps `n_levels` to the most levels that run at
  `size` with 'same' padding under every norm (`max_levels`). Only the size (and pooling's floor)
  limits 'same' padding, so every other choice stays in the space.
- `fit_sampled(arch, size)`, once per trial: a 'valid'-padding spec whose maps vanish at `size` runs
  with 'same' padding instead, and the reason is returned for the caller to record on the trial.

Why this keeps the search sound is argued in `space.sample`'s module docstring.
"""

from __future__ import annotations

import dataclasses

from space.baseline import fit_to_size
from space.bounds import SpaceBounds
from space.build import Size, SpecInputError, check_input_size, feature_shapes
from space.spec import NORMS, ArchSpec, LevelSpec


def _runs_with_same_padding(n_levels: int, size: Size) -> bool:
    """Whether `n_levels` levels run at `size` with 'same' padding, whatever the norm.

    With 'same' padding only pooling shrinks the maps, so the block, its depth and the pooling type
    do not matter; one probe per norm asks `check_input_size`, the one place shapes are computed.
    """
    for norm in NORMS:
        probe = ArchSpec(levels=(LevelSpec(1),) * n_levels, padding="same", norm=norm)
        try:
            check_input_size(probe, size)
        except SpecInputError:
            return False
    return True


def max_levels(size: Size) -> int:
    """Return the most levels that run at an input size with 'same' padding under every norm.

    Each level's pooling halves every axis, rounding down; the maps must keep at least one voxel per
    axis, and the last must not be a single voxel, which instance norm cannot normalise in training.
    E.g. 32x64x64 allows 5 levels (the last map is 1x2x2), 16x16x16 allows 3 (2x2x2).

    Args:
        size: Input (D, H, W).

    Returns:
        The number of levels; 0 if not even one level runs.

    Raises:
        ValueError: `size` is not three positive integers.
    """
    feature_shapes(ArchSpec(levels=(LevelSpec(1),)), size)  # raises ValueError for a malformed size
    n = 0
    while _runs_with_same_padding(n + 1, size):
        n += 1
    return n


def bounds_for_size(bounds: SpaceBounds, size: Size) -> SpaceBounds:
    """Return `bounds` with `n_levels` clamped so that every spec they allow runs at `size`.

    Every spec sampled from the result runs at `size` once `fit_sampled` has replaced 'valid' padding
    where it does not fit. Only the upper end of `n_levels` changes (which also drops the growth
    parameters of the levels it removes); every other field is kept. The result depends on
    `bounds` and `size` alone, so every worker of a study derives the same space.

    Args:
        bounds: The space, e.g. `SpaceBounds()` or one read from a TOML file.
        size: Input (D, H, W) of the study.

    Returns:
        The clamped bounds (equal to `bounds` when nothing needs clamping).

    Raises:
        SpecInputError: Not even `bounds.n_levels[0]` levels run at `size`; the message names the size.
        ValueError: `size` is not three positive integers.
    """
    low, high = bounds.n_levels
    most = max_levels(size)
    if most < low:
        runs = {0: "not even one level runs", 1: "at most 1 level runs"}.get(most, f"at most {most} levels run")
        raise SpecInputError(
            f"input {'x'.join(map(str, size))} is too small for SpaceBounds.n_levels low {low}: {runs} there "
            "(each level's pooling halves every axis, and the last map needs more than one voxel); "
            "use a larger input size or lower n_levels"
        )
    if most >= high:
        return bounds
    return dataclasses.replace(bounds, n_levels=(low, most))


def fit_sampled(arch: ArchSpec, size: Size) -> tuple[ArchSpec, str | None]:
    """Return the spec to train for a sampled spec: itself, or its 'same'-padding version, with the reason.

    The same rule as the baseline's fallback (`fit_to_size`), applied to every sampled spec, so the
    caller trains the returned spec and records the returned reason on the trial (the baseline's
    'same' fallback is recorded the same way).

    Args:
        arch: A spec from `space.sample`, drawn from `bounds_for_size(bounds, size)`.
        size: Input (D, H, W) of the study.

    Returns:
        The spec to train, and None if it is `arch` itself, else why 'same' padding replaced 'valid'.

    Raises:
        SpecInputError: Not even the 'same'-padding version runs at `size`, which `bounds_for_size`
            rules out; the message says so.
        ValueError: `size` is not three positive integers.
    """
    try:
        return fit_to_size(arch, size)
    except SpecInputError as error:
        raise SpecInputError(
            f"{error}; sample from bounds_for_size(bounds, {tuple(size)}) so that every sampled spec runs"
        ) from None
