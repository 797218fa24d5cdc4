"""The convolution blocks of a level, and the layer tables resolved through MONAI's factories.

Every level is `block -> pool -> norm` (the seed's order: its Conv3D carries the ReLU, then
MaxPool3D, then BatchNormalization). The block type decides only what happens between the level's
input and its pooling; every block has one constructor shape,
`Block(in_channels, out_channels, n_convs, activation, padding, final_act=True)`, and `n_convs` is always the block's
depth in 3x3x3 convolutions along its deepest path. So under 'valid' padding every block type trims the
same `n_convs` voxels from each face, and swapping the block changes the wiring, not the feature-map
sizes that `space.build.check_input_size` predicts.

plain (the seed)
    `[conv 3x3x3 -> act] x n_convs`.

residual
    main path `conv 3x3x3 -> act -> ... -> conv 3x3x3` (n_convs convolutions, no activation after the
    last); shortcut: the input, projected by a 1x1x1 convolution when the channel count changes (the
    identity otherwise); output `act(main + shortcut)`. With 'valid' padding the main path is smaller
    than the input, so the shortcut reads the input's centre, cropped by n_convs voxels per face. Cropping,
    rather than switching the block to 'same' padding, keeps the map sizes of the seed, so the
    `residual` modification changes exactly the wiring.

residual_inception
    parallel branches over the input, each `max(1, out_channels // 4)` channels wide and each opened by
    its own 1x1x1 reduction, as in Inception-ResNet-A: `rf1 = 1x1x1 -> act`, and for k = 1 .. n_convs,
    `rf(2k+1) = 1x1x1 -> act -> [3x3x3 -> act] x k` (receptive fields 1, 3, 5, ...). With n_convs 1 the
    branches are 1x1x1 and 3x3x3; with 2 they are 1x1x1, 3x3x3 and two stacked 3x3x3, the classic
    design. The branches are concatenated, projected to `out_channels` by a 1x1x1 convolution (no
    activation), added to the shortcut (as in `residual`), then `act`. With 'valid' padding a branch of
    k 3x3x3 convolutions reads the input cropped by `n_convs - k` voxels per face, so every branch ends
    at the size of the deepest one (cropping before a pointwise convolution equals cropping after it,
    and is cheaper).

Neither residual block normalises inside: the level's norm, after pooling, stays the one normalisation
per level for every block type. That keeps the course's modifications to what they name (wiring only),
and with at most three convolutions between norms the unnormalised stretch is as short as the seed's
double-convolution variant. The one activation of the spec is used everywhere, so the `sigmoid`
modification reaches inside these blocks too.

Every block ends in the activation. `final_act=False` leaves that last one out, for a level that
applies it after max pooling instead (`space.build.Level`): the same function on an eight times
smaller tensor.

Layers come from MONAI: `monai.networks.blocks.Convolution` for conv (+ activation), the `Act`,
`Norm` and `Pool` factories for the rest, each looked up in the one table for its choice in
`space.spec`. Convolutions keep their bias, as Keras's Conv3D does.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Norm, Pool
from torch import nn

from space.spec import ACTIVATIONS, NORMS, POOLINGS

SPATIAL_DIMS = 3
KERNEL_SIZE = 3


def act_args(activation: str) -> tuple[str, dict]:
    """Return the MONAI `Act` factory name and kwargs for a spec activation name."""
    factory, kwargs = ACTIVATIONS[activation]
    return factory, dict(kwargs)


def make_act(activation: str) -> nn.Module:
    """Return a new activation layer for a spec activation name."""
    factory, kwargs = act_args(activation)
    return Act[factory](**kwargs)


class MaxPool3dOwnDtype(nn.MaxPool3d):
    """`nn.MaxPool3d` that pools in its input's dtype under autocast.

    CPU autocast runs max pooling in float32: a bf16 convolution's output was cast up (a copy of the
    largest tensor of the step), pooled, and its gradient cast back, about a fifth of a bf16 training
    step at the seed's 64x128x128 (benchmarks/RESULTS.md). Taking a maximum rounds nothing, so pooling
    the bf16 tensor itself gives the same values.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                return super().forward(x)
        return super().forward(x)


def make_pool(pooling: str) -> nn.Module:
    """Return the level's pooling layer (window 2, stride 2, rounding down) for a spec pooling name."""
    if POOLINGS[pooling] == "max":
        return MaxPool3dOwnDtype(kernel_size=2)
    return Pool[POOLINGS[pooling], SPATIAL_DIMS](kernel_size=2)


def make_norm(norm: str, channels: int) -> nn.Module | None:
    """Return the normalisation layer for a spec norm name, or None for 'none'."""
    entry = NORMS[norm]
    if entry is None:
        return None
    factory, kwargs = entry
    return Norm[factory, SPATIAL_DIMS](channels, **kwargs)


def make_conv(
    in_channels: int, out_channels: int, kernel_size: int, padding: str, activation: str | None
) -> Convolution:
    """Return a stride-1 convolution, followed by `activation` unless it is None.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Odd cube edge.
        padding: 'valid' (none) or 'same' (keeps the size).
        activation: A spec activation name, or None for a bare convolution.
    """
    pad = (kernel_size - 1) // 2 if padding == "same" else 0
    if activation is None:
        return Convolution(
            SPATIAL_DIMS, in_channels, out_channels, kernel_size=kernel_size, padding=pad, conv_only=True
        )
    return Convolution(
        SPATIAL_DIMS,
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=pad,
        act=act_args(activation),
        norm=None,
    )


def crop(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Return the centre of `x` (B, C, D, H, W) with `margin` voxels cut from every spatial face."""
    if margin == 0:
        return x
    return x[:, :, margin:-margin, margin:-margin, margin:-margin]


def make_shortcut(in_channels: int, out_channels: int) -> nn.Module:
    """Return the identity, or a 1x1x1 projection when the channel count changes."""
    if in_channels == out_channels:
        return nn.Identity()
    return make_conv(in_channels, out_channels, 1, "valid", None)


class PlainBlock(nn.Sequential):
    """The seed's block: `[conv 3x3x3 -> act] x n_convs` (the last `act` left to the level if `final_act` is False)."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, activation: str, padding: str,
                 final_act: bool = True):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(n_convs):
            width = in_channels if i == 0 else out_channels
            last = i == n_convs - 1
            layers[f"conv{i + 1}"] = make_conv(width, out_channels, KERNEL_SIZE, padding,
                                               activation if final_act or not last else None)
        super().__init__(layers)


class ResidualBlock(nn.Module):
    """`act(convs(x) + shortcut(x))`; see the module docstring for cropping under 'valid' padding."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, activation: str, padding: str,
                 final_act: bool = True):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(n_convs):
            width = in_channels if i == 0 else out_channels
            last = i == n_convs - 1
            layers[f"conv{i + 1}"] = make_conv(
                width, out_channels, KERNEL_SIZE, padding, None if last else activation
            )
        self.main = nn.Sequential(layers)
        self.shortcut = make_shortcut(in_channels, out_channels)
        self.act = make_act(activation) if final_act else nn.Identity()
        self.margin = n_convs * (KERNEL_SIZE // 2) if padding == "valid" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C_in, D, H, W) -> (B, C_out, D - 2m, H - 2m, W - 2m), m = self.margin
        return self.act(self.main(x) + self.shortcut(crop(x, self.margin)))


class ResidualInceptionBlock(nn.Module):
    """Parallel 1x1x1 / 3x3x3 / stacked-3x3x3 branches, concatenated, projected, added to the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, activation: str, padding: str,
                 final_act: bool = True):
        super().__init__()
        # A quarter of the output width, as Inception-ResNet keeps its branches narrow (32 of 256);
        # wider branches would make the full-resolution first level cost twice the seed's FLOPs.
        width = max(1, out_channels // 4)
        step = KERNEL_SIZE // 2 if padding == "valid" else 0
        branches = OrderedDict()
        self.margins: list[int] = []
        for depth in range(n_convs + 1):
            layers: OrderedDict[str, nn.Module] = OrderedDict(
                reduce=make_conv(in_channels, width, 1, "valid", activation))
            for i in range(depth):
                layers[f"conv{i + 1}"] = make_conv(width, width, KERNEL_SIZE, padding, activation)
            branches[f"rf{2 * depth + 1}"] = nn.Sequential(layers)
            self.margins.append((n_convs - depth) * step)
        self.branches = nn.ModuleDict(branches)
        self.project = make_conv(width * (n_convs + 1), out_channels, 1, "valid", None)
        self.shortcut = make_shortcut(in_channels, out_channels)
        self.act = make_act(activation) if final_act else nn.Identity()
        self.margin = n_convs * step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each branch: (B, C_in, D, H, W) -> (B, width, D - 2m, H - 2m, W - 2m), m = self.margin
        parts = [branch(crop(x, m)) for branch, m in zip(self.branches.values(), self.margins, strict=True)]
        mixed = self.project(torch.cat(parts, dim=1))  # (B, width * branches, ...) -> (B, C_out, ...)
        return self.act(mixed + self.shortcut(crop(x, self.margin)))


# The one table for the block choice; `space.spec.BLOCKS` lists the same names for validation.
BLOCK_TYPES: dict[str, type[nn.Module]] = {
    "plain": PlainBlock,
    "residual": ResidualBlock,
    "residual_inception": ResidualInceptionBlock,
}
