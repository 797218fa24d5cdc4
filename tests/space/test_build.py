"""build, feature_shapes and check_input_size: every choice runs; shapes and errors are right."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from space import (
    ArchSpec,
    LevelSpec,
    SpecInputError,
    baseline,
    build,
    check_input_size,
    feature_shapes,
    same_padding,
)
from space.blocks import BLOCK_TYPES
from space.spec import ACTIVATIONS, BLOCKS, NORMS, POOLINGS
from tests.space.helpers import TINY_SIZE, run_forward_backward, tiny_spec

# Three valid 3x3x3 convolutions per level trim 6 voxels per axis, too much for two levels at TINY_SIZE.
LARGER_SIZE = (28, 36, 32)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("n_convs", [1, 2, 3])
@pytest.mark.parametrize("block", BLOCKS)
def test_build_block_runs_forward_and_backward(block, n_convs, padding):
    # Levels 4 -> 4 exercise the identity shortcut; the first level (1 -> 4) the projection.
    spec = tiny_spec(levels=(LevelSpec(4, n_convs, block), LevelSpec(4, n_convs, block)), padding=padding)
    size = LARGER_SIZE if (padding, n_convs) == ("valid", 3) else TINY_SIZE
    run_forward_backward(spec, size)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_build_activation_runs_forward_and_backward(activation):
    run_forward_backward(tiny_spec(activation=activation))


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_build_pooling_runs_forward_and_backward(pooling):
    run_forward_backward(tiny_spec(pooling=pooling))


@pytest.mark.parametrize("norm", list(NORMS))
def test_build_norm_runs_forward_and_backward(norm):
    run_forward_backward(tiny_spec(norm=norm))


@pytest.mark.parametrize("head_units", [(), (6,), (6, 5)])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_build_head_runs_forward_and_backward(head_units, dropout):
    run_forward_backward(tiny_spec(head_units=head_units, dropout=dropout))


@pytest.mark.parametrize("n_levels", [1, 2, 3, 4, 5])
def test_build_levels_run_forward_and_backward(n_levels):
    # 'same' padding and 32 voxels on the shortest axis leave five halvings a 1x1x1 map.
    levels = tuple(LevelSpec(4 * 2 ** min(i, 2)) for i in range(n_levels))
    run_forward_backward(tiny_spec(levels=levels, padding="same"), size=(32, 48, 40))


def test_build_block_table_matches_spec_names():
    assert tuple(BLOCK_TYPES) == BLOCKS


def test_build_widths_follow_spec():
    model = build(baseline())
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 64), (64, 64), (64, 128), (128, 256)]
    assert (model.head.fc1.in_features, model.head.fc1.out_features) == (256, 512)
    assert model.head.out.in_features == 512


def test_build_in_channels_sets_first_conv_width():
    model = build(tiny_spec(), in_channels=3)
    assert model.features.level1.block.conv1.conv.in_channels == 3


def test_build_submodule_names_are_readable():
    names = dict(build(baseline()).named_modules())
    for name in ("features.level1.block.conv1", "features.level4.pool", "features.level4.norm", "head.out"):
        assert name in names


def test_build_head_puts_dropout_after_first_hidden_layer():
    model = build(dataclasses.replace(baseline(), head_units=(512, 100)))
    assert list(dict(model.head.named_children())) == ["gap", "flatten", "fc1", "act1", "drop", "fc2", "act2", "out"]


def test_build_head_without_hidden_layer_drops_before_output():
    model = build(dataclasses.replace(baseline(), head_units=()))
    assert list(dict(model.head.named_children())) == ["gap", "flatten", "drop", "out"]


def test_build_batchnorm_uses_keras_defaults():
    norm = build(baseline()).features.level1.norm
    assert isinstance(norm, torch.nn.BatchNorm3d)
    assert (norm.eps, norm.momentum) == (1e-3, 0.01)


def test_build_instance_norm_is_affine():
    norm = build(tiny_spec(norm="instance")).features.level1.norm
    assert isinstance(norm, torch.nn.InstanceNorm3d)
    assert norm.affine


def test_build_none_norm_leaves_no_norm_layer():
    model = build(tiny_spec(norm="none"))
    assert "norm" not in dict(model.features.level1.named_children())


def test_build_starts_with_keras_initialisation():
    model = build(tiny_spec())
    assert torch.count_nonzero(model.features.level1.block.conv1.conv.bias) == 0
    assert torch.count_nonzero(model.head.out.bias) == 0


def test_build_residual_inception_has_a_branch_per_depth():
    model = build(tiny_spec(levels=(LevelSpec(8, 2, "residual_inception"),)))
    assert list(model.features.level1.block.branches) == ["rf1", "rf3", "rf5"]


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("block", BLOCKS)
def test_feature_shapes_match_the_model(block, padding):
    spec = tiny_spec(levels=(LevelSpec(4, 2, block), LevelSpec(8, 2, block)), padding=padding)
    model = build(spec).eval()
    x = torch.randn(1, 1, *TINY_SIZE)
    shapes = []
    with torch.no_grad():
        for level in model.features:
            x = level(x)
            shapes.append(tuple(x.shape[2:]))
    assert tuple(shapes) == feature_shapes(spec, TINY_SIZE)


def test_build_runs_in_channels_last_3d():
    spec = tiny_spec(levels=(LevelSpec(4, 2, "residual_inception"), LevelSpec(8, 1, "residual")))
    model = build(spec).eval()
    x = torch.randn(2, 1, *TINY_SIZE)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last_3d)
    actual = model(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_build_runs_under_bf16_autocast():
    spec = tiny_spec(levels=(LevelSpec(4, 2, "residual_inception"), LevelSpec(8, 1, "residual")))
    model = build(spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 1, *TINY_SIZE))
    assert logits.shape == (2,)
    assert torch.isfinite(logits.float()).all()


def test_build_on_meta_device_allocates_no_storage():
    with torch.device("meta"):
        model = build(baseline())
    assert all(p.is_meta for p in model.parameters())


def test_build_rejects_bad_in_channels():
    with pytest.raises(ValueError, match="in_channels"):
        build(tiny_spec(), in_channels=0)


def test_check_input_size_accepts_baseline_at_seed_size():
    check_input_size(baseline(), (64, 128, 128))


def test_check_input_size_rejects_valid_baseline_at_small_size():
    pattern = r"level 4: feature map \(0, 4, 4\) vanishes at input 32x64x64 with 'valid' padding"
    with pytest.raises(SpecInputError, match=pattern):
        check_input_size(baseline(), (32, 64, 64))


def test_check_input_size_accepts_same_padding_baseline_at_small_size():
    check_input_size(same_padding(baseline()), (32, 64, 64))


def test_check_input_size_rejects_vanishing_after_pooling():
    with pytest.raises(SpecInputError, match=r"level 5: feature map \(0, 1, 1\) .* \(after pooling\)"):
        check_input_size(tiny_spec(levels=(LevelSpec(4),) * 5, padding="same"), (16, 32, 32))


def test_check_input_size_rejects_single_voxel_instance_norm():
    spec = tiny_spec(levels=(LevelSpec(4),) * 4, padding="same", norm="instance")
    with pytest.raises(SpecInputError, match=r"level 4: .* single voxel.*instance norm"):
        check_input_size(spec, (16, 16, 16))


def test_check_input_size_error_is_a_valueerror():
    assert issubclass(SpecInputError, ValueError)


@pytest.mark.parametrize("size", [(0, 24, 20), (16, 24), (16.0, 24, 20)])
def test_check_input_size_rejects_bad_size(size):
    with pytest.raises(ValueError, match=r"size: must be three positive integers"):
        check_input_size(tiny_spec(), size)


def test_archspec_and_model_agree_on_levels():
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8), LevelSpec(16)), padding="same")
    assert list(dict(build(spec).features.named_children())) == ["level1", "level2", "level3"]


def _fast_and_plain(spec: ArchSpec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model as built (the fast order where it is exact) and the literal order, with the same weights."""
    torch.manual_seed(0)
    fast = build(spec)
    plain = build(spec, pool_first=False)
    plain.load_state_dict(fast.state_dict())  # activations hold no weights: one state dict fits both
    return fast.to(memory_format=torch.channels_last_3d), plain.to(memory_format=torch.channels_last_3d)


def _outputs_and_grads(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    (logits.float() * torch.tensor([1.0, -2.0])).sum().backward()
    return logits.float().detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("block", BLOCKS)
def test_build_fast_path_matches_the_literal_order(block, activation, pooling):
    """Pooling before the activation (and max pooling in the input's dtype) changes no output and no gradient."""
    spec = tiny_spec(levels=(LevelSpec(4, 2, block), LevelSpec(8, 1, block)), activation=activation, pooling=pooling,
                     padding="valid" if block == "plain" else "same", dropout=0.0)  # training mode, as trained
    fast, plain = _fast_and_plain(spec)
    size = LARGER_SIZE if spec.padding == "valid" else TINY_SIZE
    x = torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last_3d)
    fast_out, fast_grads = _outputs_and_grads(fast, x, amp=False)
    plain_out, plain_grads = _outputs_and_grads(plain, x, amp=False)
    torch.testing.assert_close(fast_out, plain_out, rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # In bf16 both orders round, at different places (an activation computed before or after the pooling):
    # the fast order must stay about as close to float32 as the literal one, logits and gradients alike.
    exact = [plain_out, torch.cat([g.flatten() for g in plain_grads.values()])]
    errors = {}
    for order, model in (("fast", fast), ("plain", plain)):
        out, grads = _outputs_and_grads(model, x, amp=True)
        got = [out, torch.cat([grads[n].flatten() for n in plain_grads])]
        errors[order] = [((g - e).norm() / e.norm()).item() for g, e in zip(got, exact, strict=True)]
    for what, fast_error, plain_error in zip(("logits", "gradients"), errors["fast"], errors["plain"], strict=True):
        assert fast_error <= 2 * plain_error + 1e-3, (what, fast_error, plain_error)


def test_build_moves_the_activation_after_max_pooling_only_where_exact():
    moved = build(tiny_spec(activation="relu", pooling="max")).features.level1
    assert list(moved._modules) == ["block", "pool", "act", "norm"]
    for activation, pooling in (("gelu", "max"), ("silu", "max"), ("relu", "avg")):
        level = build(tiny_spec(activation=activation, pooling=pooling)).features.level1
        assert list(level._modules) == ["block", "pool", "norm"], (activation, pooling)
    assert list(build(tiny_spec(), pool_first=False).features.level1._modules) == ["block", "pool", "norm"]


def test_build_max_pool_keeps_bf16_under_autocast():
    pool = build(tiny_spec(pooling="max")).features.level1.pool
    x = torch.randn(2, 4, 8, 8, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pool(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, torch.nn.functional.max_pool3d(x.float(), 2).bfloat16(), rtol=0, atol=0)


# The ordinal head (severity): K-1 ordered cumulative logits of "grade >= k".

def test_ordinal_head_outputs_k_minus_1_cumulative_logits_and_binary_stays_one_logit():
    from space import OrdinalCuts
    x = torch.randn(3, 1, *TINY_SIZE)
    binary, ordinal = build(tiny_spec()), build(tiny_spec(), grades=4)
    assert binary(x).shape == (3,) and ordinal(x).shape == (3, 3)
    assert isinstance(ordinal.head.cuts, OrdinalCuts) and not hasattr(binary.head, "cuts")
    # the same trunk and score layer: the ordinal state dict is the binary one plus the cutpoints
    extra = set(ordinal.state_dict()) - set(binary.state_dict())
    assert extra == {"head.cuts.first", "head.cuts.gaps"} and set(binary.state_dict()) <= set(ordinal.state_dict())
    with pytest.raises(ValueError, match="grades"):
        build(tiny_spec(), grades=1)


def test_ordinal_probabilities_are_monotone_and_a_proper_distribution_for_any_weights():
    from space import grade_probabilities
    torch.manual_seed(0)
    model = build(tiny_spec(), grades=5).eval()
    for p in model.head.cuts.parameters():  # arbitrary, even hostile, cutpoint weights
        p.data.normal_(0, 5)
    with torch.no_grad():
        logits = model(torch.randn(6, 1, *TINY_SIZE))
        at_least = torch.sigmoid(logits)
        probs = grade_probabilities(logits)
    assert torch.all(at_least[:, 1:] < at_least[:, :-1])  # P(grade >= k) falls with k
    assert probs.shape == (6, 5) and torch.all(probs >= 0)
    assert torch.allclose(probs.sum(dim=1), torch.ones(6), atol=1e-6)
    cuts = model.head.cuts.cutpoints()
    assert torch.all(cuts[1:] < cuts[:-1])
    # every threshold shares the ranking of one severity score
    order = torch.argsort(logits[:, 0])
    assert all(torch.equal(torch.argsort(logits[:, k]), order) for k in range(4))


def test_ordinal_head_cutpoints_start_spread_out():
    cuts = build(tiny_spec(), grades=4).head.cuts.cutpoints().detach()
    assert torch.allclose(cuts, torch.tensor([0.0, -math.log(2), -2 * math.log(2)]), atol=1e-6)
