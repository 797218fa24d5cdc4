"""search.selection.budget: the time line a run prints at its start, and the rule that stops the search in time.

No test here times anything: speeds are given, and the clock is stubbed.
"""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

import search.run
import search.selection.budget
from search.run import budget_minutes, main
from search.selection.budget import (
    CONFIRM_OVERHEAD,
    CONFIRM_SPEED_LIMIT,
    MIX,
    SAFETY,
    STEP_TO_TRIAL,
    TRIAL_OVERHEAD_S,
    BudgetStop,
    Recalibrate,
    Speed,
    Workload,
    baseline_trial_seconds,
    confirm_seconds,
    measure_speed,
    plan,
    pruned_saving,
    speed_from_trial,
    trial_seconds,
)
from search.selection.confirm import ConfirmSettings
from search.selection.objective import Objective
from search.study import schema
from search.training.loop import resolve_device

SPEED = Speed(0.1, "float32", "Test CPU (AVX-512: no)")
WORK = Workload(trials=50, trial_samples=520, confirm_samples=9360)  # 52 s a trial and 936 s of baseline steps


class FakeClock:
    """Advances ``step`` seconds every time it is read."""

    def __init__(self, start: float = 1000.0, step: float = 0.0):
        self.t = start
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_plan_within_the_budget_states_the_latest_end():
    p = plan(SPEED, WORK, budget_s=3 * 3600, elapsed_s=60.0, clock=FakeClock(), wall=lambda: 0.0)
    assert p.deadline == pytest.approx(1000.0 + 3 * 3600 - 60.0)
    assert "52 ms" not in p.line and "100 ms/sample" in p.line and "Test CPU" in p.line
    assert "within the 180 min budget" in p.line and "at the latest" in p.line
    assert p.search_s == pytest.approx(50 * trial_seconds(SPEED, WORK))
    # 52 s of the baseline's steps a trial: its trial runs STEP_TO_TRIAL times its steps, the study's mix MIX times it.
    assert trial_seconds(SPEED, WORK) == pytest.approx(52 * STEP_TO_TRIAL * MIX + TRIAL_OVERHEAD_S)
    # 936 s of steps for the confirmation's three slots: the baseline's at its own speed, two candidates' at the mix's.
    assert confirm_seconds(SPEED, WORK) == pytest.approx(936 * STEP_TO_TRIAL * (1 + 2 * MIX) / 3 * CONFIRM_OVERHEAD)


def test_trial_seconds_take_off_what_the_pruner_saves_on_average_but_not_for_an_unpruned_trial():
    work = replace(WORK, pruned_saving=0.25)  # half the trials pruned after the first of two folds
    assert trial_seconds(SPEED, work) - TRIAL_OVERHEAD_S == pytest.approx(0.75 * (trial_seconds(SPEED, WORK) -
                                                                                  TRIAL_OVERHEAD_S))
    assert trial_seconds(SPEED, work, pruned=False) == trial_seconds(SPEED, WORK)
    assert pruned_saving(2, prunes=True) == 0.25 and pruned_saving(3, prunes=True) == pytest.approx(1 / 3)
    assert pruned_saving(2, prunes=False) == 0.0 and pruned_saving(1, prunes=True) == 0.0
    # The seed baseline's own trial: at its speed, not the mix's, and never pruned.
    assert baseline_trial_seconds(SPEED, work) == pytest.approx(52 * STEP_TO_TRIAL + TRIAL_OVERHEAD_S)


def test_confirm_seconds_price_the_baselines_runs_at_its_own_speed_and_the_candidates_at_the_mix():
    # Two candidates and the baseline, then the leader and the baseline again: 2 of the 5 slots are the baseline's.
    work = replace(WORK, confirm_samples=5000, confirm_candidates=3, second_look=True)
    per_slot = 1000 * SPEED.seconds_per_sample * STEP_TO_TRIAL * CONFIRM_OVERHEAD
    assert confirm_seconds(SPEED, work) == pytest.approx(per_slot * (2 + 3 * MIX))
    alone = replace(WORK, confirm_samples=1000, confirm_candidates=1)  # the baseline alone (--confirm-top 0)
    assert confirm_seconds(SPEED, alone) == pytest.approx(per_slot)


def test_plan_over_the_budget_says_how_many_trials_fit():
    p = plan(SPEED, WORK, budget_s=2400, elapsed_s=0.0, clock=FakeClock(), wall=lambda: 0.0)
    fits = int((2400 - SAFETY * confirm_seconds(SPEED, WORK)) // trial_seconds(SPEED, WORK))
    assert fits > 1
    assert "more than the 40 min budget" in p.line and f"about {fits} of the 50 fit" in p.line
    assert "--budget none" in p.line


def test_plan_says_when_not_even_the_baseline_and_the_confirmation_fit():
    # Never a promise the machine cannot keep: the line gives the time the run will really take.
    p = plan(SPEED, WORK, budget_s=600, elapsed_s=0.0, clock=FakeClock(), wall=lambda: 0.0)
    least = baseline_trial_seconds(SPEED, WORK) + confirm_seconds(SPEED, WORK)  # the baseline at its own speed
    assert "not even the seed baseline and the confirmation fit" in p.line
    assert f"({least / 60:.0f} min)" in p.line and "raise --budget" in p.line
    # An estimate, and said as one: the measured times decide whether more trials run.
    assert "by this estimate" in p.line and "adds trials only while their measured times leave room" in p.line


def test_plan_without_a_budget_has_no_deadline():
    p = plan(SPEED, WORK, budget_s=None, elapsed_s=0.0)
    assert p.deadline is None and "no --budget" in p.line


def _study_with_trials(n: int, samples_per_s: float = 10.0) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i in range(n):
        trial = study.ask()
        trial.set_user_attr(schema.SAMPLES_PER_S, samples_per_s)
        study.tell(trial, 0.5 + i / 100)
    study.stopped = False
    study.stop = lambda: setattr(study, "stopped", True)  # Study.stop works only inside optimize()
    return study


def test_budget_stop_stops_when_one_more_trial_and_the_confirmation_would_not_fit():
    clock = FakeClock()
    study = _study_with_trials(2)
    work = Workload(trials=50, trial_samples=100, confirm_samples=3000, confirm_candidates=2)  # 300 s at 10/s
    stop = BudgetStop(deadline=clock.t + 1000.0, speed=SPEED, work=work, candidates=lambda s: [0, 1], clock=clock)
    first, second = study.trials
    clock.t += 100.0  # the first trial took 100 s: 900 s left, 100 + 1.25 x 1.2 x 300 needed
    stop(study, first)
    assert stop.stopped is None and not study.stopped
    clock.t += 500.0  # the second took 500 s: 400 s left, 500 + 450 needed
    stop(study, second)
    assert study.stopped and "time budget" in stop.stopped and "confirmation" in stop.stopped


def test_budget_stop_counts_every_confirmation_slot_before_the_search_has_filled_them():
    # One complete trial (the baseline) but three specs to confirm: the two unknown slots count at its speed,
    # and the baseline's share is a third of the confirmation, not all of it.
    study = _study_with_trials(1, samples_per_s=10.0)
    work = Workload(trials=50, trial_samples=10, confirm_samples=3000, confirm_candidates=3)
    seconds = search.selection.budget.measured_confirm_seconds(study, [0], work, SPEED)
    assert seconds == pytest.approx(3000 / 10 * search.selection.budget.CONFIRM_OVERHEAD)


def test_budget_prices_a_confirmation_of_runs_trained_at_once_at_their_measured_share_of_the_cores():
    study = _study_with_trials(1, samples_per_s=10.0)
    one = Workload(trials=50, trial_samples=10, confirm_samples=3000, confirm_candidates=3)
    two = replace(one, confirm_jobs=2)
    speedup = 2 * search.selection.budget.CONFIRM_JOB_EFFICIENCY
    assert confirm_seconds(SPEED, two) == pytest.approx(confirm_seconds(SPEED, one) / speedup)
    measured = search.selection.budget.measured_confirm_seconds
    assert measured(study, [0], two, SPEED) == pytest.approx(measured(study, [0], one, SPEED) / speedup)
    assert search.selection.budget.confirm_speedup(1) == 1.0


def test_plan_states_the_run_without_and_with_the_second_look_as_a_range():
    work = replace(WORK, confirm_candidates=3, second_look=True)
    p = plan(SPEED, work, budget_s=None, elapsed_s=0.0)
    search_s = 50 * trial_seconds(SPEED, work)
    without, full = confirm_seconds(SPEED, work, second_look=False), confirm_seconds(SPEED, work)
    # The second look trains the baseline and the leader once more: 2 of the 5 slots, one of them the baseline's.
    assert without == pytest.approx(full * (1 + 2 * MIX) / (2 + 3 * MIX))
    assert (f"take about {(search_s + without) / 60:.0f}-{(search_s + full) / 60:.0f} min (the longer if a candidate "
            "leads and gets a second look)") in p.line
    assert confirm_seconds(SPEED, WORK, second_look=False) == confirm_seconds(SPEED, WORK)  # none to leave out


def test_budget_stop_reads_the_confirmation_from_the_candidates_measured_speed():
    clock = FakeClock()
    slow = _study_with_trials(1, samples_per_s=1.0)  # a candidate that trains 10x slower than the other study's
    fast = _study_with_trials(1, samples_per_s=10.0)
    work = Workload(trials=50, trial_samples=10, confirm_samples=1000, confirm_candidates=1)
    for study, stops in ((fast, False), (slow, True)):
        stop = BudgetStop(deadline=clock.t + 500.0, speed=SPEED, work=work, candidates=lambda s: [0], clock=clock)
        stop(study, study.trials[0])
        assert (stop.stopped is not None) == stops == study.stopped


def test_budget_stop_prices_the_first_trials_unpruned_as_the_pruner_never_stops_them():
    work = Workload(trials=50, trial_samples=520, confirm_samples=0, pruned_saving=0.25)
    full, mean = trial_seconds(SPEED, work, pruned=False), trial_seconds(SPEED, work)
    study = _study_with_trials(1, samples_per_s=10.0)
    for left, stops in ((full + 1.0, False), ((full + mean) / 2, True)):
        clock = FakeClock()
        stop = BudgetStop(deadline=clock.t + left, speed=SPEED, work=work, candidates=lambda s: [0], clock=clock)
        stop(study, study.trials[0])  # a first trial that took no time: the floor decides
        assert (stop.stopped is not None) == stops


def test_budget_minutes_defaults_by_device_and_refuses_nonsense():
    cpu = resolve_device("cpu")
    assert budget_minutes(None, cpu) == search.run.DEFAULT_CPU_BUDGET_MIN
    assert budget_minutes("none", cpu) is None and budget_minutes("45", cpu) == 45.0
    assert budget_minutes("90m", cpu) == 90.0
    for bad in ("0", "-5", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match="--budget"):
            budget_minutes(bad, cpu)


def test_measure_speed_times_the_baseline_at_the_study_size():
    speed = measure_speed((16, 16, 32), resolve_device("cpu"), amp=False, steps=1)
    assert speed is not None and 0 < speed.seconds_per_sample < 10 and speed.precision == "float32"


SMALL = ["--size", "16", "16", "32", "--epochs", "1", "--workers", "1", "--no-confirm", "--pruner", "none"]


def test_run_under_a_slow_clock_stops_adding_trials_inside_its_budget(tiny_data, tmp_path, monkeypatch, capsys):
    # Each read of the budget's clock advances it 40 s, so every trial "takes" 40 s of a 3-minute budget: the
    # run must stop early, say why, leave nothing running, and exit 0.
    monkeypatch.setattr(search.selection.budget, "now", FakeClock(step=40.0))
    code = main(["--data", str(tiny_data), "--studies-dir", str(tmp_path), *SMALL, "--trials", "20",
                 "--budget", "3"])
    assert code == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path}/lungct.db")
    assert 1 <= len(study.trials) < 20
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    assert "time: the seed baseline trains at" in out and "time budget: the search stopped" in out
    assert study.user_attrs[schema.STUDY_TIME_PLAN]["budget_s"] == 180.0


def test_run_hands_the_speed_limit_to_its_trials_and_confirmation_exactly_under_a_budget(tiny_data, tmp_path,
                                                                                      monkeypatch):
    # The limit's effect on candidates and trials is tested in test_confirm and test_objective.
    limits = []
    real_init = Objective.__init__

    def spy(self, folds, settings, *args, **kwargs):
        limits.append(settings.speed_limit)
        real_init(self, folds, settings, *args, **kwargs)

    monkeypatch.setattr(Objective, "__init__", spy)
    confirm = ["--confirm-top", "1", "--confirm-epochs", "1"]
    for budget, limit in (("600", CONFIRM_SPEED_LIMIT), ("none", None)):
        where = tmp_path / budget
        args = [a for a in ["--data", str(tiny_data), "--studies-dir", str(where), *SMALL, "--trials", "2",
                            "--budget", budget, *confirm] if a != "--no-confirm"]
        assert main(args) == 0
        study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{where}/lungct.db")
        assert ConfirmSettings.from_dict(study.user_attrs["confirmation"]["settings"]).speed_limit == limit
        assert limits[-1] == limit


def test_run_states_its_time_at_the_start(tiny_data, tmp_path, capsys):
    assert main(["--data", str(tiny_data), "--studies-dir", str(tmp_path), *SMALL, "--trials", "1",
                 "--budget", "none"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("time:"))
    assert "ms/sample here" in line and "1 trial takes about" in line and "no --budget" in line
    assert out.index("time:") < out.index("trial 0")


def _baseline_trial(study: optuna.Study, wall_seconds: float, baseline: bool = True) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    trial.set_user_attr(schema.BASELINE, baseline)
    trial.set_user_attr(schema.WALL_SECONDS, wall_seconds)
    study.tell(trial, 0.7)
    return study.trials[-1]


def test_recalibrate_restates_the_time_from_the_baseline_trial():
    # The start measurement said 100 ms/sample; the baseline's own trial took 40 s for 520 sample-epochs.
    study = optuna.create_study(direction="maximize")
    trial = _baseline_trial(study, 40.0)
    said = []
    recalibrate = Recalibrate(SPEED, WORK, said.append)
    recalibrate(study, trial)
    speed = speed_from_trial(trial, WORK, SPEED)
    assert speed is not None and speed.precision == SPEED.precision and speed.machine == SPEED.machine
    assert trial_seconds(speed, WORK) == pytest.approx((40.0 - TRIAL_OVERHEAD_S) * MIX + TRIAL_OVERHEAD_S)
    total = 49 * trial_seconds(speed, WORK) + confirm_seconds(speed, WORK)
    assert total < 49 * trial_seconds(SPEED, WORK)  # the start line was pessimistic here
    assert said == [recalibrate.line]
    assert "from the seed baseline's own trial (40 s, 73 ms per sample-epoch)" in said[0]
    assert f"the 49 trials left and the confirmation take about {total / 60:.0f} min (no --budget)" in said[0]
    assert study.user_attrs[schema.STUDY_TIME_PLAN]["after_baseline"] == said[0]
    recalibrate(study, _baseline_trial(study, 400.0))  # only the run's first trial counts
    assert said == [recalibrate.line] and "(40 s" in said[0]


def test_recalibrate_under_a_budget_says_how_many_fit_and_reprices_the_stop_rule():
    clock = FakeClock()
    study = optuna.create_study(direction="maximize")
    trial = _baseline_trial(study, 40.0)
    stop = BudgetStop(deadline=clock.t + 1800.0, speed=SPEED, work=WORK, candidates=lambda s: [0], clock=clock)
    said = []
    Recalibrate(SPEED, WORK, said.append, stop, clock=clock, wall=lambda: 0.0)(study, trial)
    speed = speed_from_trial(trial, WORK, SPEED)
    assert stop.speed == speed
    fits = int((1800.0 - SAFETY * confirm_seconds(speed, WORK)) // trial_seconds(speed, WORK))
    assert 1 <= fits < 49
    assert f"more than the budget leaves (30 min): about {fits} of them fit" in said[0]
    roomy = BudgetStop(deadline=clock.t + 10 * 3600.0, speed=SPEED, work=WORK, candidates=lambda s: [0], clock=clock)
    said.clear()
    Recalibrate(SPEED, WORK, said.append, roomy, clock=clock, wall=lambda: 0.0)(study, trial)
    assert "within the budget: done by" in said[0]


def test_recalibrate_keeps_the_start_line_when_the_first_trial_is_not_the_baseline():
    # A resumed study: its first trial in this run is a searched spec, whose time says nothing about the baseline.
    study = optuna.create_study(direction="maximize")
    stop = BudgetStop(deadline=1e6, speed=SPEED, work=WORK, candidates=lambda s: [0], clock=FakeClock())
    said = []
    recalibrate = Recalibrate(SPEED, WORK, said.append, stop)
    recalibrate(study, _baseline_trial(study, 40.0, baseline=False))
    recalibrate(study, _baseline_trial(study, 40.0))
    assert said == [] and stop.speed == SPEED and schema.STUDY_TIME_PLAN not in study.user_attrs


def test_run_restates_its_time_after_the_baseline_trial(tiny_data, tmp_path, capsys):
    assert main(["--data", str(tiny_data), "--studies-dir", str(tmp_path), *SMALL, "--trials", "2",
                 "--budget", "none"]) == 0
    out = capsys.readouterr().out
    assert out.index("trial 0") < out.index("time, from the seed baseline's own trial") < out.index("trial 1")
    assert "the 1 trial left takes about" in out
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path}/lungct.db")
    assert "the 1 trial left" in study.user_attrs[schema.STUDY_TIME_PLAN]["after_baseline"]
