"""search.training.fidelity: the default input size, epochs, phantom count and cost cap for a device,
and the line saying why.

tests/search/training/test_precision.py covers the precision phrase of the fidelity line; these cover the rest.
"""

import pytest
import torch

from search.training.fidelity import (
    CPU_COST_CAP,
    CPU_DEFAULT,
    GPU_DEFAULT,
    Fidelity,
    baseline_gflops,
    choose_fidelity,
    device_defaults,
)
from space import baseline, cost, fit_to_size

CPU = torch.device("cpu")
GPU = torch.device("cuda")  # only its type is read: no GPU is needed


def test_device_defaults_picks_the_table_by_device_type():
    assert device_defaults(GPU) is GPU_DEFAULT and device_defaults(CPU) is CPU_DEFAULT
    assert device_defaults(torch.device("cuda:1")) is GPU_DEFAULT


def test_baseline_gflops_is_the_size_fitted_baselines_cost_and_grows_with_the_input():
    size = (16, 24, 20)
    spec, _ = fit_to_size(baseline(), size)
    assert baseline_gflops(size) == pytest.approx(cost(spec, size).gflops)
    assert baseline_gflops((32, 48, 40)) > baseline_gflops(size) > 0


def test_choose_fidelity_on_the_cpu_takes_the_cpu_defaults_and_caps_the_cost():
    f = choose_fidelity(CPU)
    assert isinstance(f, Fidelity)
    assert (f.size, f.epochs, f.n_phantoms, f.confirm_epochs) == (
        CPU_DEFAULT["size"], CPU_DEFAULT["epochs"], CPU_DEFAULT["n_phantoms"], CPU_DEFAULT["confirm_epochs"])
    assert f.max_gflops == round(CPU_COST_CAP * baseline_gflops(CPU_DEFAULT["size"]), 2)
    assert f.reason.startswith("fidelity: 32x64x64 voxels, 4 epochs per fold, ")
    assert f"({CPU_COST_CAP:g}x the baseline) narrowed to fit" in f.reason and "(CPU: sized for" in f.reason


def test_choose_fidelity_on_a_gpu_takes_the_seed_setting_without_a_cap():
    f = choose_fidelity(GPU)
    assert (f.size, f.epochs, f.confirm_epochs) == ((64, 128, 128), 30, 60)
    assert f.max_gflops is None and "GFLOPs" not in f.reason
    assert f.reason.endswith("(GPU: the seed's 64x128x128 input)")


def test_choose_fidelity_explicit_size_and_epochs_win_and_confirm_at_twice_the_epochs():
    f = choose_fidelity(CPU, size=(16, 24, 20), epochs=3, n_phantoms=40)
    assert (f.size, f.epochs, f.n_phantoms, f.confirm_epochs) == ((16, 24, 20), 3, 40, 6)
    assert f.max_gflops == round(CPU_COST_CAP * baseline_gflops((16, 24, 20)), 2)
    assert f.reason.startswith("fidelity: 16x24x20 voxels, 3 epochs per fold")
    assert f.reason.endswith("(as given on the command line)")


def test_choose_fidelity_size_given_alone_keeps_the_default_epochs_and_says_the_rest_is_the_default():
    f = choose_fidelity(CPU, size=[16, 24, 20], given_by="by the study")
    assert f.size == (16, 24, 20) and isinstance(f.size, tuple)
    assert (f.epochs, f.confirm_epochs) == (CPU_DEFAULT["epochs"], CPU_DEFAULT["confirm_epochs"])
    assert "(as given by the study; the rest is the CPU: sized for" in f.reason


def test_choose_fidelity_explicit_cap_replaces_the_cpu_default():
    f = choose_fidelity(CPU, size=(16, 24, 20), max_gflops=1.5)
    assert f.max_gflops == 1.5 and "specs above 1.5 GFLOPs/sample narrowed to fit" in f.reason
    assert "x the baseline" not in f.reason


def test_choose_fidelity_cap_of_zero_means_no_cap():
    f = choose_fidelity(CPU, max_gflops=0)
    assert f.max_gflops is None and "GFLOPs" not in f.reason


def test_choose_fidelity_explicit_cap_applies_on_a_gpu_too():
    assert choose_fidelity(GPU, max_gflops=20).max_gflops == 20.0
