"""benchmarks/bench_fidelity.py: the audit's analysis (rank correlations, top-k hit rates, confirmation power)
on synthetic runs, and its stratified draws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.search.conftest import load_benchmark

bench = load_benchmark("bench_fidelity")


@pytest.fixture(autouse=True)
def few_resamples(monkeypatch):
    monkeypatch.setattr(bench, "BOOTSTRAP", 100)
    monkeypatch.setattr(bench, "TOP_K_SAMPLES", 200)


def _write_runs(path: Path, truth: list[float], auc_at_4: list[float]) -> None:
    rows = []
    for i, (t, a) in enumerate(zip(truth, auc_at_4, strict=True)):
        spec = "course:baseline" if i == 0 else f"drawn:{i}"
        common = {"spec": spec, "index": i, "params": 1000 * (i + 1), "gflops": 0.1 * (i + 1), "cpu": "test"}
        for k in (0, 1):
            scores = {str(e): {"auc": a, "auc_bn": a, "val_loss": 1 - a, "val_loss_bn": 1 - a} for e in (2, 4)}
            rows.append(common | {"run": f"cheap{k}", "scores": scores, "train_loss": [0.7, 0.6, 0.5, 0.4]})
        rows.append(common | {"run": "truth0", "auc": t})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_score_that_orders_specs_as_the_truth_ranks_perfectly(tmp_path):
    truth = [0.80, 0.85, 0.70, 0.90, 0.75, 0.88]
    _write_runs(tmp_path / "a.jsonl", truth, auc_at_4=[t - 0.2 for t in truth])
    table = bench.build_table(tmp_path / "a.jsonl", [2, 4])
    rows = {r["score"]: r for r in bench.analyse(table)}
    assert rows["auc@4"]["spearman"][0] == pytest.approx(1.0)
    assert rows["auc@4"]["kendall"][0] == pytest.approx(1.0)
    assert rows["auc@4"]["top_k"][1] == 1.0
    assert rows["auc@4"]["cost_epochs"] == 4.0  # two folds of half the scans for 4 epochs
    assert rows["auc_1fold@4"]["cost_epochs"] == 2.0


def test_a_reversed_score_ranks_negatively_and_misses_the_best(tmp_path):
    truth = [0.80, 0.85, 0.70, 0.90, 0.75, 0.88]
    _write_runs(tmp_path / "a.jsonl", truth, auc_at_4=[1 - t for t in truth])
    rows = {r["score"]: r for r in bench.analyse(bench.build_table(tmp_path / "a.jsonl", [2, 4]))}
    assert rows["auc@4"]["spearman"][0] == pytest.approx(-1.0)
    assert rows["auc@4"]["top_k"][1] < 0.05


def test_top_k_hit_rate_counts_ties_against_the_best():
    truth = np.array([0.9, 0.8, 0.7])
    assert bench.top_k_hit_rate(np.array([1.0, 1.0, 1.0]), truth, k=1) == 0.0
    assert bench.top_k_hit_rate(np.array([1.0, 1.0, 1.0]), truth, k=3) == 1.0


def test_confirmation_power_grows_with_the_effect_and_falls_with_candidates_and_noise():
    noise = {"scan_sd": 0.05, "seed_sd": 0.02, "n_val": 43}
    assert bench.confirmation_power(noise, 0.0, 3, 1, 1) < 0.1
    assert bench.confirmation_power(noise, 0.03, 3, 1, 1) < bench.confirmation_power(noise, 0.05, 3, 1, 1)
    assert bench.confirmation_power(noise, 0.03, 3, 1, 3) < bench.confirmation_power(noise, 0.03, 3, 1, 1)
    noisier = dict(noise, seed_sd=0.05)  # seed noise lowers the power for an effect well above the rule's bar
    assert bench.confirmation_power(noisier, 0.08, 3, 1, 1) < bench.confirmation_power(noise, 0.08, 3, 1, 1)


def test_more_folds_do_not_beat_the_scan_noise_of_a_fixed_set():
    # Without seed noise, the folds only split the same scans: power is the same at 3 and 10 folds.
    noise = {"scan_sd": 0.05, "seed_sd": 0.0, "n_val": 43}
    three, ten = (bench.confirmation_power(noise, 0.03, folds, 1, 1) for folds in (3, 10))
    assert three == pytest.approx(ten)
    assert bench.confirmation_power(noise, 0.03, 3, 1, 1, n_scans=520) > bench.confirmation_power(noise, 0.03, 3, 1, 1)


def test_drawn_specs_fill_every_block_below_the_cap():
    specs, stats = bench.drawn_specs(6, seed=1, cap_gflops=3.26)
    assert len(specs) == 6
    blocks = [arch.levels[0].block for arch, _ in specs.values()]
    assert sorted(set(blocks)) == ["plain", "residual", "residual_inception"]
    assert all(bench.cost(arch, bench.SIZE).gflops <= 3.26 for arch, _ in specs.values())
    assert stats["raw_draws"] >= 6
