"""The stages of ``python -m search.run`` on a started run: the time budget, the search, the confirmation.

:func:`run_study` starts the run (``search.selection.start``), measures the machine and arms the budget's stop
rule (``search.selection.budget``), runs the trials in this process or on ``--jobs`` workers
(``search.selection.parallel``), then confirms the best specs against the seed baseline
(``search.selection.confirm``), and returns how the run ended, which the command turns into its exit code.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from enum import Enum
from functools import partial

import optuna
from optuna.trial import TrialState

from search.selection.budget import (
    CONFIRM_SPEED_LIMIT,
    SAFETY,
    BudgetStop,
    Plan,
    Recalibrate,
    Speed,
    Workload,
    measure_speed,
    plan,
    pruned_saving,
)
from search.selection.budget import now as budget_now
from search.selection.confirm import (
    SECOND_REPEAT_FOLD_SEED,
    ConfirmFold,
    ConfirmSettings,
    NoRecommendation,
    TrialCallback,
    confirm,
    format_decision,
    select_candidates,
)
from search.selection.dashboard import write_study_note
from search.selection.objective import FoldData, Objective, SearchSettings
from search.selection.parallel import WorkerPlan, run_parallel, threads_per_worker, usable_cores, worker_devices
from search.selection.progress import SearchProgress, summary_table
from search.selection.settings import CONFIRM_SETTINGS, GivenSettings, RunJob
from search.selection.start import Started, start
from search.study import schema
from search.study.artifacts import TrialArtifacts, artifact_dir
from search.study.notes import TrialNote
from search.study.recovery import recover_trials, requeue_interrupted_baseline, requeue_lost_baseline
from search.study.storage import fail_running, redact
from search.study.trial_run import KnownFailure
from search.training.data import resolve_data_root, search_folds
from search.training.precision import device_precision
from search.training.unit import train_model


class Ended(Enum):
    """How a run ended: done, stopped by Ctrl-C in one of its stages (resumable), or every worker failed."""

    DONE = "done"
    SEARCH_INTERRUPTED = "search"
    CONFIRMATION_INTERRUPTED = "confirmation"
    WORKERS_FAILED = "every --jobs worker failed with an error (printed)"


def run_study(given: GivenSettings, job: RunJob) -> Ended:
    """Run (or continue) a search and its confirmation.

    Raises:
        UsageError, DataError: Bad settings or data, before any trial runs.
    """
    return run_search(start(given, job))


def run_search(r: Started) -> Ended:
    """The search, then the confirmation, on a started run."""
    job, study, settings = r.job, r.study, r.settings
    if r.created and study.user_attrs.get(schema.STUDY_BASELINE_NOTE):
        print(f"note: {study.user_attrs[schema.STUDY_BASELINE_NOTE]}")
    if not r.created and (not r.stored or any(r.stored.get(k) != settings.to_dict()[k] for k in CONFIRM_SETTINGS)):
        study.set_user_attr(schema.STUDY_SETTINGS, settings.to_dict())
    # What a dead worker (kill -9, a crash) or Ctrl-C left behind: failed with its reason, queued again.
    for line in [*recover_trials(study), requeue_lost_baseline(study)]:
        if line:
            print(line)

    amp = device_precision(job.device).amp
    ended = Ended.DONE
    if not job.confirm_only:
        budget = _budget(r, amp)
        run_trials = _search_parallel if job.jobs > 1 else _search
        interrupted = run_trials(r, amp, budget)
        if interrupted is None:
            return Ended.WORKERS_FAILED
        if interrupted:
            ended = Ended.SEARCH_INTERRUPTED
        print()
        print(summary_table(study))
        if budget.stop is not None and budget.stop.stopped:
            print(budget.stop.stopped)
    if ended is Ended.DONE and job.confirm and len(job.objectives) == 1 and _confirm(r, amp):
        ended = Ended.CONFIRMATION_INTERRUPTED
    write_study_note(study)  # optuna-dashboard's study note: the decision, not only the best search score
    if r.backup:  # the decision, a Ctrl-C's failed trial: what the last run's copy does not hold yet
        r.backup()
    _print_next_steps(job, r.storage_url)
    if ended is not Ended.DONE:
        _print_resume(job, ended)
    return ended


def _trial_settings(r: Started, amp: bool) -> SearchSettings:
    """What every trial of this run shares."""
    s = r.settings
    return SearchSettings(size=s.size, epochs=s.epochs, device=r.job.device, seed=s.seed, amp=amp,
                          objectives=r.job.objectives, bounds=s.space(), max_gflops=s.max_gflops or None,
                          recompute_bn=s.score == "auc_bn", grades=r.prepared.found.task.n_grades,
                          speed_limit=None if r.job.budget_min is None else CONFIRM_SPEED_LIMIT)


@dataclass
class Budget:
    """A run's time plan (search.selection.budget) and, under a budget, the callback that stops the search in time."""

    plan: Plan
    stop: BudgetStop | None
    speed: Speed | None = None
    work: Workload | None = None


def _workload(r: Started) -> Workload:
    s = r.settings
    fold_train = sum(len(train) for _, train, _ in r.folds) / max(len(r.folds), 1)
    confirms = r.job.confirm and len(r.job.objectives) == 1
    non_test = len(r.prepared.split.train) + len(r.prepared.split.val)
    # Every candidate (the top trunks and the baseline) trains once per fresh fold on (k-1)/k of the non-test scans,
    # and the leader and the baseline once more on the second look's folds (reserved: it runs when a candidate leads).
    confirm = (s.confirm_top + 1 + 2) * s.confirm_epochs * non_test * (s.confirm_folds - 1)
    prunes = r.job.pruner != "none" and len(r.job.objectives) == 1  # a two-objective study runs no pruner
    return Workload(r.job.trials, round(s.folds * s.epochs * fold_train), round(confirm) if confirms else 0,
                    s.confirm_top + 1, second_look=True, pruned_saving=pruned_saving(s.folds, prunes),
                    confirm_jobs=r.job.confirm_processes(usable_cores())[0])


def _budget(r: Started, amp: bool) -> Budget:
    """Measure this machine's speed, print what the run will take here, and arm the budget's stop rule."""
    work = _workload(r)
    speed = measure_speed(r.settings.size, r.job.device, amp)
    minutes = r.job.budget_min
    budget_s = None if minutes is None else 60.0 * minutes
    if speed is None:
        print("time: not measured (the seed baseline could not train in the measurement); no --budget stop")
        return Budget(Plan(0.0, 0.0, budget_s, None, ""), None)
    time_plan = plan(speed, work, budget_s, time.monotonic() - r.began)
    print(time_plan.line)
    r.study.set_user_attr(schema.STUDY_TIME_PLAN, {"line": time_plan.line, "machine": speed.machine,
                                                   "seconds_per_sample": speed.seconds_per_sample,
                                                   "precision": speed.precision, "budget_s": budget_s})
    if time_plan.deadline is None:
        return Budget(time_plan, None, speed, work)
    size, top = r.settings.size, r.settings.confirm_top

    def candidates(study: optuna.Study) -> list[int | None]:
        return [c.trial for c in select_candidates(study, size, top, CONFIRM_SPEED_LIMIT)]

    return Budget(time_plan, BudgetStop(time_plan.deadline, speed, work, candidates), speed, work)


def _search(r: Started, amp: bool, budget: Budget) -> bool:
    """The trials. Returns whether Ctrl-C stopped them."""
    job, study, settings = r.job, r.study, r.settings
    progress = SearchProgress(job.trials, settings.epochs * settings.folds)
    artifacts = TrialArtifacts(artifact_dir(job.studies_dir, job.study))
    objective = Objective([FoldData(f.fold, train, val) for f, train, val in r.folds], _trial_settings(r, amp),
                          on_epoch=progress.on_epoch, on_trial_end=artifacts)
    interrupted = False
    try:
        # Recalibrate before the stop rule, so that the rule prices the next trials at the baseline's own speed.
        recalibrate = ([Recalibrate(budget.speed, budget.work, progress.note, budget.stop)]
                       if budget.speed is not None and budget.work is not None else [])
        callbacks: list[TrialCallback] = [progress.on_trial_end, TrialNote(), *([r.backup] if r.backup else []),
                                          *recalibrate, *([budget.stop] if budget.stop is not None else [])]
        study.optimize(objective, n_trials=job.trials, timeout=job.timeout_s, catch=(KnownFailure,),
                       callbacks=callbacks)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        fail_running(study, objective.running)
    if interrupted:
        line = requeue_interrupted_baseline(study, objective.running)
        if line:
            print(line, file=sys.stderr)
    return interrupted


def _search_parallel(r: Started, amp: bool, budget: Budget) -> bool | None:
    """The trials on ``--jobs`` worker processes. Returns whether Ctrl-C stopped them; None when every worker
    failed with an error (printed)."""
    job, settings = r.job, r.settings
    jobs = min(job.jobs, job.trials)
    threads = threads_per_worker(jobs)
    plan = WorkerPlan(study=job.study, storage_url=r.storage_url, studies_dir=job.studies_dir,
                      data_root=str(resolve_data_root(settings.data, job.studies_dir, settings.n_phantoms, 0)),
                      task=settings.task, split_seed=settings.split_seed, folds=settings.folds, sampler=job.sampler,
                      pruner=job.pruner, search=_trial_settings(r, amp), threads=threads,
                      deadline=_parallel_deadline(job.timeout_s, budget.plan))
    devices = worker_devices(job.device, jobs)
    where = ", ".join(sorted({str(d) for d in devices}))
    per_worker = f", {threads} CPU thread{'s' if threads > 1 else ''} each" if job.device.type == "cpu" else ""
    print(f"{jobs} workers on {where}{per_worker}")
    progress = SearchProgress(job.trials, settings.epochs * settings.folds)
    try:
        result = run_parallel(plan, devices, r.study, job.trials, progress)
    finally:
        progress.close()
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if result.errors and not result.trials_done and not result.interrupted:
        return None
    return result.interrupted


def _parallel_deadline(timeout: float | None, time_plan: Plan) -> float | None:
    """When workers stop taking trials (wall clock): --timeout, or the budget less the confirmation's estimate.

    The workers cannot see the parent's per-trial stop rule, so the confirmation is reserved from the plan's
    estimate (padded by search.selection.budget.SAFETY) and the slowest worker's last trial may run past it.
    """
    ends = [time.time() + timeout] if timeout else []
    if time_plan.deadline is not None:
        ends.append(time.time() + (time_plan.deadline - budget_now()) - SAFETY * time_plan.confirm_s)
    return min(ends) if ends else None


def _confirm(r: Started, amp: bool) -> bool:
    """The confirmation stage (resumable). Returns whether Ctrl-C stopped it.

    Nothing to recommend (every candidate's runs failed, each failure recorded on its run) is said in one
    line, and the search stays as it is; any other error propagates.
    """
    job, settings = r.job, r.settings
    if not any(t.state == TrialState.COMPLETE for t in r.study.get_trials(deepcopy=False)):
        print("\nconfirmation skipped: no complete trial yet")
        return False
    # Fresh folds: another assignment than the search's (seed + 1), new training seeds.
    fresh = search_folds(r.prepared, settings.confirm_folds, job.studies_dir, settings.split_seed + 1)
    confirm_settings = ConfirmSettings(epochs=settings.confirm_epochs, seed=settings.seed,
                                       folds=settings.confirm_folds, fold_seed=settings.split_seed + 1,
                                       top_k=settings.confirm_top,
                                       speed_limit=None if job.budget_min is None else CONFIRM_SPEED_LIMIT)
    jobs, threads = job.confirm_processes(usable_cores())
    at_once = (f", {jobs} runs at a time ({threads} CPU thread{'s' * (threads > 1)} each, --confirm-jobs)"
               if jobs > 1 else "")
    print(f"\nconfirming the top {settings.confirm_top} distinct specs and the seed baseline on fresh "
          f"{settings.confirm_folds}-fold splits at {settings.confirm_epochs} epochs{at_once}; the leader, if one is "
          "ahead, and the baseline then train on a second repeat of fresh folds")

    def second_folds() -> list[ConfirmFold]:
        more = search_folds(r.prepared, settings.confirm_folds, job.studies_dir,
                            settings.split_seed + 1 + SECOND_REPEAT_FOLD_SEED)
        return [ConfirmFold(1, f.fold, train, val) for f, train, val in more]

    try:
        decision = confirm(r.study, r.storage, [ConfirmFold(0, f.fold, train, val) for f, train, val in fresh],
                           confirm_settings, settings.size, job.device, amp,
                           train_fn=partial(train_model, grades=r.prepared.found.task.n_grades),
                           artifacts=artifact_dir(job.studies_dir, job.study),
                           callbacks=[r.backup] if r.backup else (), second_folds=second_folds, jobs=jobs,
                           threads=threads)
    except KeyboardInterrupt:
        return True
    except NoRecommendation as e:
        print(e, file=sys.stderr)
        return False
    print(format_decision(decision))
    return False


def _print_next_steps(job: RunJob, storage_url: str) -> None:
    """The commands that show the study (live and offline) and ship what it recommends."""
    artifacts = artifact_dir(job.studies_dir, job.study)
    study_flags = "" if job.study == "lungct" and not job.storage else f" --study {job.study}"
    if job.storage:
        study_flags += f" --storage {redact(storage_url)}"
    if job.studies_dir != "studies":
        study_flags += f" --studies-dir {job.studies_dir}"
    print("\nnext:")
    print(f"  optuna-dashboard {redact(storage_url)} --artifact-dir {artifacts}   # live view, learning curves")
    print(f"  python -m search.report{study_flags}   # offline HTML report: importance, Pareto front")
    print(f"  python -m search.export{study_flags}   # ship the recommended model, test it once, write it")


def _print_resume(job: RunJob, ended: Ended) -> None:
    """What Ctrl-C stopped, and the command that resumes it."""
    flags = " ".join(f"--{k} {v}" for k, v in (("study", job.study), ("storage", redact(job.storage or "")),
                                               ("studies-dir", job.studies_dir if job.studies_dir != "studies"
                                                else ""), ("backup-to", job.backup_to or "")) if v)
    search = ended is Ended.SEARCH_INTERRUPTED
    again = "--trials N" if search else "--confirm-only"
    what = ("trials are" if job.jobs > 1 else "trial is") if search else "confirmation run is"
    print(f"\nInterrupted: the running {what} marked failed, finished ones are kept. Resume with:\n"
          f"  python -m search.run {again} {flags}".rstrip(), file=sys.stderr)
