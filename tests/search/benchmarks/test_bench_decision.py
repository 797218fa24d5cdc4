"""benchmarks/bench_decision.py: the rules on controlled inputs, the two-look design, the recorded cases."""

from __future__ import annotations

import numpy as np
import pytest

from tests.search.conftest import load_benchmark

bench = load_benchmark("bench_decision")


def _observed(diff, se_total=0.03, gflops=(1.0, 2.0)):
    return bench.Observed(np.array(diff, dtype=float), 0.02, se_total, np.array(gflops[: len(diff)]), 5.0)


def test_bench_decision_rules_on_controlled_differences():
    d = bench.Design(k=2)
    assert bench.rule_today(_observed([0.10, 0.02]), d, 0.05) == 0
    assert bench.rule_today(_observed([0.03, 0.02]), d, 0.05) is None
    # Non-inferiority: ahead, and the bound (0.045 - 1.96 x 0.03 = -0.014) above -0.02.
    assert bench.rule_ni(_observed([0.045, 0.0]), d, 0.05) == 0
    assert bench.rule_ni(_observed([0.03, 0.0]), d, 0.05) is None
    # Lexicographic: both clear the margin and neither is distinguishably worse: the cheaper one ships.
    assert bench.rule_ni_cost(_observed([0.06, 0.05], gflops=(2.0, 1.0)), d, 0.05) == 1
    assert bench.rule_ni_cost(_observed([-0.05, -0.06]), d, 0.05) is None


def test_bench_decision_noise_scales_with_scans_and_runs():
    noise = bench.Noise()
    assert noise.scan_se(bench.Design(n_scans=130)) == pytest.approx(0.048 * np.sqrt(43 / 130))
    assert noise.scan_se(bench.Design(repeats=2)) == noise.scan_se(bench.Design())  # the same scans again
    assert noise.seed_se(bench.Design(repeats=2)) == pytest.approx(noise.seed_se(bench.Design()) / np.sqrt(2))


def test_bench_decision_two_look_design_meets_the_issues_targets():
    pool = bench.load_pool(bench.AUDIT, bench.SEED_SD)
    rows = bench.controlled_table(pool, [bench.CHOSEN], bench.Noise(), 0.05, 3000, seed=0)
    built = next(r for r in rows if r["rule"] == "ni+cost")
    assert built["+0.05"] >= 0.67 and built["-0.02"] <= 0.06 and built["-0.05"] <= 0.01
    assert 9 < built["runs"] < 15  # the second look runs only when a candidate leads


def test_bench_decision_recorded_cases_the_one_look_rule_rejected_get_a_second_look():
    rows = {(r["confirmation"], r["candidate"]): r for r in bench.recorded_table(bench.Noise(), 0.05)}
    new_user = rows[("issue 35, a new user's seed pair (Zen 4)", "4 levels 16-16-32-32")]
    assert new_user["one-look rule"] == "baseline" and new_user["two-look rule"] == "second look"
    # trial 43 trails trial 31 in the same confirmation: not the leader.
    assert rows[("RESULTS 'Time budget', split 0 x seed 1", "trial 43")]["two-look rule"] == "baseline"


def test_bench_decision_main_prints_every_table(capsys):
    assert bench.main(["--n", "30", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "P(ship a candidate)" in out and "simulated studies" in out and "recorded confirmations" in out
    assert out.count("| design |") == 2
