"""Grad-CAM++ saliency of a severity (ordinal) model: the map of the shared severity logit, and the card's examples."""

import numpy as np
import pytest
import torch
from torch import nn

from search.model.folder import Ensemble
from search.model.saliency import (
    GRADE_EXAMPLES,
    ORDINAL_TARGET,
    SaliencyMapper,
    _OneLogit,
    pick_grade_examples,
    write_examples,
)
from space import ArchSpec, LevelSpec, build

SHAPE = (16, 24, 20)
K = 4
CLASSES = ("CT-0", "CT-1", "CT-2", "CT-3 or CT-4")


def _severity_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build(ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,)), grades=K).eval()


def test_saliency_of_a_severity_model_has_the_input_shape_unit_mass_and_no_negative_value():
    saliency = SaliencyMapper(_severity_net(0))(torch.rand(1, 1, *SHAPE))
    assert saliency.shape == SHAPE and np.all(saliency >= 0)
    assert saliency.sum() == pytest.approx(1.0, rel=1e-5)


def test_severity_saliency_reads_column_0_whose_gradient_is_every_thresholds():
    net = _severity_net(1)
    x = torch.rand(2, 1, *SHAPE, requires_grad=True)
    score = _OneLogit(net)(x)
    assert score.shape == (2, 1) and torch.all(score == 0)  # value 0: Grad-CAM++'s exp(score) stays 1
    (column0,) = torch.autograd.grad(score.sum(), x)
    for k in range(K - 1):  # every "grade >= k" logit is z + b_k: the same gradient
        (other,) = torch.autograd.grad(net(x)[:, k].sum(), x)
        assert torch.allclose(column0, other, atol=1e-6), k


def test_severity_saliency_of_an_ensemble_averages_its_members_maps():
    members = [_severity_net(seed) for seed in (2, 3)]
    x = torch.rand(1, 1, *SHAPE)
    mean = np.mean([SaliencyMapper(m)(x) for m in members], axis=0)
    assert np.allclose(SaliencyMapper(Ensemble(members))(x), mean, atol=1e-6)


def test_ordinal_target_says_every_threshold_shares_the_map():
    assert "severity logit z" in ORDINAL_TARGET and "z + b_k" in ORDINAL_TARGET


def _cumulative(expected: list[float]) -> np.ndarray:
    """(N, K-1) P(grade >= k) whose median grade is round-ish ``expected`` (cutpoints 1.5 apart)."""
    z = np.asarray(expected, dtype=float)[:, None] * 1.5 - np.arange(1, K)[None, :] * 1.5 + 0.75
    return 1 / (1 + np.exp(-z))


def test_pick_grade_examples_takes_the_surest_correct_ends_and_the_worst_miss():
    labels = np.array([0, 0, 3, 3, 1, 2])
    cumulative = _cumulative([0.0, -2.0, 3.0, 5.0, 1.0, -1.0])  # scan 5: a CT-2 graded CT-0, two grades off
    picks = pick_grade_examples(labels, cumulative)
    assert picks == {"lowest grade": 1, "highest grade": 3, "worst miss": 5}
    assert list(picks) == list(GRADE_EXAMPLES)


def test_pick_grade_examples_leaves_out_what_no_scan_fits():
    labels = np.array([1, 2])
    picks = pick_grade_examples(labels, _cumulative([1.0, 2.0]))  # both right, neither at an end of the scale
    assert picks == {}


def test_write_examples_of_a_severity_model_writes_the_grade_examples(tmp_path):
    labels = np.array([0, 3, 2])
    cumulative = _cumulative([0.0, 3.0, 0.0])
    volumes = torch.rand(3, 1, *SHAPE)
    written = write_examples(_severity_net(4), volumes, labels, cumulative, CLASSES, 0.5, tmp_path)
    assert [p.name for p in written] == ["saliency_lowest_grade.png", "saliency_highest_grade.png",
                                         "saliency_worst_miss.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
