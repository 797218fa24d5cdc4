"""Shared helpers for the space tests: tiny specs and a forward/backward check."""

from __future__ import annotations

import dataclasses

import torch

from space import ArchSpec, LevelSpec, build

# Deliberately non-cubic, so a mixed-up axis shows as a wrong shape.
TINY_SIZE = (16, 24, 20)


def tiny_spec(**changes) -> ArchSpec:
    """Return a two-level spec with tiny widths (4, 8), overridden by `changes`."""
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), head_units=(6,), dropout=0.2)
    return dataclasses.replace(spec, **changes)


def run_forward_backward(spec: ArchSpec, size=TINY_SIZE, batch: int = 2) -> torch.Tensor:
    """Run a batch forward and backward; assert finite logits and a finite gradient for every parameter."""
    torch.manual_seed(0)
    model = build(spec)
    x = torch.randn(batch, 1, *size)  # (B, C, D, H, W)
    logits = model(x)
    assert logits.shape == (batch,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
    return logits
