"""Training-time augmentation of a whole batch at once, on the batch's own device.

The seed rotates each training volume in the axial plane by an angle drawn from ±5, ±10 and ±20
degrees (``scipy.ndimage.rotate`` on the CPU, one scan at a time). Here one ``affine_grid`` /
``grid_sample`` call rotates the batch's slices where they already live (the GPU when training there), plus a
left-right flip and a small intensity jitter. Random draws come from a seeded CPU generator, so the
same seed gives the same augmentation on any device. Validation and test data are never augmented:
call this in the training step only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """What the training augmentation may do.

    Attributes:
        angles_deg: Rotation angles in the axial plane to draw from, uniformly (the seed's set).
        flip_prob: Probability of a left-right flip per scan.
        intensity_scale: Half-width of the uniform multiplicative jitter (0.05 = ±5%).
        intensity_shift: Half-width of the uniform additive jitter, in units of the [0, 1] window.
    """

    angles_deg: tuple[float, ...] = (-20.0, -10.0, -5.0, 5.0, 10.0, 20.0)
    flip_prob: float = 0.5
    intensity_scale: float = 0.05
    intensity_shift: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob: must lie in [0, 1], got {self.flip_prob}")
        if self.intensity_scale < 0 or self.intensity_shift < 0:
            raise ValueError("intensity_scale, intensity_shift: must be non-negative")


def augment_batch(x: torch.Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """Randomly rotate (axial plane), flip (left-right) and jitter a batch of windowed volumes.

    Args:
        x: (B, C, D, H, W) volumes in [0, 1] (0 is air), any float dtype, any device.
        generator: A seeded CPU generator; it alone decides every random draw.
        config: Angles, flip probability and jitter widths.

    Returns:
        A float32 tensor of the same shape on the same device, clamped to [0, 1].
    """
    b, _, _, h, w = x.shape
    device = x.device
    if config.angles_deg:
        choice = torch.randint(len(config.angles_deg), (b,), generator=generator)
        theta_rad = torch.tensor(config.angles_deg, dtype=torch.float32)[choice] * (math.pi / 180.0)
        cos, sin = torch.cos(theta_rad), torch.sin(theta_rad)
        # affine_grid works in normalised coordinates (x = W, y = H, each in [-1, 1]); scaling the
        # off-diagonal terms by the aspect ratio makes it a true rotation in voxels when H != W.
        affine = torch.zeros(b, 2, 3)
        affine[:, 0, 0] = cos
        affine[:, 0, 1] = -sin * (h / w)
        affine[:, 1, 0] = sin * (w / h)
        affine[:, 1, 1] = cos
        # Every axial slice of a scan turns by the same angle: one 2D resampling with the slices as
        # channels. A 3D grid that keeps z gave the same values within 2e-6 at about 7x the cost (bilinear
        # in z at exact voxel centres), a tenth of a CPU training step at 64x128x128 (benchmarks/RESULTS.md).
        slices = x.float().reshape(b, -1, h, w)  # (B, C*D, H, W)
        grid = F.affine_grid(affine.to(device), list(slices.shape), align_corners=False)
        # Zero padding is air (-1000 HU) after windowing, as in the seed's constant fill.
        x = F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=False).view(x.shape)
    else:
        x = x.to(torch.float32, copy=True)  # a fresh tensor: what follows works in place
    if config.flip_prob > 0:
        flip = (torch.rand(b, generator=generator) < config.flip_prob).nonzero().flatten().to(device)
        x[flip] = x[flip].flip(-1)
    if config.intensity_scale > 0 or config.intensity_shift > 0:
        scale = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * config.intensity_scale
        shift = (torch.rand(b, generator=generator) * 2 - 1) * config.intensity_shift
        x.mul_(scale.to(device).view(b, 1, 1, 1, 1)).add_(shift.to(device).view(b, 1, 1, 1, 1))
    return x.clamp_(0.0, 1.0)
