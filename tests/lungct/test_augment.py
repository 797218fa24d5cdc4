import math

import pytest
import torch
import torch.nn.functional as F

from lungct.augment import AugmentConfig, augment_batch

NONE = AugmentConfig(angles_deg=(), flip_prob=0.0, intensity_scale=0.0, intensity_shift=0.0)


def _batch(b=3):
    return torch.rand(b, 1, 6, 12, 10, generator=torch.Generator().manual_seed(0)).half()


def test_augment_batch_keeps_shape_and_unit_range():
    out = augment_batch(_batch(), torch.Generator().manual_seed(1))
    assert out.shape == (3, 1, 6, 12, 10) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_augment_batch_is_reproducible_by_seed():
    x = _batch()
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_batch_with_nothing_enabled_is_the_identity():
    x = _batch()
    assert torch.equal(augment_batch(x, torch.Generator(), NONE), x.float())


def test_augment_batch_flip_mirrors_left_right():
    x = _batch()
    out = augment_batch(x, torch.Generator(), AugmentConfig(angles_deg=(), flip_prob=1.0, intensity_scale=0,
                                                              intensity_shift=0))
    assert torch.equal(out, x.float().flip(-1))


def test_augment_batch_rotates_in_the_axial_plane_only():
    x = torch.zeros(1, 1, 4, 40, 60)
    x[:, :, 1, 18:22, 10:50] = 1.0  # a bar along W on one slice
    out = augment_batch(x, torch.Generator(), AugmentConfig(angles_deg=(90.0,), flip_prob=0, intensity_scale=0,
                                                             intensity_shift=0))
    rows, cols = out[0, 0, 1].nonzero(as_tuple=True)
    assert rows.max() - rows.min() >= 35  # the bar now runs along H, its length kept despite H != W
    assert cols.max() - cols.min() <= 6
    assert out[0, 0, [0, 2, 3]].abs().sum() == 0  # other slices untouched


def test_augment_batch_fills_rotated_corners_with_air():
    out = augment_batch(torch.ones(2, 1, 2, 16, 16), torch.Generator(), AugmentConfig(
        angles_deg=(20.0,), flip_prob=0, intensity_scale=0, intensity_shift=0))
    assert out[:, :, :, 0, 0].max() == 0.0


def test_augment_config_rejects_a_bad_probability():
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)


def _rotate_3d(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """The reference: a 3D grid that rotates in the axial plane and keeps z (what augment_batch did before)."""
    b, _, _, h, w = x.shape
    theta = angles_deg * (math.pi / 180.0)
    affine = torch.zeros(b, 3, 4)
    affine[:, 0, 0] = theta.cos()
    affine[:, 0, 1] = -theta.sin() * (h / w)
    affine[:, 1, 0] = theta.sin() * (w / h)
    affine[:, 1, 1] = theta.cos()
    affine[:, 2, 2] = 1.0
    grid = F.affine_grid(affine, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_augment_batch_slice_rotation_matches_a_3d_rotation_that_keeps_z():
    x = torch.rand(3, 1, 16, 24, 20, generator=torch.Generator().manual_seed(0))
    config = AugmentConfig(flip_prob=0.0, intensity_scale=0.0, intensity_shift=0.0)
    fast = augment_batch(x, torch.Generator().manual_seed(5), config)
    choice = torch.randint(len(config.angles_deg), (3,), generator=torch.Generator().manual_seed(5))
    reference = _rotate_3d(x, torch.tensor(config.angles_deg)[choice]).clamp(0, 1)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)


def test_augment_batch_leaves_its_input_alone():
    x = torch.rand(2, 1, 16, 24, 20, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    for config in (AugmentConfig(), AugmentConfig(angles_deg=(), flip_prob=1.0)):
        augment_batch(x, torch.Generator().manual_seed(1), config)
        assert torch.equal(x, before)
