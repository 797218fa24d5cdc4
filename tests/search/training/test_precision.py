import math

import pytest
import torch

import search.training.precision
from search.training.fidelity import choose_fidelity
from search.training.loop import Tensors, fit
from search.training.precision import (
    PRECISION_ENV,
    ProbeResult,
    choose_precision,
    clear_precision_cache,
    cpu_has_fast_bf16,
    kernels_use_bf16,
    probe_bf16,
)
from space import ArchSpec, LevelSpec, build

CPU = torch.device("cpu")
# Four levels at 16x32x24 put the last convolution at depth 2, where CPUs with the bf16 conv-backward
# fault (benchmarks/bf16_fault.py) return wrong, non-repeatable gradients; two levels stay clear of it.
DEEP = ArchSpec(levels=(LevelSpec(4), LevelSpec(4), LevelSpec(8), LevelSpec(8)), padding="same", head_units=(8,))
SHALLOW = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
SIZE = (16, 32, 24)
TINY_SIZE = (8, 12, 10)


@pytest.fixture(autouse=True)
def fresh_policy(monkeypatch):
    """Each test starts from the default policy and an empty verdict cache."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    clear_precision_cache()
    yield
    clear_precision_cache()


def _data(n=6, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Tensors(torch.rand(n, 1, *size, generator=g).half(), torch.tensor([0.0, 1.0] * (n // 2)))


def _fit(spec, **kw):
    torch.manual_seed(0)
    args = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 2, "epochs": 2, "device": CPU,
            "seed": 0, "amp": True}
    return fit(build(spec), _data(), _data(4, seed=1), **{**args, **kw})


def _count_probes(monkeypatch):
    calls = []
    real = search.training.precision.probe_bf16

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(search.training.precision, "probe_bf16", counting)
    return calls


def test_fit_default_precision_repeats_loss_histories():
    runs = [_fit(DEEP) for _ in range(2)]
    losses = [[h.train_loss for h in r.history] for r in runs]
    assert losses[0] == losses[1]
    assert all(math.isfinite(v) for v in losses[0])
    assert runs[0].precision in ("bf16", "float32") and runs[0].precision_reason


def test_choose_precision_caches_the_verdict_per_structure_and_shape(monkeypatch):
    monkeypatch.setattr(search.training.precision, "cpu_has_fast_bf16", lambda: True)  # probe on any CPU
    calls = _count_probes(monkeypatch)
    torch.manual_seed(0)
    first = choose_precision(build(SHALLOW), (2, 1, *TINY_SIZE), CPU)
    torch.manual_seed(1)
    again = choose_precision(build(SHALLOW), (2, 1, *TINY_SIZE), CPU)  # another fold: new weights, same spec
    assert again == first and len(calls) == 1
    choose_precision(build(SHALLOW), (4, 1, *TINY_SIZE), CPU)
    assert calls == [(2, 1, *TINY_SIZE), (4, 1, *TINY_SIZE)]


def test_choose_precision_forced_float32_skips_the_probe(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "float32")
    monkeypatch.setattr(search.training.precision, "cpu_has_fast_bf16", lambda: True)
    calls = _count_probes(monkeypatch)
    precision = choose_precision(build(SHALLOW), (2, 1, *TINY_SIZE), CPU)
    assert not precision.amp and precision.name == "float32"
    assert PRECISION_ENV in precision.reason
    assert calls == []
    assert f"forced by {PRECISION_ENV}=float32" in choose_fidelity(CPU).reason


def test_choose_precision_unknown_forced_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match=rf"{PRECISION_ENV}: expected one of auto, float32, bf16, got 'fp16'"):
        choose_precision(build(SHALLOW), (2, 1, *TINY_SIZE), CPU)


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16, so training is float32 unprobed")
def test_fit_trains_in_bf16_where_the_probe_passes():
    result = _fit(SHALLOW)
    assert result.precision == "bf16", result.precision_reason
    assert all(math.isfinite(h.train_loss) for h in result.history)


def test_fit_without_native_bf16_trains_in_float32_unprobed(monkeypatch):
    monkeypatch.setattr(search.training.precision, "cpu_has_fast_bf16", lambda: False)
    calls = _count_probes(monkeypatch)
    result = _fit(SHALLOW, epochs=1)
    assert (result.precision, result.precision_reason) == ("float32", "float32: no native bf16 on this CPU")
    assert calls == []
    assert "float32 (no native bf16 on this CPU)" in choose_fidelity(CPU).reason


@pytest.mark.parametrize("capability, isa, expected", [
    ("AVX512", None, True), ("AVX512", "ALL", True), ("AVX512", "avx512_core_bf16", True),
    ("AVX512", "AVX512_CORE_AMX", True), ("AVX512", "AVX10_1_512", True),
    ("AVX2", None, False),  # ATEN_CPU_CAPABILITY=avx2
    ("AVX512", "AVX2", False), ("AVX512", "AVX512_CORE", False), ("AVX512", "AVX512_CORE_VNNI", False),
    ("DEFAULT", None, False),
])
def test_kernels_capped_below_bf16_train_in_float32(capability, isa, expected):
    assert kernels_use_bf16(capability, isa) is expected


def test_onednn_capped_at_avx2_means_no_native_bf16_on_any_host(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_has_fast_bf16() is False


def test_fidelity_on_a_native_bf16_cpu_promises_only_probed_bf16(monkeypatch):
    monkeypatch.setattr(search.training.precision, "cpu_has_fast_bf16", lambda: True)
    fidelity = choose_fidelity(CPU)
    assert fidelity.amp
    assert "where a per-model probe finds it repeatable and close to float32, else float32" in fidelity.reason


def test_probe_rejects_non_repeatable_gradients(monkeypatch):
    monkeypatch.setattr(search.training.precision, "cpu_has_fast_bf16", lambda: True)
    runs = []

    def drifting(model, x, amp, seed):
        # Finite, but a little different each run, as the faulty kernels are; the same on any CPU.
        runs.append(amp)
        return {"weight": torch.tensor([1.0 + 1e-6 * len(runs)])}

    monkeypatch.setattr(search.training.precision, "gradients", drifting)
    precision = choose_precision(build(SHALLOW), (2, 1, *TINY_SIZE), CPU)
    assert not precision.amp
    assert precision.reason == "float32: bf16 gradients not repeatable on this CPU at this model's shapes"
    assert runs == [True] * search.training.precision.PROBE_REPEATS


def test_probe_rejects_layers_far_from_float32(monkeypatch):
    monkeypatch.setattr(search.training.precision, "layer_error", lambda *args: (0.9, "weight"))
    result = probe_bf16(build(SHALLOW), (2, 1, *TINY_SIZE), CPU)
    assert result.layers == 4 and result.max_rel_error == 0.9  # two convolutions, two linear layers
    verdict = result.verdict()
    assert not verdict.amp and "90% off float32" in verdict.reason


def test_probe_verdict_rejects_non_finite_gradients():
    result = ProbeResult(finite=False, repeatable=True, max_rel_error=math.inf, worst="", repeats=3, layers=1,
                         seconds=0.0)
    assert result.verdict().reason == "float32: bf16 gradients not finite on this CPU at this model's shapes"


def test_probe_leaves_the_model_and_random_state_untouched():
    torch.manual_seed(0)
    model = build(SHALLOW)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = probe_bf16(model, (2, 1, *TINY_SIZE), CPU)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert result.repeats == search.training.precision.PROBE_REPEATS and result.seconds > 0
