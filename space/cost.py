"""A spec's cost without training: parameter counts and forward FLOPs per sample.

Two parameter counts, because the course compares against Keras's `model.summary()`:

- `count_params`: trainable parameters, what PyTorch's `sum(p.numel() for p in model.parameters())`
  gives. Keras calls the same number "Trainable params".
- `count_keras_params`: Keras's "Total params": the trainable ones plus each BatchNorm's moving mean
  and moving variance, which Keras counts as non-trainable parameters and PyTorch keeps as the
  `running_mean` and `running_var` buffers. PyTorch's extra `num_batches_tracked` buffer has no Keras
  counterpart and is not counted. For the seed: 1,351,873 + 2 x (64 + 64 + 128 + 256) = 1,352,897.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, run on the meta device so that no weight
or activation is allocated (a 64x128x128 volume costs nothing to "run"). FlopCounterMode counts only
the operators it has formulas for, here convolutions and matrix multiplies, at 2 FLOPs per
multiply-accumulate; bias additions, activations, pooling, normalisation, dropout, concatenation and
the residual additions count zero. Those are memory-bound and 0.5-2% of the total for these networks,
so the figure is the usual "GFLOPs" of papers (2 x MACs), not a runtime prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.flop_counter import FlopCounterMode

from space.build import Size, build, check_input_size
from space.spec import ArchSpec


@dataclass(frozen=True)
class Cost:
    """What a spec costs at one input size.

    Attributes:
        params: Trainable parameters.
        keras_params: Keras's total parameter count (trainable + BatchNorm moving statistics).
        flops: Forward FLOPs for one sample (2 per multiply-accumulate; convolutions and dense only).
    """

    params: int
    keras_params: int
    flops: int

    @property
    def gflops(self) -> float:
        """Forward FLOPs per sample, in billions."""
        return self.flops / 1e9


def _meta_model(model_or_spec: nn.Module | ArchSpec, in_channels: int) -> nn.Module:
    if isinstance(model_or_spec, ArchSpec):
        with torch.device("meta"):
            return build(model_or_spec, in_channels)
    return model_or_spec


def count_params(model_or_spec: nn.Module | ArchSpec, in_channels: int = 1) -> int:
    """Return the trainable parameter count of a model, or of a spec's model (built on the meta device).

    Args:
        model_or_spec: A module, or a spec to build.
        in_channels: Input channels, when a spec is given.
    """
    model = _meta_model(model_or_spec, in_channels)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_keras_params(model_or_spec: nn.Module | ArchSpec, in_channels: int = 1) -> int:
    """Return the parameter count Keras would report: trainable + BatchNorm running mean and variance.

    Args:
        model_or_spec: A module, or a spec to build.
        in_channels: Input channels, when a spec is given.
    """
    model = _meta_model(model_or_spec, in_channels)
    moving = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
    )
    return count_params(model) + moving


def _forward_flops(model: nn.Module, size: Size, in_channels: int) -> int:
    x = torch.empty((1, in_channels, *size), device="meta")  # (B=1, C, D, H, W)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return int(counter.get_total_flops())


def count_flops(spec: ArchSpec, size: Size, in_channels: int = 1) -> int:
    """Return the forward FLOPs of one sample at an input size, counted on the meta device.

    Args:
        spec: The architecture.
        size: Input (D, H, W).
        in_channels: Input channels.

    Raises:
        SpecInputError: The spec's maps vanish at `size`.
    """
    check_input_size(spec, size)
    return _forward_flops(_meta_model(spec, in_channels), tuple(size), in_channels)


def cost(spec: ArchSpec, size: Size, in_channels: int = 1) -> Cost:
    """Return a spec's parameter counts and forward FLOPs per sample at an input size.

    Args:
        spec: The architecture.
        size: Input (D, H, W).
        in_channels: Input channels.

    Raises:
        SpecInputError: The spec's maps vanish at `size` (the message says where).
    """
    check_input_size(spec, size)
    model = _meta_model(spec, in_channels)
    return Cost(
        params=count_params(model),
        keras_params=count_keras_params(model),
        flops=_forward_flops(model, tuple(size), in_channels),
    )
