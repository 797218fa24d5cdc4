"""``python -m search.run --trials N``: the architecture search, then the confirmation of its best specs.

Samples architectures from the ``space`` package with a seeded TPE sampler and scores each by k-fold
cross-validation over the non-test scans (mean final-epoch ROC AUC over the folds, with its standard
error); the pruner stops poor trials after a whole fold. Then the top specs and the seed baseline are
re-evaluated on fresh folds with new seeds, and the baseline stays recommended unless a candidate beats
it by more than the paired noise (search.selection.confirm). Everything is stored in an Optuna study (SQLite under
``studies/`` by default). Running it again continues the same study: ``--trials N`` adds N trials.
Trial 0 of every new study is the course's seed model.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lungct.errors import UsageError
from lungct.records import PreprocessConfig
from search import cli
from search.cli import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_data_flag,
    add_device_flag,
    add_phantoms_flag,
    add_size_flag,
    add_split_seed_flag,
    add_studies_dir_flag,
    add_study_flags,
    add_task_flag,
    add_workers_flag,
    command_parser,
    exit_code,
    positive,
)
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
    DEFAULT_CONFIRM_FOLDS,
    DEFAULT_TOP_K,
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
from search.selection.objective import DEFAULT_SCORE, SCORES, FoldData, Objective, SearchSettings
from search.selection.parallel import WorkerPlan, run_parallel, threads_per_worker, worker_devices
from search.selection.progress import SearchProgress, summary_table
from search.selection.settings import (
    CONFIRM_SETTINGS,
    DataSettings,
    GivenSettings,
    RunJob,
    RunSettings,
    load_space_file,
    resolve_settings,
)
from search.study import schema
from search.study.artifacts import TrialArtifacts, artifact_dir
from search.study.backup import BackupAfterEachRun, check_folder, restore_if_missing, sqlite_file
from search.study.notes import TrialNote
from search.study.recovery import recover_trials, requeue_interrupted_baseline, requeue_lost_baseline
from search.study.storage import (
    PRUNERS,
    SAMPLERS,
    create_or_load_study,
    default_storage,
    fail_running,
    open_storage,
    parse_objectives,
    redact,
)
from search.study.trial_run import KnownFailure
from search.training.data import PreparedData, describe, prepare_data, resolve_data_root, search_folds
from search.training.precision import device_precision
from search.training.unit import train_model

SETTINGS_ATTR = schema.STUDY_SETTINGS
# The CPU default: what a student on a 2-core laptop-class CPU can wait for; a GPU run has no default budget.
DEFAULT_CPU_BUDGET_MIN = 30.0
# A week: longer is a typo (1e9 minutes is a time of day 1,900 years away), and 1e308 overflows the clock.
MAX_BUDGET_MIN = 10080.0


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.run``."""
    p = command_parser("search.run", __doc__, epilog="Exit code: 0 done, 2 bad input (flags, data, study), "
                       "130 interrupted (finished trials kept; the command to resume is printed).")
    p.add_argument("--trials", type=int, default=50, metavar="N", help="trials to add to the study (default: 50)")
    add_data_flag(p)
    add_study_flags(p, "any SQLAlchemy URL, PostgreSQL included")
    p.add_argument("--epochs", type=int, metavar="E", help="epochs per fold of a trial, scored at the last one "
                   "(default: 4 on the CPU, 30 on a GPU; a resumed study keeps its own)")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-validation folds over the non-test scans that score each trial (default: 2; "
                   "a resumed study keeps its own)")
    p.add_argument("--space", metavar="FILE.toml", help="search space bounds (SpaceBounds fields, e.g. "
                   "batch_size = [2, 4, 8]); stored on the study and checked on resume (default: the built-in "
                   "space, see python -m space)")
    p.add_argument("--confirm-top", type=int, default=None, metavar="K",
                   help="confirm the best trials of the K best distinct convolutional trunks (head, dropout and "
                   f"optimiser variants count as one) against the seed baseline (default: {DEFAULT_TOP_K})")
    p.add_argument("--confirm-folds", type=int, default=None, metavar="K",
                   help="folds of the confirmation's fresh cross-validation, and so the members of the ensemble "
                   "export ships; more folds train each run on more of the non-test scans, at about (K-1)/2 times "
                   f"the 3-fold cost and K/3 times the inference (default: {DEFAULT_CONFIRM_FOLDS})")
    p.add_argument("--confirm-epochs", type=int, default=None, metavar="E",
                   help="epochs per confirmation run, and so of the fold models export ships (default: 12 on the "
                   "CPU, 60 on a GPU; 2x --epochs when --epochs is given)")
    stage = p.add_mutually_exclusive_group()
    stage.add_argument("--no-confirm", action="store_true", help="search only; skip the confirmation stage")
    stage.add_argument("--confirm-only", action="store_true",
                       help="run (or resume) only the confirmation stage of an existing study; --trials is ignored")
    add_size_flag(p, "32 64 64 on the CPU, the seed's 64 128 128 on a GPU; a resumed study keeps its own")
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seeds the sampler and training (default: 0; a resumed study keeps its own)")
    add_split_seed_flag(p, None, "; keep one per data set so every study, export and ablation holds out the same "
                        "test scans (default: 0)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="start no new trial after this many "
                   "seconds (default: no limit)")
    p.add_argument("--budget", default=None, metavar="MIN",
                   help="minutes the whole command may take here: it measures this machine's training speed first, "
                   "says what the run will take, and stops adding trials when one more and the confirmation would "
                   "end after the budget; at most 10080 (a week); 'none' for no limit (default: 30 on the CPU, none "
                   "on a GPU)")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS,
                   help="tpe (default; NSGA-II for two objectives) or random: plain random search, the reference "
                   "the search's efficiency is measured against")
    p.add_argument("--pruner", default="median", choices=PRUNERS,
                   help="early stopping of poor trials after each cross-validation fold (default: median)")
    p.add_argument("--objectives", default="auc", metavar="LIST",
                   help="auc (default), or auc,params / auc,flops for a multi-objective study that looks for "
                   "the Pareto front of AUC against cost; Optuna cannot prune multi-objective studies, so "
                   "--pruner is ignored there")
    p.add_argument("--max-gflops", type=float, default=None, metavar="G",
                   help="cost cap: a sampled spec whose forward GFLOPs per sample exceed G trains with its widths "
                   "halved (then fewer convolutions per level) until it fits, recorded on the trial as cost_fallback, "
                   "and is pruned untrained only if nothing fits; 0 = no cap (default: 0.6x the seed baseline's cost "
                   "at the input size on the CPU, no cap on a GPU)")
    p.add_argument("--score", default=None, choices=SCORES,
                   help="a trial's score per fold: auc_bn = validation AUC at the last epoch with batch-norm "
                   "statistics recomputed over the fold's training scans first (as the confirmation and export "
                   "score), auc = with the running averages as training left them (the score of studies made "
                   f"before it was stored; benchmarks/RESULTS.md, 'Fidelity audit') (default: {DEFAULT_SCORE}; a "
                   "resumed study keeps its own)")
    add_task_flag(p, default=None)
    add_phantoms_flag(p)
    add_studies_dir_flag(p, "where studies, caches, splits and artifacts are written")
    add_workers_flag(p)
    p.add_argument("--backup-to", metavar="DIR",
                   help="after every finished trial and confirmation run, copy the study's SQLite database to DIR "
                   "(SQLite's online backup, never a half-written file: e.g. a Google Drive folder, while the study "
                   "runs on local disk; never the study's own folder, and checked when the run starts); a run whose "
                   "database is missing restores it from DIR first, if SQLite's quick check finds the copy whole, and "
                   "resumes (default: no copy)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes training trials of this study at once, the CPU cores divided among "
                   "them (one GPU each on a multi-GPU machine), at most one per CPU core this process may use; "
                   "run the same command on other machines with one --storage postgresql://... to share a study "
                   "between them; the confirmation stage runs in this process (default: 1)")
    return p


def parse_flags(args: argparse.Namespace) -> tuple[GivenSettings, RunJob]:
    """The flags as the study settings they ask for and the job.

    Raises:
        UsageError: A flag's value is out of range, or the ``--space`` file does not parse.
    """
    device = cli.device_flag(args.device)
    given = GivenSettings(
        data=args.data, task=args.task, size=tuple(args.size) if args.size else None, split_seed=args.split_seed,
        n_phantoms=args.phantoms, epochs=args.epochs, seed=args.seed, max_gflops=args.max_gflops, folds=args.folds,
        confirm_epochs=args.confirm_epochs, confirm_top=args.confirm_top, confirm_folds=args.confirm_folds,
        score=args.score)
    job = RunJob(study=args.study, storage=args.storage, studies_dir=args.studies_dir, trials=args.trials,
                 jobs=args.jobs, timeout_s=args.timeout, budget_min=budget_minutes(args.budget, device),
                 sampler=args.sampler, pruner=args.pruner, objectives=parse_objectives(args.objectives),
                 confirm=not args.no_confirm, confirm_only=args.confirm_only, device=device, workers=args.workers,
                 backup_to=args.backup_to)
    check_flags(given, job)
    if args.space:
        given = dataclasses.replace(given, bounds=load_space_file(args.space))
    return given, job


def check_flags(given: GivenSettings, job: RunJob) -> None:
    """Refuse a flag's value that no run can use, naming the flag.

    Raises:
        UsageError: The first such flag.
    """
    positive("--trials", job.trials)
    positive("--epochs", given.epochs)
    if given.size is not None and min(given.size) < 4:
        raise UsageError(f"--size: expected three voxel counts of at least 4, got {list(given.size)}")
    if given.n_phantoms is not None and given.n_phantoms < 10:
        raise UsageError(f"--phantoms: expected at least 10, got {given.n_phantoms}")
    positive("--timeout", job.timeout_s, "a positive number of seconds")
    if given.folds is not None and not 2 <= given.folds <= 10:
        raise UsageError(f"--folds: expected 2 to 10 folds, got {given.folds}")
    if given.confirm_folds is not None and not 2 <= given.confirm_folds <= 10:
        raise UsageError(f"--confirm-folds: expected 2 to 10 folds, got {given.confirm_folds}")
    positive("--confirm-top", given.confirm_top)
    positive("--confirm-epochs", given.confirm_epochs)
    positive("--jobs", job.jobs, "a positive count of worker processes")
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (a container's, a job's share)
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if job.jobs > cores:
        raise UsageError(f"--jobs: this machine has {cores} CPU core{'s' if cores > 1 else ''} for this run; "
                         f"expected at most {cores} worker process{'es' if cores > 1 else ''}, got {job.jobs}")
    if job.backup_to is not None and job.jobs > 1:
        raise UsageError("--backup-to: copies the database after each trial of one process; use it with --jobs 1")


def budget_minutes(value: str | None, device) -> float | None:
    """``--budget`` in minutes: None for 'none', the device's default when not given.

    Raises:
        UsageError: Not a positive number of minutes up to :data:`MAX_BUDGET_MIN`, or 'none'.
    """
    if value is None:
        return None if device.type == "cuda" else DEFAULT_CPU_BUDGET_MIN
    if value.strip().lower() == "none":
        return None
    try:
        minutes = float(value.strip().removesuffix("m"))
    except ValueError:
        minutes = math.nan
    if not math.isfinite(minutes) or minutes <= 0:
        raise UsageError(f"--budget: expected a positive number of minutes or 'none', got {value!r}")
    if minutes > MAX_BUDGET_MIN:
        raise UsageError(f"--budget: expected at most {MAX_BUDGET_MIN:g} minutes (a week), got {value!r}; "
                         "'none' for no limit")
    return minutes


@dataclass(frozen=True)
class Started:
    """A run ready to search: its job, its study, settings and data, as :func:`start` made them."""

    job: RunJob
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    storage_url: str
    settings: RunSettings
    prepared: PreparedData
    folds: list
    created: bool
    stored: dict | None
    began: float = field(default_factory=time.monotonic)  # when the command started, for its time budget
    backup: BackupAfterEachRun | None = None  # --backup-to


def start(given: GivenSettings, job: RunJob) -> Started:
    """Open (or create) the study, settle its settings against the flags, load the data and make the folds.

    Raises:
        UsageError, DataError: A flag that contradicts the study, no study to confirm, unusable data.
    """
    began = time.monotonic()
    storage_url = job.storage or default_storage(job.study, job.studies_dir)
    backup = _backup(job, storage_url)
    storage = open_storage(storage_url)
    stored = _stored_settings(storage, job.study)
    if job.confirm_only and stored is None:
        raise UsageError(f"--confirm-only: no study {job.study!r} in {redact(storage_url)} to confirm "
                         "(run python -m search.run first)")
    settings, fidelity_line = resolve_settings(given, stored, job.device)
    prepared = _prepare(settings, job)
    # Creating the study and storing its settings is one step (search.study.storage.create_or_load_study).
    study, created = create_or_load_study(
        job.study, storage, seed=settings.seed, pruner=job.pruner, max_folds=settings.folds,
        objectives=job.objectives, bounds=settings.space(), sampler=job.sampler,
        attrs={schema.STUDY_DATA_SUMMARY: prepared.summary(), schema.STUDY_BOUNDS: settings.space().to_dict(),
               SETTINGS_ATTR: settings.to_dict()})
    if not created and not stored:
        # Another run created the study while this one loaded its data: the study's settings hold, and a
        # flag that contradicts them is the usual one-line error.
        stored = study.user_attrs.get(SETTINGS_ATTR) or {}
        joined, fidelity_line = resolve_settings(given, stored, job.device)
        if joined.data_settings() != settings.data_settings():
            prepared = _prepare(joined, job)
        settings = joined
    print(f"study {job.study!r} in {redact(storage_url)} ({'new' if created else 'resumed'})")
    print(fidelity_line)
    print(describe(prepared))
    folds = search_folds(prepared, settings.folds, job.studies_dir, settings.split_seed)
    return Started(job, study, storage, storage_url, settings, prepared, folds, created, stored, began, backup)


def _backup(job: RunJob, storage_url: str) -> BackupAfterEachRun | None:
    """``--backup-to``: restore a missing database from the folder, and the callback that keeps it copied there.

    Raises:
        UsageError: The storage is not an SQLite file, the folder is the study's own or cannot be written
            (search.study.backup.check_folder), or the folder's copy is not a whole database.
    """
    if job.backup_to is None:
        return None
    database = sqlite_file(storage_url)
    if database is None:
        raise UsageError(f"--backup-to: needs an SQLite study (sqlite:///FILE), not {redact(storage_url)}; "
                         "a database server keeps its own backups")
    folder = Path(job.backup_to)
    check_folder(database, folder)
    restored = restore_if_missing(database, folder)
    if restored is not None:
        print(f"restored {database} from {restored} (--backup-to); resuming the study")
    return BackupAfterEachRun(database, folder)


def run_study(given: GivenSettings, job: RunJob) -> int:
    """Run (or continue) a search and its confirmation. Returns the exit code (0, 2, or 130).

    Raises:
        UsageError, DataError: Bad settings or data, before any trial runs.
    """
    return run_search(start(given, job))


def run_search(r: Started) -> int:
    """The search, then the confirmation, on a started run. Returns the exit code (0, 2, or 130)."""
    job, study, settings = r.job, r.study, r.settings
    if r.created and study.user_attrs.get(schema.STUDY_BASELINE_NOTE):
        print(f"note: {study.user_attrs[schema.STUDY_BASELINE_NOTE]}")
    if not r.created and (not r.stored or any(r.stored.get(k) != settings.to_dict()[k] for k in CONFIRM_SETTINGS)):
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    # What a dead worker (kill -9, a crash) or Ctrl-C left behind: failed with its reason, queued again.
    for line in [*recover_trials(study), requeue_lost_baseline(study)]:
        if line:
            print(line)

    amp = device_precision(job.device).amp
    interrupted = stage = None
    if not job.confirm_only:
        budget = _budget(r, amp)
        run_trials = _search_parallel if job.jobs > 1 else _search
        interrupted = run_trials(r, amp, budget)
        if interrupted is None:
            return EXIT_BAD_INPUT
        stage = "search"
        print()
        print(summary_table(study))
        if budget.stop is not None and budget.stop.stopped:
            print(budget.stop.stopped)
    if not interrupted and job.confirm and len(job.objectives) == 1:
        interrupted = _confirm(r, amp)
        stage = "confirmation"
    write_study_note(study)  # optuna-dashboard's study note: the decision, not only the best search score
    if r.backup:  # the decision, a Ctrl-C's failed trial: what the last run's copy does not hold yet
        r.backup()
    _print_next_steps(job, r.storage_url)
    if interrupted:
        flags = " ".join(f"--{k} {v}" for k, v in (("study", job.study), ("storage", redact(job.storage or "")),
                                                   ("studies-dir", job.studies_dir if job.studies_dir != "studies"
                                                    else ""), ("backup-to", job.backup_to or "")) if v)
        again = "--trials N" if stage == "search" else "--confirm-only"
        what = ("trials are" if job.jobs > 1 else "trial is") if stage == "search" else "confirmation run is"
        print(f"\nInterrupted: the running {what} marked failed, finished ones are kept. Resume with:\n"
              f"  python -m search.run {again} {flags}".rstrip(), file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) a search and its confirmation. Returns the exit code: 0 done, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines replace Optuna's per-trial logs
    # Ctrl-C during a trial or a confirmation run is handled where it lands (the run is failed and can be
    # resumed); one that reaches here came while the data loaded or between stages.
    return exit_code(lambda: run_study(*parse_flags(args)),
                     interrupted="interrupted: finished trials are kept; run the same command again to continue")


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
                    s.confirm_top + 1, second_look=True, pruned_saving=pruned_saving(s.folds, prunes))


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
    print(f"\nconfirming the top {settings.confirm_top} distinct specs and the seed baseline on fresh "
          f"{settings.confirm_folds}-fold splits at {settings.confirm_epochs} epochs; the leader, if one is ahead, "
          "and the baseline then train on a second repeat of fresh folds")

    def second_folds() -> list[ConfirmFold]:
        more = search_folds(r.prepared, settings.confirm_folds, job.studies_dir,
                            settings.split_seed + 1 + SECOND_REPEAT_FOLD_SEED)
        return [ConfirmFold(1, f.fold, train, val) for f, train, val in more]

    try:
        decision = confirm(r.study, r.storage, [ConfirmFold(0, f.fold, train, val) for f, train, val in fresh],
                           confirm_settings, settings.size, job.device, amp,
                           train_fn=partial(train_model, grades=r.prepared.found.task.n_grades),
                           artifacts=artifact_dir(job.studies_dir, job.study),
                           callbacks=[r.backup] if r.backup else (), second_folds=second_folds)
    except KeyboardInterrupt:
        return True
    except NoRecommendation as e:
        print(e, file=sys.stderr)
        return False
    print(format_decision(decision))
    return False


def _prepare(data: DataSettings, job: RunJob) -> PreparedData:
    """The study's data: train and validation parts only, at its size, task and split."""
    root = resolve_data_root(data.data, job.studies_dir, data.n_phantoms, 0)
    return prepare_data(root, PreprocessConfig(size=data.size), task=data.task, seed=data.split_seed,
                        studies_dir=job.studies_dir, workers=job.workers, progress=sys.stderr.isatty())


def _stored_settings(storage, name: str) -> dict | None:
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    for s in summaries:
        if s.study_name == name:
            return s.user_attrs.get(SETTINGS_ATTR) or {}
    return None


def _print_next_steps(job: RunJob, storage_url: str) -> None:
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


if __name__ == "__main__":
    raise SystemExit(main())
