"""A run's time budget: how fast this machine trains, what the trials and the confirmation will take here,
and when the search must stop adding trials so that the confirmation still ends inside the budget.

The CPUs this project runs on differ by about 8x for the same study (an AVX2-only AMD EPYC trains in
float32; AVX512-BF16 and AMX machines in bf16 where the probe allows it), so no fixed trial count can
promise a duration. Instead a run measures:

- before the first trial, the seed baseline's training speed at the study's input size (a few training
  steps: :func:`measure_speed`), from which :func:`plan` states, in one line, what the run will take here
  and, under a budget, until when the search runs;
- after the seed baseline's own trial (trial 0 of a new study), its wall time, a measurement of the real
  thing: :class:`Recalibrate` states the line again from it for the trials left and hands the speed to the
  stop rule (the few steps before any trial misread a Zen 4 machine by up to 1.5x, benchmarks/RESULTS.md);
- after every trial, the trials' own wall times and the measured speed of the specs the confirmation
  would train now (:class:`BudgetStop`), so the search stops adding trials as soon as one more trial plus
  that confirmation would end past the deadline.

Every time this module reads comes from :func:`now` (the monotonic clock), so tests drive the rule with
a stubbed clock instead of timing anything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.study import schema
from search.training.data import Tensors
from search.training.loop import NonFiniteLossError, TrainingOutOfMemory, fit
from search.training.precision import cpu_model
from space import baseline, baseline_train, build, fit_to_size

Clock = Callable[[], float]


def now() -> float:
    """The clock budgets run on (monotonic seconds); tests replace it."""
    return time.monotonic()

# A search trial's time per sample-epoch (its scoring included) over the three-step measurement's, on a quiet
# machine: 34 against 28 ms on a 2-core AMX Xeon, 175 against 150 ms (warm steps) on a 2-core AVX2 EPYC
# (benchmarks/RESULTS.md). The 1.4 assumed before was measured with other work beside the run.
STEP_TO_TRIAL = 1.2
# A study's trials are a mix of specs, nearly all cheaper than the seed baseline (the cost cap is 0.6x its GFLOPs).
# Their mean time per sample-epoch relative to the baseline's: 0.7. Measured by benchmarks/bench_trial_cost.py on
# eight specs drawn from the default space at 0.05-2.1 GFLOPs: 0.11-0.84x the baseline's 150 ms on an AVX2 EPYC,
# 0.64-0.84x between 0.5 and 2.2 GFLOPs, where most draws fall (median 1.2 GFLOPs after the cap; benchmarks/
# RESULTS.md, "Where a trial's time goes"). At the 1.2 assumed before, the recorded 50-trial runs' start lines said
# 8 and 23 trials would fit where 17 and 44 ran. The start line and the first trials' floor use it; the stop rule
# then reads the trials' own durations and the candidates' own speeds.
MIX = 0.7
# The share of trials the pruner stops after their first fold (median and Hyperband over 2 folds): the recorded
# 50-trial runs at the CPU default pruned 48%, 50% and 72% of their trials.
PRUNED_SHARE = 0.5
# A confirmation run's time per sample-epoch (batch-norm recomputation, scoring and stored weights included) over
# the training time per sample of a search trial of the same spec: its fixed costs spread over 12 epochs instead of
# 4. The seed baseline's confirmation runs took 30 s for 1,044 sample-epochs against 29.5 ms per sample in its
# trial on an AMX Xeon (1.0), 166-175 s against 150 ms on an AVX2 EPYC (1.1); 1.2 before was 1.3-1.5x pessimistic.
CONFIRM_OVERHEAD = 1.0
# Confirmation runs trained at once in single-threaded processes, each at this share of one run's speed on all the
# threads: on a quiet 2-core AMD EPYC (Zen 4, AVX512-BF16) a confirmation of 9 runs took 194 s two at a time against
# 232 s one at a time (1.2x; a seed-baseline run 52 s on one thread against 33 s on two; benchmarks/RESULTS.md).
CONFIRM_JOB_EFFICIENCY = 0.6
# Under a budget, a trial whose second epoch trains more than this many times slower per sample than the seed
# baseline's own trial is pruned there (search.selection.objective), and the confirmation leaves out a trunk that
# trained slower (search.selection.candidates.select_candidates): GFLOPs do not bound CPU time. Without it, one
# residual-inception trunk of 3.0 GFLOPs that trained 5x slower than the baseline stopped a default study on an AMX
# Xeon after 19 of 50 trials (its confirmation priced at 38 min), and TPE then spent 75% of the trial time near it.
# At 1.0, specs 1.1-1.2x slower were pruned or not by timing noise alone (benchmarks/RESULTS.md); 2 leaves only
# the clearly slow ones, and the confirmation costs at most twice the baseline's slots.
CONFIRM_SPEED_LIMIT = 2.0
# Each trial also scores its folds and writes the study: overhead on top of its training steps.
TRIAL_OVERHEAD_S = 2.0
# The confirmation is reserved out of the budget at this multiple of its estimate (the start line and
# the stop rule alike).
SAFETY = 1.25
MEASURE_STEPS = 3


@dataclass(frozen=True)
class Speed:
    """The seed baseline's training speed on this machine at one input size.

    Attributes:
        seconds_per_sample: Training time per sample (forward, backward, augmentation) at batch 2.
        precision: What the measured steps trained in (``bf16`` or ``float32``).
        machine: The CPU or GPU it was measured on, in words.
    """

    seconds_per_sample: float
    precision: str
    machine: str


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def measure_speed(size: tuple[int, int, int], device: torch.device, amp: bool,
                  steps: int = MEASURE_STEPS) -> Speed | None:
    """Time ``steps`` training steps of the seed baseline at ``size`` after one warm-up step (about 1-5 s on a
    CPU), exactly as a trial trains it (``search.training.loop.fit``: augmentation, channels-last, the bf16 probe).

    Returns None when the baseline cannot train here (out of memory, a non-finite loss on random data): the
    run then says it could not measure, and its trials report their own failures.
    """
    try:
        return _measure(size, device, amp, steps)
    except (TrainingOutOfMemory, NonFiniteLossError):
        return None


def _measure(size: tuple[int, int, int], device: torch.device, amp: bool, steps: int) -> Speed:
    spec, _ = fit_to_size(baseline(), size)
    train = baseline_train()
    generator = torch.Generator().manual_seed(0)
    n = train.batch_size * (steps + 1)
    data = Tensors(torch.rand((n, 1, *size), generator=generator).half(), (torch.arange(n) % 2).float())
    torch.manual_seed(0)
    model = build(spec)
    warm = Tensors(data.volumes[: train.batch_size], data.labels[: train.batch_size])
    fit(model, warm, None, optimizer=train.optimizer, lr=train.lr, weight_decay=train.weight_decay,
        batch_size=train.batch_size, epochs=1, device=device, seed=0, amp=amp)
    fitted = fit(model, data, None, optimizer=train.optimizer, lr=train.lr, weight_decay=train.weight_decay,
                 batch_size=train.batch_size, epochs=1, device=device, seed=0, amp=amp)
    return Speed(fitted.train_seconds / n, fitted.precision, _machine(device))


@dataclass(frozen=True)
class Workload:
    """What a run will train, in sample-epochs of the seed baseline's speed.

    Attributes:
        trials: Trials this run adds.
        trial_samples: Sample-epochs one unpruned trial trains (folds x epochs x training scans per fold).
        confirm_samples: Sample-epochs of the whole confirmation (candidates x folds x epochs x scans); 0 when
            the run does not confirm.
        confirm_candidates: How many specs the confirmation's first look trains (the top trunks and the baseline).
        second_look: Whether ``confirm_samples`` also holds the second look (the leader and the baseline once
            more), reserved whether or not a candidate will lead.
        pruned_saving: The expected share of the trials' sample-epochs the pruner saves (a pruned trial stops
            after its first fold): :data:`PRUNED_SHARE` of the folds after the first, 0 without pruning.
        confirm_jobs: Confirmation runs trained at once (``search.selection.confirm_runs``); the confirmation's
            time is divided by :func:`confirm_speedup` of it.
    """

    trials: int
    trial_samples: int
    confirm_samples: int
    confirm_candidates: int = 3
    second_look: bool = False
    pruned_saving: float = 0.0
    confirm_jobs: int = 1


def trial_seconds(speed: Speed, work: Workload, pruned: bool = True) -> float:
    """The expected wall time of one trial here: a spec of the study's mix, on average over what the pruner saves
    (``pruned``), else trained to its last fold."""
    share = 1.0 - work.pruned_saving if pruned else 1.0
    return work.trial_samples * share * speed.seconds_per_sample * STEP_TO_TRIAL * MIX + TRIAL_OVERHEAD_S


def pruned_saving(folds: int, prunes: bool) -> float:
    """:attr:`Workload.pruned_saving` for ``folds`` search folds: a pruned trial skips every fold after its first."""
    return PRUNED_SHARE * (folds - 1) / folds if prunes and folds > 1 else 0.0


def baseline_trial_seconds(speed: Speed, work: Workload) -> float:
    """The expected wall time of the seed baseline's own trial here (never pruned, at its own speed)."""
    return work.trial_samples * speed.seconds_per_sample * STEP_TO_TRIAL + TRIAL_OVERHEAD_S


def confirm_seconds(speed: Speed, work: Workload, second_look: bool = True) -> float:
    """The expected wall time of the confirmation here, before any trial has measured a candidate: the baseline's
    runs at its own speed, the candidates' at the mix's. ``second_look=False``: without the second look's runs,
    which train only when a candidate leads after the first."""
    slots = work.confirm_candidates + 2 * work.second_look
    look = second_look and work.second_look
    baseline_slots = 1 + look
    used = work.confirm_candidates + 2 * look
    relative = (baseline_slots + MIX * (used - baseline_slots)) / max(slots, 1)
    return (work.confirm_samples * speed.seconds_per_sample * STEP_TO_TRIAL * relative * CONFIRM_OVERHEAD
            / confirm_speedup(work.confirm_jobs))


def _about(low: float, high: float) -> str:
    """A duration, or the range between the run without and with the confirmation's second look."""
    if high < 90 or round(low / 60) == round(high / 60):
        return f"about {_minutes(high)}"
    return f"about {low / 60:.0f}-{high / 60:.0f} min (the longer if a candidate leads and gets a second look)"


def confirm_speedup(jobs: int) -> float:
    """How many times faster the confirmation's runs train ``jobs`` at a time, one CPU process each, than one at
    a time on all the threads (:data:`CONFIRM_JOB_EFFICIENCY` per process; 1 for one at a time)."""
    return 1.0 if jobs <= 1 else jobs * CONFIRM_JOB_EFFICIENCY


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _at(wall_epoch: float) -> str:
    return time.strftime("%H:%M", time.localtime(wall_epoch))


def _trials_that_fit(remaining_s: float, trial_s: float, confirm_s: float) -> int:
    """How many trials of ``trial_s`` fit in ``remaining_s`` beside the confirmation reserved at SAFETY."""
    return math.floor((remaining_s - SAFETY * confirm_s) / max(trial_s, 1e-9))


@dataclass(frozen=True)
class Plan:
    """What a run expects to take here, and, under a budget, its deadline.

    Attributes:
        search_s: Expected wall time of all the run's trials.
        confirm_s: Expected wall time of the confirmation (0 without one).
        budget_s: The run's budget in seconds, None for no budget.
        deadline: The budget's end on the run's clock (``clock() + remaining``), None for no budget.
        line: The sentence the run prints at its start.
    """

    search_s: float
    confirm_s: float
    budget_s: float | None
    deadline: float | None
    line: str


def plan(speed: Speed, work: Workload, budget_s: float | None, elapsed_s: float, clock: Clock | None = None,
         wall: Clock = time.time) -> Plan:
    """The run's expected duration and deadline, and the line that says them.

    Args:
        speed: The seed baseline's speed here.
        work: What the run trains.
        budget_s: The time budget of the whole command (None: no budget).
        elapsed_s: Seconds the command has already spent (data generation, loading, the measurement).
        clock: The clock the deadline is on (default :func:`now`).
        wall: The wall clock, for the times of day the line gives.
    """
    search_s = work.trials * trial_seconds(speed, work)
    confirm_s = confirm_seconds(speed, work)
    total = search_s + confirm_s
    trials = f"{work.trials} trial{'s' * (work.trials != 1)}" + (" and the confirmation" * bool(work.confirm_samples))
    verb = "take" if work.trials != 1 or work.confirm_samples else "takes"
    head = (f"time: the seed baseline trains at {1000 * speed.seconds_per_sample:.0f} ms/sample here "
            f"({speed.machine}, {speed.precision}; measured just now); {trials} {verb} "
            f"{_about(search_s + confirm_seconds(speed, work, second_look=False), total)}")
    if budget_s is None:
        return Plan(search_s, confirm_s, None, None, head + " (no --budget)")
    remaining = budget_s - elapsed_s
    deadline = (clock or now)() + remaining
    ends = _at(wall() + remaining)
    if total <= remaining:
        line = f"{head}, within the {_minutes(budget_s)} budget (--budget): done by {ends} at the latest"
    else:
        one = trial_seconds(speed, work)
        fits = _trials_that_fit(remaining, one, confirm_s)
        if fits < 1:
            # Not even the seed baseline and the confirmation fit by this estimate: say what the run then does
            # (its measured times decide whether more trials fit), and when it would end.
            least = baseline_trial_seconds(speed, work) + confirm_s
            line = (f"{head}, more than the {_minutes(budget_s)} budget (--budget): by this estimate not even the "
                    f"seed baseline and the confirmation fit in it here, which would end at about "
                    f"{_at(wall() + least)} ({_minutes(least)}); the run trains the seed baseline first and adds "
                    "trials only while their measured times leave room for the confirmation; raise --budget, or "
                    "lower --confirm-top or --confirm-epochs")
        else:
            line = (f"{head}, more than the {_minutes(budget_s)} budget (--budget): the search stops adding trials "
                    f"when one more and the confirmation would end after {ends} (about {fits} of the "
                    f"{work.trials} fit); --budget none runs them all")
    return Plan(search_s, confirm_s, budget_s, deadline, line)


def measured_confirm_seconds(study: optuna.Study, candidate_trials: list[int | None], work: Workload,
                             speed: Speed) -> float:
    """The confirmation's wall time from the measured training speed of the trials it would confirm now.

    Each of ``work.confirm_candidates`` specs trains ``confirm_samples / confirm_candidates`` sample-epochs
    (with a second look, the samples are shared by two more slots: the baseline's, and the leader's at the
    slowest candidate's speed). A slot the search has no candidate for yet (fewer complete trunks than
    ``--confirm-top``) counts at the slowest known candidate's speed; one whose trial recorded no speed, at the
    start estimate's.
    """
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rates = []
    for number in candidate_trials[: work.confirm_candidates]:
        t = trials.get(number) if number is not None else None
        rate = t.user_attrs.get(schema.SAMPLES_PER_S) if t is not None else None
        rates.append(1.0 / rate if rate else speed.seconds_per_sample * STEP_TO_TRIAL * MIX)
    slowest = max(rates) if rates else speed.seconds_per_sample * STEP_TO_TRIAL * MIX
    rates += [slowest] * (work.confirm_candidates - len(rates))
    if work.second_look and rates:
        rates += [rates[0], max(rates[1:], default=slowest)]
    per_candidate = work.confirm_samples / max(len(rates), 1)
    return sum(per_candidate * r for r in rates) * CONFIRM_OVERHEAD / confirm_speedup(work.confirm_jobs)


class BudgetStop:
    """Optuna callback: stop the search when one more trial and the confirmation would end past the deadline.

    The next trial is expected to take as long as the slowest of this run's last ten trials (at least the
    plan's estimate until one has run); the confirmation as :func:`measured_confirm_seconds` says for the
    candidates it would take now, padded by SAFETY.

    Args:
        deadline: On ``clock``.
        speed: The baseline's measured speed.
        work: What the run trains.
        candidates: The trial numbers the confirmation would train now (the baseline first), for a study.
        clock: The clock (default :func:`now`).
    """

    def __init__(self, deadline: float, speed: Speed, work: Workload,
                 candidates: Callable[[optuna.Study], list[int | None]], clock: Clock | None = None):
        self.deadline = deadline
        self.speed = speed
        self.work = work
        self.candidates = candidates
        self.clock = clock or now
        self.durations: list[float] = []
        self.last = self.clock()
        self.stopped: str | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        now = self.clock()
        self.durations.append(now - self.last)
        self.last = now
        recent = self.durations[-10:]
        # Until three have run, at least an unpruned trial of the mix: the first trials are never pruned.
        next_trial = max(max(recent), trial_seconds(self.speed, self.work, pruned=False) if len(recent) < 3 else 0.0)
        confirm_s = 0.0
        if self.work.confirm_samples:
            confirm_s = SAFETY * measured_confirm_seconds(study, self.candidates(study), self.work, self.speed)
        left = self.deadline - now
        if next_trial + confirm_s > left:
            self.stopped = (f"time budget: the search stopped after this run's {len(self.durations)} trials, "
                            f"{_minutes(max(left, 0))} before the deadline: one more trial (about "
                            f"{_minutes(next_trial)}) and the confirmation (about {_minutes(confirm_s)}) would not "
                            "fit (--budget)")
            study.stop()


def speed_from_trial(trial: FrozenTrial, work: Workload, measured: Speed) -> Speed | None:
    """The seed baseline's speed read off its own complete trial: its wall time (trial overhead taken out) over
    the sample-epochs it trained, in the units of :func:`measure_speed` (so ``trial_seconds`` of the result is
    about the trial's wall time times MIX). None when the trial is not the baseline's, did not complete, or
    recorded no wall time."""
    wall_s = trial.user_attrs.get(schema.WALL_SECONDS)
    if trial.state != TrialState.COMPLETE or not trial.user_attrs.get(schema.BASELINE) or not wall_s:
        return None
    per_sample = max(wall_s - TRIAL_OVERHEAD_S, 1e-3) / max(work.trial_samples, 1) / STEP_TO_TRIAL
    return Speed(per_sample, measured.precision, measured.machine)


class Recalibrate:
    """Optuna callback: once the seed baseline's own trial has run, restate the time line from it.

    Acts on the first trial this run finishes and never again: on a new study that is the seed baseline (enqueued
    first); on a resumed one it is not, and the start line stands. The new line gives the trials left and the
    confirmation at the baseline's measured speed, and, under a budget, how many of them fit before the deadline;
    the budget's stop rule (``stop``) then prices its first trials and unknown confirmation slots at that speed.

    Args:
        speed: The start measurement's speed (its precision and machine are kept).
        work: What the run trains.
        say: Prints a line (above the progress bars).
        stop: The budget's stop rule, None without a budget.
        clock: The deadline's clock (default :func:`now`).
        wall: The wall clock, for the times of day the line gives.
    """

    def __init__(self, speed: Speed, work: Workload, say: Callable[[str], None], stop: BudgetStop | None = None,
                 clock: Clock | None = None, wall: Clock = time.time):
        self.speed = speed
        self.work = work
        self.say = say
        self.stop = stop
        self.clock = clock or now
        self.wall = wall
        self.line: str | None = None
        self._seen = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seen:
            return
        self._seen = True
        speed = speed_from_trial(trial, self.work, self.speed)
        if speed is None:
            return
        left = max(self.work.trials - 1, 0)
        rest = replace(self.work, trials=left)
        one = trial_seconds(speed, rest)
        confirm_s = confirm_seconds(speed, rest)
        total = left * one + confirm_s
        low = left * one + confirm_seconds(speed, rest, second_look=False)
        parts = [f"the {left} trial{'s' * (left != 1)} left"] * bool(left) + ["the confirmation"] * bool(confirm_s)
        if not parts:
            return
        verb = "take" if len(parts) > 1 or left > 1 else "takes"
        head = (f"time, from the seed baseline's own trial ({trial.user_attrs[schema.WALL_SECONDS]:.0f} s, "
                f"{1000 * speed.seconds_per_sample * STEP_TO_TRIAL:.0f} ms per sample-epoch): {' and '.join(parts)} "
                f"{verb} {_about(low, total)}")
        if self.stop is None:
            self.line = head + " (no --budget)"
        else:
            self.stop.speed = speed
            remaining = self.stop.deadline - self.clock()
            if total <= remaining:
                self.line = f"{head}, within the budget: done by {_at(self.wall() + total)} or sooner"
            else:
                fits = max(_trials_that_fit(remaining, one, confirm_s), 0)
                self.line = (f"{head}, more than the budget leaves ({_minutes(max(remaining, 0))}): about {fits} of "
                             f"them fit, so that the confirmation ends by {_at(self.wall() + remaining)}")
        self.say(self.line)
        plan_attr = dict(study.user_attrs.get(schema.STUDY_TIME_PLAN) or {})
        plan_attr["after_baseline"] = self.line
        study.set_user_attr(schema.STUDY_TIME_PLAN, plan_attr)
