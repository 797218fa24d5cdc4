"""Building a torch model from an `ArchSpec`, and checking an input size against a spec before training.

The model is `features -> head`:

- `features.level<i>`: `block -> pool -> norm` per level (see `space.blocks` for the block designs;
  'none' norm means the level has no normalisation layer at all).
- `head`: global average pooling (Keras's GlobalAveragePooling3D), then per hidden width
  `fc<j> -> act<j>`, with one `drop` after the first hidden layer (the seed's
  Dense(512) -> Dropout(0.3) -> Dense(1)), then `out`, a linear layer to one logit. With no hidden
  layer, `drop` sits straight before `out`. Dropout appears once, not after every hidden layer, so the
  course's `dense100` modification (Dense(100) inserted before the output) adds exactly one layer.

`forward` maps (B, C, D, H, W) to (B,) logits: the sigmoid lives in the loss (`BCEWithLogitsLoss`).
For an ordinal task of K > 2 grades (`build(spec, grades=K)`), `out` stays the one-logit layer and
gives each scan one severity score z, and `head.cuts` (:class:`OrdinalCuts`) turns it into K-1
cumulative logits z + b_k for "grade >= k" (k = 1..K-1), with b_1 > b_2 > ... by construction: the
proportional-odds (cumulative logit) model, CORAL's rank-consistent head (Cao, Mirjalili and Raschka
2020) with its biases kept ordered. P(grade >= k) then falls with k for every scan, so the grade
probabilities P(grade >= k) - P(grade >= k+1) are a proper distribution, and every "grade >= k" shares
the ranking of z. `forward` returns (B, K-1) logits then; K = 2 is the binary model, unchanged.
Widths follow from the running channel count; nothing is hard-coded. Convolution and dense weights
start as Keras's do (Glorot uniform, zero bias), so the baseline starts as the seed does; batch norm
uses Keras's epsilon and momentum (see `space.spec.NORMS`).

Sizes are (D, H, W). `check_input_size` rejects a spec whose maps vanish at a size, before any tensor
is allocated, so the search prunes it with the reason instead of crashing mid-trial.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict

import torch
from torch import nn

from space.blocks import BLOCK_TYPES, KERNEL_SIZE, make_act, make_norm, make_pool
from space.spec import ArchSpec, LevelSpec

Size = tuple[int, int, int]


class SpecInputError(ValueError):
    """A spec cannot run at an input size: a feature map would vanish (or be too small to normalise)."""


# Non-decreasing activations: for these, max pooling commutes with the activation (see `Level`).
MONOTONE_ACTIVATIONS = frozenset({"relu", "leaky_relu", "elu", "sigmoid"})


def pools_before_act(spec: ArchSpec) -> bool:
    """Whether `spec`'s levels run `block -> max pool -> act`, the exact and cheaper order of the seed's."""
    return spec.pooling == "max" and spec.activation in MONOTONE_ACTIVATIONS


def last_block_name(spec: ArchSpec) -> str:
    """The qualified name of the last level's block in `build(spec)`: the layer saliency maps read.

    Every level's convolutions sit in `features.level<i>.block`, whatever the block design, so this is
    the one name to hand a Grad-CAM for any spec. Build with `pool_first=False` to read it after its
    activation (with the fast order, a monotone activation follows the pooling instead).
    """
    return f"features.level{len(spec.levels)}.block"


class Level(nn.Sequential):
    """One level: `block -> pool -> norm` (norm omitted for 'none').

    For max pooling and a non-decreasing activation, max(act(x)) = act(max(x)) for every window, so the
    block's last activation moves after the pooling (`block -> pool -> act -> norm`): the same outputs
    and gradients (tests/space/test_build.py compares them), with the activation's forward and backward
    on an eight times smaller tensor. At the seed's 64x128x128 the first level's ReLU was about a quarter
    of a float32 training step on the CPU (benchmarks/RESULTS.md). GELU and SiLU dip below zero, so they
    keep the literal order, as does average pooling. `pool_first=False` forces the literal order.
    Activations hold no weights: both orders have the same state dict.
    """

    def __init__(self, in_channels: int, level: LevelSpec, spec: ArchSpec, pool_first: bool = True):
        block_type = BLOCK_TYPES[level.block]
        moved = pool_first and pools_before_act(spec)
        layers = OrderedDict(
            block=block_type(in_channels, level.filters, level.n_convs, spec.activation, spec.padding,
                             final_act=not moved),
            pool=make_pool(spec.pooling),
        )
        if moved:
            layers["act"] = make_act(spec.activation)
        norm = make_norm(spec.norm, level.filters)
        if norm is not None:
            layers["norm"] = norm
        super().__init__(layers)


class OrdinalCuts(nn.Module):
    """K-1 ordered cutpoints: (B, 1) severity scores -> (B, K-1) logits of "grade >= k", k = 1..K-1.

    ``b_1 = first`` and ``b_k = b_(k-1) - softplus(gaps_(k-1))``, so the cutpoints fall strictly with k
    for any weights (CORAL's biases, kept ordered by the parametrisation instead of hoped for). They
    start at ``0, -0.69, -1.39, ...`` (softplus(0) = ln 2): spread, so each threshold has its own
    gradient from the first step.
    """

    def __init__(self, n_cuts: int):
        super().__init__()
        if n_cuts < 1:
            raise ValueError(f"OrdinalCuts: needs at least one cutpoint, got {n_cuts}")
        self.first = nn.Parameter(torch.zeros(1))
        self.gaps = nn.Parameter(torch.zeros(n_cuts - 1))

    def cutpoints(self) -> torch.Tensor:
        """b_1 > b_2 > ... > b_(K-1), shape (K-1,)."""
        steps = torch.cat([self.first, -nn.functional.softplus(self.gaps)])
        return torch.cumsum(steps, dim=0)

    def forward(self, score: torch.Tensor) -> torch.Tensor:
        return score.reshape(-1, 1) + self.cutpoints().to(score.dtype)


def grade_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K-1) cumulative logits -> (B, K) probabilities of grades 0..K-1 (each row sums to 1)."""
    above = torch.sigmoid(logits.float())
    ones = torch.ones_like(above[:, :1])
    zeros = torch.zeros_like(above[:, :1])
    at_least = torch.cat([ones, above, zeros], dim=1)
    return (at_least[:, :-1] - at_least[:, 1:]).clamp_min(0.0)


class SpecNet(nn.Module):
    """A 3D CNN built from an `ArchSpec`: (B, C, D, H, W) -> (B,) logits.

    Attributes:
        spec: The spec it was built from (export it beside the weights to rebuild the model).
        features: The levels, `level1` .. `level<n>`.
        head: Global average pooling, hidden dense layers, dropout and the output logit.
    """

    def __init__(self, spec: ArchSpec, in_channels: int = 1, pool_first: bool = True, grades: int = 2):
        super().__init__()
        self.spec = spec
        self.grades = grades
        levels: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, level in enumerate(spec.levels, start=1):
            levels[f"level{i}"] = Level(channels, level, spec, pool_first)
            channels = level.filters
        self.features = nn.Sequential(levels)

        head: OrderedDict[str, nn.Module] = OrderedDict(gap=nn.AdaptiveAvgPool3d(1), flatten=nn.Flatten())
        for j, units in enumerate(spec.head_units, start=1):
            head[f"fc{j}"] = nn.Linear(channels, units)
            head[f"act{j}"] = make_act(spec.activation)
            if j == 1 and spec.dropout > 0:
                head["drop"] = nn.Dropout(spec.dropout)
            channels = units
        if not spec.head_units and spec.dropout > 0:
            head["drop"] = nn.Dropout(spec.dropout)
        head["out"] = nn.Linear(channels, 1)
        if grades > 2:
            head["cuts"] = OrdinalCuts(grades - 1)
        self.head = nn.Sequential(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per scan, (B, C, D, H, W) -> (B,); for K > 2 grades, K-1 cumulative logits, (B, K-1)."""
        out = self.head(self.features(x))
        return out if self.grades > 2 else out.squeeze(1)


def init_keras(model: nn.Module) -> None:
    """Initialise conv and dense layers as Keras does: Glorot-uniform weights, zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build(spec: ArchSpec, in_channels: int = 1, pool_first: bool = True, grades: int = 2) -> SpecNet:
    """Build the model for a spec.

    Works under `with torch.device("meta"):` (for costing without allocating), and the model runs in
    `torch.channels_last_3d` memory format and under `torch.autocast` with bfloat16.

    Args:
        spec: The architecture.
        in_channels: Channels of the input volumes (1 for CT).
        pool_first: Run max pooling before the activation where that is exact (see `Level`); False
            builds the literal `block -> pool -> norm` order, the reference the tests compare with.
        grades: Labels of the task: 2 for a binary task, K > 2 for an ordinal grading (the head then ends
            in :class:`OrdinalCuts`).

    Returns:
        The model, mapping (B, in_channels, D, H, W) to (B,) logits (binary) or (B, K-1) cumulative
        logits (ordinal), in training mode.

    Raises:
        ValueError: `spec` is not an `ArchSpec`, or `in_channels` or `grades` is not an integer in range.
    """
    if not isinstance(spec, ArchSpec):
        raise ValueError(f"build: spec must be an ArchSpec, got {type(spec).__name__}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, numbers.Integral) or in_channels < 1:
        raise ValueError(f"build: in_channels must be a positive integer, got {in_channels!r}")
    if isinstance(grades, bool) or not isinstance(grades, numbers.Integral) or grades < 2:
        raise ValueError(f"build: grades must be an integer of at least 2, got {grades!r}")
    model = SpecNet(spec, int(in_channels), pool_first, int(grades))
    init_keras(model)
    return model


def _check_size(size: object) -> Size:
    if not isinstance(size, (list, tuple)) or len(size) != 3:
        raise ValueError(f"size: must be three positive integers (D, H, W), got {size!r}")
    for axis in size:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis < 1:
            raise ValueError(f"size: must be three positive integers (D, H, W), got {size!r}")
    d, h, w = (int(axis) for axis in size)
    return d, h, w


def _level_shapes(spec: ArchSpec, size: Size):
    """Yield (level number, shape after its convolutions, shape after its pooling) level by level."""
    trim = 2 * (KERNEL_SIZE // 2) if spec.padding == "valid" else 0
    shape: tuple[int, ...] = size
    for i, level in enumerate(spec.levels, start=1):
        convolved = tuple(max(0, axis - trim * level.n_convs) for axis in shape)
        shape = tuple(axis // 2 for axis in convolved)
        yield i, convolved, shape


def feature_shapes(spec: ArchSpec, size: Size) -> tuple[Size, ...]:
    """Return each level's output shape (D, H, W) at an input size; a vanished axis reads 0.

    Args:
        spec: The architecture.
        size: Input (D, H, W).

    Raises:
        ValueError: `size` is not three positive integers.
    """
    return tuple(pooled for _, _, pooled in _level_shapes(spec, _check_size(size)))


def check_input_size(spec: ArchSpec, size: Size) -> None:
    """Raise if a spec cannot run (train) at an input size; return None if it can.

    Args:
        spec: The architecture.
        size: Input (D, H, W).

    Raises:
        SpecInputError: A level's feature map vanishes, e.g. "level 4: feature map (0, 2, 2) vanishes
            at input 32x64x64 with 'valid' padding", or instance norm would see a single voxel, which
            it cannot normalise in training.
        ValueError: `size` is not three positive integers.
    """
    size = _check_size(size)
    where = f"at input {'x'.join(map(str, size))} with '{spec.padding}' padding"
    for i, convolved, pooled in _level_shapes(spec, size):
        for stage, shape in (("its convolutions", convolved), ("pooling", pooled)):
            if min(shape) < 1:
                raise SpecInputError(f"level {i}: feature map {shape} vanishes {where} (after {stage})")
        if spec.norm == "instance" and pooled == (1, 1, 1):
            raise SpecInputError(
                f"level {i}: feature map (1, 1, 1) {where} is a single voxel, which instance norm "
                "cannot normalise in training"
            )
