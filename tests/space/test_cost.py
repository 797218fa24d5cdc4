"""Parameter counts and FLOPs without training."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from space import (
    ArchSpec,
    LevelSpec,
    SpecInputError,
    baseline,
    build,
    cost,
    count_flops,
    count_keras_params,
    count_params,
    memory,
)
from tests.space.helpers import TINY_SIZE, tiny_spec


def test_cost_counts_conv_and_dense_flops_exactly():
    spec = ArchSpec(levels=(LevelSpec(4),), head_units=(), dropout=0.0)
    conv = 2 * 27 * 1 * 4 * (4 * 6 * 8)  # 2 x kernel x C_in x C_out x output voxels of a valid conv
    dense = 2 * 4 * 1
    assert count_flops(spec, (6, 8, 10)) == conv + dense


def test_cost_baseline_flops_at_seed_size_match_hand_count():
    # (C_in, C_out, output voxels after the 'valid' conv) per level, at 64x128x128.
    levels = [(1, 64, 62 * 126 * 126), (64, 64, 29 * 61 * 61), (64, 128, 12 * 28 * 28), (128, 256, 4 * 12 * 12)]
    expected = sum(2 * 27 * c_in * c_out * voxels for c_in, c_out, voxels in levels) + 2 * (256 * 512 + 512)
    result = cost(baseline(), (64, 128, 128))
    assert result.flops == expected
    assert 30 < result.gflops < 35


def test_cost_meta_count_equals_count_on_real_tensors():
    spec = tiny_spec(levels=(LevelSpec(4, 2, "residual_inception"), LevelSpec(8, 1, "residual")))
    model = build(spec).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, *TINY_SIZE))
    assert count_flops(spec, TINY_SIZE) == counter.get_total_flops()


def test_cost_reports_both_parameter_counts():
    result = cost(baseline(), (64, 128, 128))
    assert (result.params, result.keras_params) == (1_351_873, 1_352_897)


def test_cost_rejects_size_where_maps_vanish():
    with pytest.raises(SpecInputError, match="vanishes"):
        cost(baseline(), (32, 64, 64))


def test_count_params_gives_same_count_for_spec_and_model():
    spec = tiny_spec()
    assert count_params(spec) == count_params(build(spec)) > 0


def test_count_keras_params_adds_nothing_without_batchnorm():
    spec = tiny_spec(norm="instance")
    assert count_keras_params(spec) == count_params(spec)


def test_memory_counts_weights_and_the_largest_live_activations_without_allocating():
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
    m = memory(spec, (16, 24, 20))
    assert m.weights == 4 * sum(t.numel() for t in build(spec).state_dict().values() if t.is_floating_point()) + 8 * 2
    # The first convolution's output (4 x 16x24x20 float32) and its input are alive together, nothing more.
    first = 4 * 16 * 24 * 20 * 4
    assert first + 16 * 24 * 20 * 4 <= m.inference <= 2 * first + 16 * 24 * 20 * 4
    assert m.backward >= 2 * m.inference and m.total(gradients=True) > m.total() > m.weights


def test_memory_grows_with_the_widths_and_the_input_size():
    small = memory(ArchSpec(levels=(LevelSpec(8),)), (16, 24, 20))
    wide = memory(ArchSpec(levels=(LevelSpec(64),)), (16, 24, 20))
    big = memory(ArchSpec(levels=(LevelSpec(8),)), (32, 48, 40))
    assert wide.inference > 4 * small.inference and big.inference > 4 * small.inference


def test_memory_of_a_hostile_width_is_counted_in_an_instant():
    m = memory(ArchSpec(levels=(LevelSpec(2048, 3, "residual_inception"),), padding="same"), (64, 128, 128))
    assert m.total() > 2048 * 64 * 128 * 128 * 4  # at least one full-width map: tens of GB, none allocated


def test_memory_rejects_size_where_maps_vanish():
    with pytest.raises(SpecInputError):
        memory(baseline(), (8, 8, 8))


def test_cost_of_an_ordinal_head_counts_its_cutpoints_and_nothing_else():
    from space import baseline, cost, fit_to_size
    spec, _ = fit_to_size(baseline(), (16, 16, 32))
    binary, graded = cost(spec, (16, 16, 32)), cost(spec, (16, 16, 32), grades=4)
    assert graded.params == binary.params + 3 and graded.keras_params == binary.keras_params + 3
    assert graded.flops == binary.flops
