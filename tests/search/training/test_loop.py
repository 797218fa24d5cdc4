import math

import pytest
import torch

import search.training.loop
from search.training.loop import (
    OPTIMIZER_TABLE,
    NonFiniteLossError,
    Tensors,
    TrainingOutOfMemory,
    fit,
    make_optimizer,
    recalibrate_batchnorm,
)
from space import ArchSpec, LevelSpec, build
from space.spec import OPTIMIZERS

SPEC = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Tensors(torch.rand(n, 1, 8, 12, 10, generator=g).half(), torch.tensor([0.0, 1.0] * (n // 2)))


def _fit(model, val=True, **kw):
    args = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 2, "epochs": 2,
            "device": torch.device("cpu"), "seed": 0, "amp": False}
    return fit(model, _data(), _data(4, 1) if val else None, **{**args, **kw})


def test_fit_records_each_epoch_and_the_best_validation_epoch():
    torch.manual_seed(0)
    result = _fit(build(SPEC))
    assert [h.epoch for h in result.history] == [1, 2]
    assert 1 <= result.best_epoch <= 2 and math.isfinite(result.best_auc)
    assert result.best_auc == max(h.val.auc for h in result.history)


def test_fit_is_reproducible_by_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(_fit(build(SPEC)))
    assert [h.train_loss for h in runs[0].history] == [h.train_loss for h in runs[1].history]


def test_fit_without_validation_keeps_the_last_epoch():
    result = _fit(build(SPEC), val=False, epochs=3)
    assert result.best_epoch == 3 and math.isnan(result.best_auc)


def test_fit_non_finite_loss_is_a_typed_error():
    bad = Tensors(torch.full((4, 1, 8, 12, 10), float("nan")).half(), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        fit(build(SPEC), bad, None, optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=2, epochs=1,
            device=torch.device("cpu"), seed=0, augment=None, amp=False)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")])
def test_fit_out_of_memory_becomes_one_typed_error(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(search.training.loop, "augment_batch", fail)
    with pytest.raises(TrainingOutOfMemory, match=rf"out of memory on cpu \({type(error).__name__}\)"):
        _fit(build(SPEC))


def test_fit_other_runtime_errors_propagate_unchanged(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(search.training.loop, "augment_batch", fail)
    with pytest.raises(RuntimeError, match="shape mismatch") as err:
        _fit(build(SPEC))
    assert type(err.value) is RuntimeError


def test_recalibrate_batchnorm_sets_the_running_statistics_to_the_data_s():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm3d(1, momentum=0.01), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    volumes = (torch.rand(7, 1, 4, 6, 5) * 3 + 2).half()  # mean about 3.5; momentum 0.01 would need ~500 steps
    model(volumes[:2].float())
    data = Tensors(volumes, torch.zeros(7))
    assert recalibrate_batchnorm(model, data, torch.device("cpu"), batch_size=2)
    bn = model[0]
    used = volumes[:6].float()  # the last batch of one is left out, as in training
    assert bn.running_mean.item() == pytest.approx(used.mean().item(), rel=1e-4)
    assert bn.momentum == 0.01 and not model.training


def test_recalibrate_batchnorm_leaves_a_model_without_batch_norm_alone():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not recalibrate_batchnorm(model, Tensors(torch.rand(3, 1, 2, 2, 2).half(), torch.zeros(3)),
                                     torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_keep_freed_memory_is_taken_by_glibc_on_linux():
    import platform
    import sys

    from search.training.loop import keep_freed_memory

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected


def test_task_loss_at_two_grades_is_the_binary_cross_entropy():
    from search.training.loop import task_loss
    logits, labels = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert torch.equal(task_loss(logits, labels), expected)
    # one cumulative logit (K = 2 as an ordinal head) gives the same loss
    assert torch.allclose(task_loss(logits.reshape(-1, 1), labels), expected)


def test_task_loss_for_grades_sums_the_threshold_losses_and_reaches_cutpoints_and_trunk():
    from search.training.loop import task_loss
    logits = torch.tensor([[2.0, 0.5, -1.0], [-0.5, -1.0, -3.0]])
    labels = torch.tensor([2.0, 0.0])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    manual = -(targets * torch.nn.functional.logsigmoid(logits)
               + (1 - targets) * torch.nn.functional.logsigmoid(-logits)).sum(dim=1).mean()
    assert torch.allclose(task_loss(logits, labels), manual)
    model = build(ArchSpec(levels=(LevelSpec(4),), padding="same", head_units=()), grades=4)
    x = torch.rand(4, 1, 8, 12, 10)
    task_loss(model(x), torch.tensor([0.0, 1.0, 2.0, 3.0])).backward()
    for name in ("head.cuts.first", "head.cuts.gaps", "head.out.weight", "features.level1.block.conv1.conv.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_fit_trains_an_ordinal_head_and_scores_the_mean_grade_auc():
    from search.stats.metrics import OrdinalMetrics
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0.0, 1.0, 2.0, 3.0] * 4)
    volumes = (torch.rand(16, 1, 8, 12, 10, generator=g) + labels.view(-1, 1, 1, 1, 1)).half()
    data = Tensors(volumes, labels)
    torch.manual_seed(0)
    model = build(ArchSpec(levels=(LevelSpec(4),), padding="same", head_units=(), dropout=0.0), grades=4)
    result = fit(model, data, data, optimizer="adam", lr=3e-3, weight_decay=0.0, batch_size=4, epochs=6,
                 device=torch.device("cpu"), seed=0, augment=None)
    metrics = result.history[-1].val
    assert isinstance(metrics, OrdinalMetrics) and metrics.grades == 4
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert metrics.auc > 0.9  # the grade is the mean voxel value: trivially learnable
    probs = search.training.loop.predict_probs(model, volumes, torch.device("cpu"))
    assert probs.shape == (16, 3) and (probs[:, 1:] <= probs[:, :-1]).all()


def test_make_optimizer_knows_every_optimizer_a_spec_may_name_and_suggests_the_nearest():
    assert tuple(OPTIMIZER_TABLE) == OPTIMIZERS
    weights = [torch.nn.Parameter(torch.zeros(2))]
    kinds = {name: type(make_optimizer(weights, name, 1e-3, 1e-4)) for name in OPTIMIZERS}
    assert kinds == {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    sgd = make_optimizer(weights, "sgd", 1e-3, 0.0)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"]
    with pytest.raises(ValueError, match=r"unknown 'adamm'; did you mean 'adam'\?"):
        make_optimizer(weights, "adamm", 1e-3, 0.0)
