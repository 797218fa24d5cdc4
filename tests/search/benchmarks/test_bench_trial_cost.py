"""benchmarks/bench_trial_cost.py: the phase clock and the table, on controlled inputs (no training)."""

from __future__ import annotations

import contextlib
import re
import types

import pytest

from tests.search.conftest import load_benchmark

bench = load_benchmark("bench_trial_cost")


def test_phase_clock_adds_each_calls_time_to_its_phase_and_puts_the_originals_back():
    owner = types.SimpleNamespace(step=lambda x: x + 1, train_model=lambda: types.SimpleNamespace(fitted="fit A"))
    original = owner.step
    clock = bench.PhaseClock()
    with contextlib.ExitStack() as stack:
        clock.wrap("step", "bn", stack, owner=owner)
        clock.wrap("train_model", "fit", stack, owner=owner)
        assert owner.step(1) == 2 and owner.step(2) == 3
        owner.train_model()
        seconds, fits = clock.take()
        assert set(seconds) == {"bn", "fit"} and all(v >= 0 for v in seconds.values())
        assert fits == ["fit A"]
        assert clock.take() == ({}, [])  # taken: the next trial starts from zero
    assert owner.step is original


def _row(gflops, ms, fixed, baseline=False):
    phases = dict.fromkeys(bench.PHASES, 1.0)
    return phases | {"gflops": gflops, "activation_mb": 10 * gflops, "batch_size": 2, "wall": 10.0 + fixed,
                     "ms_per_sample_epoch": ms, "fixed": fixed, "baseline": baseline, "spec": f"spec {gflops}"}


def test_print_table_sorts_by_gflops_names_the_baseline_and_fits_a_line(capsys):
    rows = [_row(5.0, 110.0, 2.0, baseline=True), _row(1.0, 30.0, 1.0), _row(3.0, 70.0, 3.0)]
    bench.print_table(rows, markdown=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")][2:]  # after the head and its rule
    assert [line.split(" | ")[0] for line in lines] == ["| 1.00", "| 3.00", "| 5.00 (seed baseline)"]
    # ms = 10 + 20 x GFLOPs exactly: the fit finds it.
    fit = re.search(r"ms per sample-epoch = ([\d.]+) \+ ([\d.]+) x GFLOPs: R\^2 ([\d.]+)", out)
    assert fit and float(fit[1]) == pytest.approx(10.0) and float(fit[2]) == pytest.approx(20.0)
    assert float(fit[3]) == pytest.approx(1.0)
    assert "median 2.0 s" in out
