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

`memory` runs the same meta-device forward pass and follows every tensor it makes from creation until
Python drops it, so it knows how many activation bytes are alive at once (what an inference needs) and
how many are made in all (an upper bound on what autograd keeps for a backward pass), without allocating
any of them. A model folder is checked with it before its network is built (`search.model.folder`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
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


def _meta_model(model_or_spec: nn.Module | ArchSpec, in_channels: int, grades: int = 2) -> nn.Module:
    if isinstance(model_or_spec, ArchSpec):
        with torch.device("meta"):
            return build(model_or_spec, in_channels, grades=grades)
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
        # a module that tracks running statistics has both
        and m.running_mean is not None and m.running_var is not None
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
    return _forward_flops(_meta_model(spec, in_channels), size, in_channels)


def cost(spec: ArchSpec, size: Size, in_channels: int = 1, grades: int = 2) -> Cost:
    """Return a spec's parameter counts and forward FLOPs per sample at an input size.

    Args:
        spec: The architecture.
        size: Input (D, H, W).
        in_channels: Input channels.
        grades: The task's labels (``build(spec, grades=K)``): an ordinal head adds its K-1 cutpoints.

    Raises:
        SpecInputError: The spec's maps vanish at `size` (the message says where).
    """
    check_input_size(spec, size)
    model = _meta_model(spec, in_channels, grades)
    return Cost(
        params=count_params(model),
        keras_params=count_keras_params(model),
        flops=_forward_flops(model, size, in_channels),
    )


# What the CPU's convolution kernels allocate beside the tensors `memory` counts (oneDNN's reordered copies
# and workspaces): a forward pass's peak resident memory was 1.04x the counted peak for the seed at 64x128x128
# and 1.1x-1.4x for two-level plain, residual and residual-inception nets at 48x96x96 (ru_maxrss, torch 2.13).
INFERENCE_OVERHEAD = 1.5


@dataclass(frozen=True)
class Memory:
    """The bytes a spec's network needs for one float32 sample at an input size.

    Attributes:
        weights: Parameters and buffers (the state dict).
        inference: The most activation bytes alive at once in a forward pass without gradients, the
            input included (what predicting one scan needs beside the weights).
        backward: Twice every activation byte a forward pass makes: autograd keeps at most those, and the
            backward pass holds at most one gradient of each (what a saliency map of one scan needs beside
            the weights and their gradients). Generous: for the seed at 64x128x128 it is 0.87 GiB, and a
            forward and backward pass on the CPU took 0.79 GiB.
    """

    weights: int
    inference: int
    backward: int

    def total(self, gradients: bool = False) -> int:
        """Weights plus activations for a forward pass (with :data:`INFERENCE_OVERHEAD`), or with ``gradients``
        the weights, their gradients and the activations of a forward and backward pass."""
        if gradients:
            return 2 * self.weights + self.backward
        return self.weights + int(INFERENCE_OVERHEAD * self.inference)


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor an operator returns while the tensor is alive; views and in-place
    results share a tensor already counted and are not counted again."""

    def __init__(self):
        super().__init__()
        self.alive: dict[int, int] = {}
        self.live = self.peak = self.made = 0

    def _free(self, key: int) -> None:
        self.live -= self.alive.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t._is_view() and id(t) not in self.alive:
                size = t.numel() * t.element_size()
                self.alive[id(t)] = size
                self.live += size
                self.made += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, id(t))
        return out


def memory(spec: ArchSpec, size: Size, in_channels: int = 1) -> Memory:
    """Return what a spec's network needs in memory for one sample at an input size, counted on the meta device.

    Args:
        spec: The architecture.
        size: Input (D, H, W).
        in_channels: Input channels.

    Raises:
        SpecInputError: The spec's maps vanish at `size`.
    """
    check_input_size(spec, size)
    model = _meta_model(spec, in_channels).eval()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    counter = _LiveBytes()
    with torch.no_grad(), counter:
        x = torch.empty((1, in_channels, *size), device="meta")  # (B=1, C, D, H, W)
        model(x)
        del x
    return Memory(weights=weights, inference=counter.peak, backward=2 * counter.made)
