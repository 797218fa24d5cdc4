"""Fitting the search space and each sampled spec to the study's input size, so no trial is lost as "impossible".

Two deterministic steps, both functions of the study's settings alone, make every sampled spec runnable:

- `bounds_for_size(bounds, size)`, once per study: clamps `n_levels` to the most levels that run at
  `size` with 'same' padding under every norm (`max_levels`). Only the size (and pooling's floor)
  limits 'same' padding, so every other choice stays in the space.
- `fit_sampled(arch, size)`, once per trial: a 'valid'-padding spec whose maps vanish at `size` runs
  with 'same' padding instead, and the reason is returned for the caller to record on the trial.
- `fit_cost(arch, size, max_gflops)`, once per trial of a study with a cost cap: a spec above the cap
  trains with every level's filters halved (down to `MIN_FILTERS`), then with fewer convolutions per
  level, until it fits; the reason is returned for the caller to record, like the padding fallback.

Why this keeps the search sound is argued in `space.sample`'s module docstring.
"""

from __future__ import annotations

import dataclasses

from space.baseline import fit_to_size
from space.bounds import SpaceBounds
from space.build import Size, SpecInputError, check_input_size, feature_shapes
from space.cost import cost
from space.spec import NORMS, ArchSpec, LevelSpec

# The narrowest first level the cost fit halves down to: the space's smallest base width.
MIN_FILTERS = 8


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


def _halved(arch: ArchSpec) -> ArchSpec | None:
    """Every level's filters halved, the widths' ratios kept; None once the first level is at MIN_FILTERS."""
    if arch.levels[0].filters // 2 < MIN_FILTERS:
        return None
    return dataclasses.replace(arch, levels=tuple(dataclasses.replace(level, filters=max(1, level.filters // 2))
                                                  for level in arch.levels))


def _fewer_convs(arch: ArchSpec) -> ArchSpec | None:
    """One convolution less in every level that has more than one; None when every level has one."""
    if all(level.n_convs == 1 for level in arch.levels):
        return None
    return dataclasses.replace(arch, levels=tuple(dataclasses.replace(level, n_convs=max(1, level.n_convs - 1))
                                                  for level in arch.levels))


def _widths(arch: ArchSpec) -> str:
    return "-".join(str(level.filters) for level in arch.levels)


def fit_cost(arch: ArchSpec, size: Size, max_gflops: float | None) -> tuple[ArchSpec, str | None]:
    """Return the spec to train under a cost cap: itself, or a narrower (then shallower-per-level) version.

    A sampled spec above the cap would train nothing (a quarter to a half of a 50-trial study's draws at
    the CPU default), and a pruned trial teaches the sampler only that its region is expensive. Instead,
    as with the padding fallback, one deterministic rule makes it affordable: halve every level's filters
    (the depth, block, convolution count, growth pattern and head are kept) until the spec is at or below
    ``max_gflops`` or the first level is down to `MIN_FILTERS`, then take one convolution per level off
    at a time. The same parameters always train the same spec, so the sampler still models a function of
    the recorded parameters; a width parameter then reads "this wide where the cap allows it", and its
    importance measures that. The caller records the returned reason on the trial.

    Args:
        arch: The spec to train (after `fit_sampled`).
        size: Input (D, H, W).
        max_gflops: The cap in forward GFLOPs per sample; None or 0 means no cap.

    Returns:
        The spec to train and None if it is `arch` itself, else a sentence saying what was changed. A spec
        that is still above the cap after every step (not reachable from the default space at any size the
        space allows; see the tests) is returned as far as it shrank, with a reason that says so, for the
        caller to prune.
    """
    if not max_gflops:
        return arch, None
    before = cost(arch, size).gflops
    if before <= max_gflops:
        return arch, None
    fitted, gflops, halvings, dropped = arch, before, 0, 0
    while gflops > max_gflops:
        smaller = _halved(fitted)
        if smaller is not None:
            halvings += 1
        else:
            smaller = _fewer_convs(fitted)
            if smaller is None:
                break
            dropped += 1
        fitted, gflops = smaller, cost(smaller, size).gflops
    steps = []
    if halvings:
        steps.append(f"filters halved {'once' if halvings == 1 else f'{halvings} times'} "
                     f"({_widths(arch)} -> {_widths(fitted)})")
    if dropped:
        steps.append(f"{dropped} convolution{'s' if dropped > 1 else ''} per level fewer "
                     f"({arch.levels[0].n_convs} -> {fitted.levels[0].n_convs})")
    still = "" if gflops <= max_gflops else ", still above the cap"
    return fitted, (f"{', then '.join(steps) or 'unchanged'} to fit the cost cap of {max_gflops:g} GFLOPs/sample: "
                    f"{before:.2f} -> {gflops:.2f}{still}")
