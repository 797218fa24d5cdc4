import math

import pytest
import torch

import search.training.unit
from search.training.data import Tensors
from search.training.loop import FitResult, NonFiniteLossError, TrainingOutOfMemory
from search.training.unit import NON_FINITE, OUT_OF_MEMORY, Trained, TrainingFailed, predict_finite, train_model
from space import ArchSpec, LevelSpec, TrainSpec

SPEC = ArchSpec(levels=(LevelSpec(4), LevelSpec(4)), padding="same", head_units=())
SIZE = (16, 24, 20)


def _data(n: int = 4) -> Tensors:
    g = torch.Generator().manual_seed(0)
    return Tensors(torch.rand(n, 1, *SIZE, generator=g).half(), torch.tensor([0.0, 1.0] * (n // 2)))


def _train(**kw) -> Trained:
    return train_model(SPEC, TrainSpec(batch_size=2), _data(), None, **{"epochs": 1, "device": torch.device("cpu"),
                                                                          "seed": 3, "amp": False, **kw})


def test_train_model_is_reproducible_by_seed_and_hands_back_an_eval_model_on_the_cpu():
    a, b = _train(), _train()
    assert [e.train_loss for e in a.fitted.history] == [e.train_loss for e in b.fitted.history]
    assert not a.model.training and all(p.device.type == "cpu" for p in a.model.parameters())


@pytest.mark.parametrize(("error", "kind"), [(NonFiniteLossError(1, 1, math.inf), NON_FINITE),
                                             (TrainingOutOfMemory("out of memory on cpu (MemoryError)"),
                                              OUT_OF_MEMORY)])
def test_train_model_known_failures_are_one_typed_error(monkeypatch, error, kind):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(search.training.unit, "fit", failing)
    with pytest.raises(TrainingFailed) as caught:
        _train()
    assert caught.value.kind == kind and str(caught.value) == str(error)


def test_predict_finite_a_nan_probability_is_a_non_finite_failure():
    class Nan(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0],), math.nan)

    with pytest.raises(TrainingFailed, match="non-finite predictions") as caught:
        predict_finite(Trained(Nan(), FitResult()), _data().volumes, torch.device("cpu"))
    assert caught.value.kind == NON_FINITE
