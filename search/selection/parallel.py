"""``search.run --jobs N``: N worker processes on one study, one progress display, Ctrl-C stops them all.

The parent has prepared the data (the cache is built once, before any worker starts) and created the
study. Each worker is a fresh process (spawned: no forked torch thread pool or CUDA state) that reads
the cached scans, opens the study's storage and runs trials until the run's budget is spent: a counter
shared by the workers hands out one trial at a time, so the run adds exactly ``--trials`` trials however
long each takes. CPU threads are divided among the workers; on a machine with several GPUs worker ``i``
trains on GPU ``i`` modulo their number.

Workers ignore the terminal's Ctrl-C: the parent catches it and sends each worker one SIGTERM, which
interrupts the trial in hand (marked failed with its reason, as in a single-process run); a second
Ctrl-C, or a worker that does not stop within :data:`STOP_WAIT_S`, gets SIGKILL, and the parent recovers
what it left RUNNING (search.study.recovery). A worker that dies on its own (kill -9, the out-of-memory
killer) is noticed at once: its trial is failed with the reason and queued again, and the others go on.

Each worker seeds its sampler with the study's seed plus its index: with one seed, two workers would
draw the same random start-up trials.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import optuna
import torch
from sqlalchemy.exc import SQLAlchemyError

from lungct.errors import DataError, UsageError
from lungct.records import PreprocessConfig
from lungct.signals import raise_terminated, terminated
from search.selection.objective import FoldData, Objective, SearchSettings
from search.selection.progress import SearchProgress
from search.study.artifacts import TrialArtifacts, artifact_dir
from search.study.faults import StorageError
from search.study.notes import TrialNote
from search.study.recovery import recover_trials, requeue_interrupted_baseline
from search.study.storage import fail_running, make_pruner, make_sampler, open_storage
from search.study.trial_run import KnownFailure
from search.training.data import prepare_data, search_folds

STOP_WAIT_S = 120.0  # after Ctrl-C, how long the workers get to fail their trials before they are killed
POLL_S = 0.5


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs to join the study and train (primitives and frozen settings: it is pickled).

    Attributes:
        study: Study name.
        storage_url: Its storage.
        studies_dir: Where the cache, splits and artifacts are.
        data_root: The data folder the parent resolved (phantoms already generated).
        task: Task name.
        split_seed: Seed of the data set's split.
        folds: Cross-validation folds per trial.
        sampler: ``tpe`` or ``random``.
        pruner: Pruner name.
        search: What every trial shares; its device is replaced per worker.
        threads: torch CPU threads per worker.
        deadline: Wall-clock time (``time.time()``) after which no worker starts a trial (None: no limit).
    """

    study: str
    storage_url: str
    studies_dir: str
    data_root: str
    task: str
    split_seed: int
    folds: int
    sampler: str
    pruner: str
    search: SearchSettings
    threads: int
    deadline: float | None = None


@dataclass(frozen=True)
class ParallelResult:
    """How a parallel run ended."""

    interrupted: bool
    errors: tuple[str, ...] = ()
    trials_done: int = 0


def worker_devices(device: torch.device, jobs: int) -> list[torch.device]:
    """One device per worker: GPU ``i`` modulo the GPUs there are, or the CPU for all."""
    if device.type == "cuda" and device.index is None:
        n = max(torch.cuda.device_count(), 1)
        return [torch.device("cuda", i % n) for i in range(jobs)]
    return [device] * jobs


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's or a batch job's share, where Linux tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    """This process's CPU cores divided among ``jobs`` workers (at least one thread each)."""
    return max(1, usable_cores() // jobs)


def _claim(budget, deadline: float | None, parent_pid: int) -> bool:
    """Take one trial from the run's budget; False when it is spent, the time is up or the parent is gone."""
    if deadline is not None and time.time() >= deadline:
        return False
    if os.getppid() != parent_pid:  # the parent died: finish the trial in hand, start no other
        return False
    with budget.get_lock():
        if budget.value <= 0:
            return False
        budget.value -= 1
        return True


def _worker(plan: WorkerPlan, index: int, device: torch.device, budget, events, parent_pid: int) -> None:
    """One worker process: join the study and run trials while the budget lasts. Exits 0, 2 (error) or 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, raise_terminated)  # one stop request; the cleanup is not interrupted
    torch.set_num_threads(plan.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = objective = None
    code = 0
    try:
        settings = replace(plan.search, device=device)
        storage = open_storage(plan.storage_url)
        single = len(settings.objectives) == 1
        study = optuna.load_study(
            study_name=plan.study, storage=storage,
            sampler=make_sampler(plan.sampler, settings.seed + index, settings.objectives),
            pruner=make_pruner(plan.pruner, plan.folds) if single else optuna.pruners.NopPruner())
        prepared = prepare_data(plan.data_root, PreprocessConfig(size=settings.size), task=plan.task,
                                seed=plan.split_seed, studies_dir=plan.studies_dir, workers=1, progress=False)
        folds = search_folds(prepared, plan.folds, plan.studies_dir, plan.split_seed)
        objective = Objective([FoldData(f.fold, train, val) for f, train, val in folds], settings,
                              on_epoch=lambda trial, result: events.put(("epoch", trial.number, result.train_loss)),
                              on_trial_end=TrialArtifacts(artifact_dir(plan.studies_dir, plan.study)))
        while _claim(budget, plan.deadline, parent_pid):
            for line in recover_trials(study):  # a sibling that died: its trial is run again at once
                events.put(("note", line))
            study.optimize(objective, n_trials=1, catch=(KnownFailure,),
                           callbacks=[TrialNote(), lambda _, trial: events.put(("trial", trial.number))])
    except KeyboardInterrupt:
        code = 130
    except (DataError, UsageError) as e:  # the user's mistake; any other error is a bug: its traceback shows
        events.put(("error", f"worker {index}: {e}"))
        code = 2
    except StorageError as e:  # a damaged database, a full disk (search.study.faults)
        events.put(("error", f"worker {index}: {e}"))
        code = 2
    except SQLAlchemyError as e:  # the database went away mid-run (a lost server, a lock held too long)
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        events.put(("error", f"worker {index}: storage: {reason}"))
        code = 2
    finally:
        if study is not None and objective is not None:
            fail_running(study, objective.running)
            queued = requeue_interrupted_baseline(study, objective.running) if code == 130 else None
            if queued:
                events.put(("note", queued))
    sys.exit(code)


class _Display:
    """The parent's side: turns the workers' events into the one progress display."""

    def __init__(self, study: optuna.Study, progress: SearchProgress):
        self.study = study
        self.progress = progress
        self.errors: list[str] = []
        self.trials_done = 0

    def handle(self, event: tuple) -> None:
        kind, *rest = event
        if kind == "epoch":
            self.progress.epoch_done(*rest)
        elif kind == "trial":
            trial = self.study.get_trials(deepcopy=False)[rest[0]]
            self.trials_done += 1
            self.progress.on_trial_end(self.study, trial)
        elif kind == "note":
            self.progress.note(rest[0])
        elif kind == "error":
            self.errors.append(rest[0])
            self.progress.note(f"error: {rest[0]}")

    def drain(self, events) -> None:
        while True:
            try:
                self.handle(events.get_nowait())
            except queue.Empty:
                return


def run_parallel(plan: WorkerPlan, devices: Sequence[torch.device], study: optuna.Study, n_trials: int,
                 progress: SearchProgress) -> ParallelResult:
    """Run ``n_trials`` new trials of ``study`` on one worker per device; the parent only displays.

    Returns:
        Whether Ctrl-C stopped the run, the workers' one-line errors, and how many trials finished.
    """
    ctx = mp.get_context("spawn")
    budget = ctx.Value("i", n_trials)
    events = ctx.Queue()
    display = _Display(study, progress)
    # Started with Ctrl-C ignored, which the workers inherit: a Ctrl-C while one is still importing
    # torch would otherwise kill it with a traceback.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        procs = [ctx.Process(target=_worker, args=(plan, i, device, budget, events, os.getpid()),
                             name=f"lungct-worker-{i}") for i, device in enumerate(devices)]
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    reported: set[int] = set()
    interrupted = False
    # A scheduler's SIGTERM (a job's time limit) stops the workers as Ctrl-C does (and the command exits 143).
    previous_term = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        checked = time.monotonic()
        while True:
            with contextlib.suppress(queue.Empty):
                display.handle(events.get(timeout=POLL_S))
            if time.monotonic() - checked < POLL_S:
                continue
            checked = time.monotonic()
            _report_dead(procs, reported, study, progress)
            if not any(p.is_alive() for p in procs):
                break
    except KeyboardInterrupt:
        interrupted = True
        _stop_workers(procs, events, display)
    finally:
        if not terminated():  # after a SIGTERM, a second one must not cut the cleanup below short
            signal.signal(signal.SIGTERM, previous_term)
        display.drain(events)
        for p in procs:
            p.join(timeout=STOP_WAIT_S)
        for line in recover_trials(study):  # a worker killed mid-trial
            progress.note(line)
    return ParallelResult(interrupted, tuple(display.errors), display.trials_done)


def _report_dead(procs: Sequence, reported: set[int], study: optuna.Study, progress: SearchProgress) -> None:
    """A worker that died on its own: say so, and recover its trial now rather than after the grace period."""
    for i, p in enumerate(procs):
        if i in reported or p.exitcode is None or p.exitcode in (0, 2, 130):
            continue
        reported.add(i)
        how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
        progress.note(f"worker {i} (pid {p.pid}) died ({how}); the others go on")
        for line in recover_trials(study):
            progress.note(line)


def _stop_workers(procs: Sequence, events, display: _Display) -> None:
    """One SIGTERM to each worker, then wait for them to fail their trials; a second Ctrl-C kills them."""
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                display.handle(events.get(timeout=POLL_S))
    except KeyboardInterrupt:
        pass
    for p in procs:
        if p.is_alive():
            p.kill()
