"""Grad-CAM++ saliency: the map points where the evidence is, as an occlusion map does; it survives MONAI's
pitfalls (inverting normaliser, one logit, exp(logit) overflow); ensembles; the montage file."""

import numpy as np
import pytest
import torch
from monai.visualize import OcclusionSensitivity
from torch import nn

import search.model.saliency as saliency_module
from search.model.folder import Ensemble
from search.model.saliency import (
    SaliencyMapper,
    _literal_copy,
    mass_share,
    montage_name,
    montage_slices,
    plot_montage,
    region_shares,
    save_figure,
    write_examples,
)
from space import ArchSpec, LevelSpec, build

SHAPE = (16, 24, 20)  # (D, H, W), non-cubic so an axis mix-up shows
CENTRE = (5, 7, 14)  # the bright blob, off every axis's middle


def _blob_volume(seed: int = 0) -> torch.Tensor:
    """(1, 1, D, H, W): dim noise, and a bright ball of radius 3 voxels at CENTRE."""
    rng = np.random.default_rng(seed)
    x = 0.2 + 0.05 * rng.standard_normal(SHAPE)
    x[_ball(3)] = 1.0
    return torch.from_numpy(x.astype(np.float32))[None, None]


def _ball(radius: float) -> np.ndarray:
    d, h, w = np.indices(SHAPE)
    return (d - CENTRE[0]) ** 2 + (h - CENTRE[1]) ** 2 + (w - CENTRE[2]) ** 2 <= radius**2


def _brightness_detector() -> nn.Module:
    """A spec's network whose logit grows with local brightness anywhere: the blob is all its evidence."""
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(4)), padding="same", norm="none", head_units=(), dropout=0.0)
    net = build(spec)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.fill_(1.0 / (27 * m.in_channels))
                m.bias.zero_()
        net.head.out.weight.fill_(1.0)
        net.head.out.bias.zero_()
    return net.eval()


def _random_net(seed: int, out_bias: float | None = None) -> nn.Module:
    torch.manual_seed(seed)
    net = build(ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))).eval()
    if out_bias is not None:
        with torch.no_grad():
            net.head.out.bias.fill_(out_bias)
    return net


def test_saliency_map_has_the_input_shape_unit_mass_and_no_negative_value():
    saliency = SaliencyMapper(_random_net(0))(torch.rand(1, 1, *SHAPE))
    assert saliency.shape == SHAPE and saliency.dtype == np.float32
    assert np.all(saliency >= 0)
    assert saliency.sum() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # inside MONAI's occlusion code
def test_saliency_map_peaks_on_the_evidence_where_an_occlusion_map_does():
    net, x = _brightness_detector(), _blob_volume()
    saliency = SaliencyMapper(net)(x)
    # Cheap cross-check: how much the logit drops when a 4-voxel box around each voxel is greyed out.
    occlusion = OcclusionSensitivity(_Logit(net), mask_size=4, n_batch=64, verbose=False, mode="mean_img",
                                     overlap=0.5, activate=False)
    occluded, _ = occlusion(x)
    drop = (net(x).item() - occluded[0, 0]).numpy()  # (D, H, W): large where occluding costs the logit
    near = _ball(5)
    assert near[np.unravel_index(np.argmax(saliency), SHAPE)]  # not inverted: the maximum sits on the blob
    assert near[np.unravel_index(np.argmax(drop), SHAPE)]
    assert mass_share(saliency, near) > 2 * near.mean()  # the dim background activates the detector too
    assert np.corrcoef(saliency.ravel(), drop.ravel())[0, 1] > 0.6  # measured 0.78
    hot, costly = saliency >= np.quantile(saliency, 0.95), drop >= np.quantile(drop, 0.95)
    assert (hot & costly).sum() / costly.sum() > 0.5  # measured 0.79 of the costliest 5% are among the hottest 5%


class _Logit(nn.Module):
    """(B,) logits as the (B, 1) scores MONAI's occlusion map expects."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[:, None]


def test_saliency_map_of_a_confident_model_is_finite_and_that_of_the_same_weights_less_confident():
    # Grad-CAM++ scales by exp(logit): a logit of 200 overflows float32 unless the mapper guards it.
    x = torch.rand(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    calm, confident = SaliencyMapper(_random_net(3))(x), SaliencyMapper(_random_net(3, out_bias=200.0))(x)
    assert np.all(np.isfinite(confident)) and confident.sum() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(confident, calm, rtol=1e-4, atol=1e-9)


def test_saliency_reads_the_block_after_its_activation_with_the_trained_weights():
    net = _random_net(4)
    literal = _literal_copy(net)
    x = torch.rand(2, 1, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(literal(x), net(x), rtol=1e-5, atol=1e-6)
    block = dict(literal.named_modules())[SaliencyMapper(net).layer]
    assert isinstance(list(block.modules())[-1], nn.ReLU)  # the literal order ends the block with its activation


def test_saliency_of_an_ensemble_is_the_mean_of_its_members_unit_maps():
    members = [_random_net(5), _random_net(6)]
    x = torch.rand(1, 1, *SHAPE, generator=torch.Generator().manual_seed(2))
    expected = np.mean([SaliencyMapper(m)(x) for m in members], axis=0)
    np.testing.assert_allclose(SaliencyMapper(Ensemble(members).eval())(x), expected, rtol=1e-5, atol=1e-9)


def test_saliency_mapper_leaves_the_model_in_eval_mode_without_gradients_kept():
    net = _random_net(7)
    SaliencyMapper(net)(torch.rand(1, 1, *SHAPE))
    assert not net.training
    assert all(p.grad is None for p in net.parameters())  # the hooks sit on a copy, not on the loaded model


def test_region_shares_of_a_map_that_is_the_mask_put_all_mass_inside_it():
    lung = np.zeros((32, 48, 40), dtype=bool)
    lung[8:24, 12:36, 10:30] = True
    lesion = np.zeros_like(lung)
    lesion[10:14, 14:20, 12:16] = True
    size = (16, 24, 20)
    from lungct.nifti import resize_volume

    on_lesion = resize_volume(lesion.astype(np.float32), size)
    shares = region_shares(on_lesion, (lung, lesion), size)
    assert shares["lesion_mass"] == pytest.approx(1.0, abs=1e-6)
    assert shares["lung_mass"] == pytest.approx(1.0, abs=1e-6)
    assert shares["lesion_volume"] == pytest.approx(lesion.mean(), rel=1e-5)
    blind = region_shares(np.ones(size, dtype=np.float32), (lung, lesion), size)
    assert blind["lung_mass"] == pytest.approx(blind["lung_volume"], rel=1e-5)


def test_mass_share_of_an_empty_map_is_nan():
    assert np.isnan(mass_share(np.zeros(SHAPE), np.ones(SHAPE)))


def test_montage_slices_spread_over_the_volume_without_its_end_slices():
    assert montage_slices(5) == [0, 1, 2, 3, 4]
    slices = montage_slices(64)
    assert len(slices) == 12 and slices == sorted(set(slices)) and slices[0] > 0 and slices[-1] < 63


def test_montage_name_strips_the_nifti_suffix_and_never_repeats():
    taken: set[str] = set()
    names = [montage_name(p, taken) for p in ("a/scan.nii.gz", "b/scan.nii.gz", "c/scan.nii", "d/other.nii.gz")]
    assert names == ["scan.saliency.png", "scan-2.saliency.png", "scan-3.saliency.png", "other.saliency.png"]


def test_plot_montage_writes_a_png_of_a_sensible_size(tmp_path):
    x = _blob_volume()
    saliency = SaliencyMapper(_brightness_detector())(x)
    out = tmp_path / "blob.saliency.png"
    save_figure(plot_montage(x[0, 0].numpy(), saliency, "blob.nii.gz", "P(positive) = 0.900"), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < len(data) < 2_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["blob.saliency.png"]  # no temporary file left behind


def test_write_examples_shows_the_surest_scan_of_each_outcome(tmp_path, monkeypatch):
    shown = []
    real_plot = saliency_module.plot_montage
    monkeypatch.setattr(saliency_module, "plot_montage",
                        lambda volume, sal, title, subtitle: shown.append((title, subtitle)) or real_plot(
                            volume, sal, title, subtitle))
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.7, 0.55, 0.1, 0.3])
    volumes = torch.rand(len(labels), 1, *SHAPE)
    files = write_examples(_random_net(8), volumes, labels, probs, ("CT-0", "CT-2 or CT-3"), 0.5,
                                           tmp_path)
    assert [f.name for f in files] == ["saliency_true_positive.png", "saliency_false_negative.png",
                                       "saliency_false_positive.png", "saliency_true_negative.png"]
    expected = {"true positive": "0.900", "false negative": "0.200", "false positive": "0.700",
                "true negative": "0.100"}
    assert len(shown) == 4
    for title, subtitle in shown:
        outcome = title.removeprefix("locked test part: ")
        assert f"= {expected[outcome]}" in subtitle


def test_write_examples_skips_outcomes_no_scan_had(tmp_path):
    written = write_examples(_random_net(9), torch.rand(2, 1, *SHAPE), np.array([1, 0]), np.array([0.8, 0.2]),
                             ("a", "b"), 0.5, tmp_path)
    assert [f.name for f in written] == ["saliency_true_positive.png", "saliency_true_negative.png"]


def test_saliency_mapper_reads_another_layer_when_asked_and_refuses_an_unknown_one():
    net, x = _random_net(10), torch.rand(1, 1, *SHAPE)
    earlier = SaliencyMapper(net, "features.level1.block")
    assert earlier.layer == "features.level1.block"
    assert not np.allclose(earlier(x), SaliencyMapper(net)(x))
    with pytest.raises(ValueError, match=r"features\.level9\.block"):
        SaliencyMapper(net, "features.level9.block")
