"""``python -m search.run --trials N``: the architecture search, then the confirmation of its best specs.

Samples architectures from the ``space`` package with a seeded TPE sampler and scores each by k-fold
cross-validation over the non-test scans (mean final-epoch ROC AUC over the folds, with its standard
error); the pruner stops poor trials after a whole fold. Then the top specs and the seed baseline are
re-evaluated on fresh folds with new seeds, and the baseline stays recommended unless a candidate beats
it by more than the paired noise (search.confirm). Everything is stored in an Optuna study (SQLite under
``studies/`` by default). Running it again continues the same study: ``--trials N`` adds N trials.
Trial 0 of every new study is the course's seed model.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import optuna
import torch
from optuna.trial import TrialState

from lungct.records import PreprocessConfig
from search import schema
from search.artifacts import TrialArtifacts, artifact_dir
from search.budget import SAFETY, BudgetStop, Plan, Workload, measure_speed, plan
from search.budget import now as budget_now
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
from search.confirm import (
    DEFAULT_CONFIRM_FOLDS,
    DEFAULT_TOP_K,
    ConfirmFold,
    ConfirmSettings,
    confirm,
    format_decision,
    select_candidates,
)
from search.data import PreparedData, describe, prepare_data, resolve_data_root, search_folds
from search.fidelity import choose_fidelity
from search.objective import DEFAULT_SCORE, SCORES, FoldData, Objective, SearchSettings, TrialFailed
from search.parallel import WorkerPlan, run_parallel, threads_per_worker, worker_devices
from search.precision import device_precision
from search.progress import SearchProgress, summary_table
from search.recovery import recover_trials, requeue_interrupted_baseline, requeue_lost_baseline
from search.study import (
    PRUNERS,
    SAMPLERS,
    create_or_load_study,
    default_storage,
    fail_running,
    open_storage,
    parse_objectives,
    redact,
)
from search.train import resolve_device
from space import SpaceBounds, SpecInputError, bounds_for_size

SETTINGS_ATTR = schema.STUDY_SETTINGS
# The CPU default: what a student on a 2-core laptop-class CPU can wait for; a GPU run has no default budget.
DEFAULT_CPU_BUDGET_MIN = 30.0
CONFIRM_SETTINGS = ("confirm_epochs", "confirm_top", "confirm_folds")


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
                   "end after the budget; 'none' for no limit (default: 30 on the CPU, none on a GPU)")
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
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes training trials of this study at once, the CPU cores divided among "
                   "them (one GPU each on a multi-GPU machine); run the same command on other machines with "
                   "one --storage postgresql://... to share a study between them; the confirmation stage runs "
                   "in this process (default: 1)")
    return p


@dataclass(frozen=True)
class RunSettings:
    """The settings a study is run with; stored on the study so a resumed run keeps them."""

    data: str | None
    task: str
    size: tuple[int, int, int]
    epochs: int
    seed: int
    split_seed: int
    n_phantoms: int
    max_gflops: float
    folds: int = 2
    confirm_epochs: int = 0
    confirm_top: int = DEFAULT_TOP_K
    confirm_folds: int = DEFAULT_CONFIRM_FOLDS
    bounds: dict = field(default_factory=lambda: SpaceBounds().to_dict())
    score: str = DEFAULT_SCORE

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"data": self.data, "task": self.task, "size": list(self.size), "epochs": self.epochs,
                "seed": self.seed, "split_seed": self.split_seed, "n_phantoms": self.n_phantoms,
                "max_gflops": self.max_gflops, "folds": self.folds, "confirm_epochs": self.confirm_epochs,
                "confirm_top": self.confirm_top, "confirm_folds": self.confirm_folds, "bounds": self.bounds,
                "score": self.score}

    @classmethod
    def from_dict(cls, d: dict) -> RunSettings:
        """Read :meth:`to_dict` output; settings older studies lack take the values those studies ran with."""
        epochs = int(d["epochs"])
        return cls(data=d.get("data"), task=d.get("task", "course"), size=tuple(d["size"]), epochs=epochs,
                   seed=int(d.get("seed", 0)), split_seed=int(d.get("split_seed", d.get("seed", 0))),
                   n_phantoms=int(d.get("n_phantoms", 200)), max_gflops=float(d.get("max_gflops", 0.0)),
                   folds=int(d.get("folds", 2)), confirm_epochs=int(d.get("confirm_epochs") or 2 * epochs),
                   confirm_top=int(d.get("confirm_top", DEFAULT_TOP_K)),
                   confirm_folds=int(d.get("confirm_folds") or d.get("folds", 2)),
                   # Studies made before the space was stored sampled the full space.
                   bounds=d.get("bounds") or SpaceBounds.full().to_dict(),
                   # Studies made before the score was stored scored with batch-norm statistics as training left them.
                   score=d.get("score", "auc"))

    def space(self) -> SpaceBounds:
        """The stored bounds, fitted to the input size (the space never proposes a spec that cannot run)."""
        return bounds_for_size(SpaceBounds.from_dict(self.bounds), self.size)


def load_space_file(path: str) -> dict:
    """``--space FILE.toml`` as a validated SpaceBounds dict.

    Raises:
        ValueError: The file cannot be read or parsed, or a field is unknown or out of range (named).
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as e:
        raise ValueError(f"--space: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--space: {path} is not valid TOML: {e}") from None
    try:
        return SpaceBounds.from_dict(data).to_dict()
    except ValueError as e:
        raise ValueError(f"--space: {path}: {e}") from None


def resolve_settings(args: argparse.Namespace, stored: dict | None, device) -> tuple[RunSettings, str]:
    """Settings from the flags, the stored study, then the device's default fidelity, and the fidelity line.

    Raises:
        ValueError: A flag contradicts the settings the existing study was run with.
    """
    given = {"data": args.data, "task": args.task, "size": list(args.size) if args.size else None,
             "epochs": args.epochs, "seed": args.seed, "split_seed": args.split_seed, "n_phantoms": args.phantoms,
             "max_gflops": args.max_gflops, "folds": args.folds, "confirm_epochs": args.confirm_epochs,
             "confirm_top": args.confirm_top, "confirm_folds": args.confirm_folds,
             "bounds": load_space_file(args.space) if args.space else None, "score": args.score}
    if stored:
        stored = RunSettings.from_dict(stored).to_dict() | {k: v for k, v in stored.items() if k == "data"}
        # The confirmation's settings may change on a resumed study (e.g. --confirm-only --confirm-folds 5):
        # each setting confirms in its own companion study, and the decision records what it used.
        clash = [k for k, v in given.items() if v is not None and k in stored and v != stored[k]
                 and k not in CONFIRM_SETTINGS
                 and not (k == "data" and Path(v).resolve() == Path(stored[k] or "").resolve())]
        if clash:
            was = ", ".join(f"{k}={stored[k]}" for k in clash if k != "bounds")
            if "bounds" in clash:
                was = (was + ", " if was else "") + "another --space"
            raise ValueError(f"study settings: this study was run with {was}; a study must keep one setting "
                             "(to compare trials fairly): drop those flags, or start a new --study NAME")
        merged = {k: (v if v is not None else stored.get(k)) for k, v in given.items()}
    else:
        merged = given
    fidelity = choose_fidelity(device, merged["size"], merged["epochs"], merged["n_phantoms"], merged["max_gflops"],
                               given_by="by the study" if stored else "on the command line")
    settings = RunSettings(
        data=str(Path(merged["data"]).resolve()) if merged["data"] else None,
        task=merged["task"] or "course",
        size=fidelity.size,
        epochs=fidelity.epochs,
        seed=merged["seed"] if merged["seed"] is not None else 0,
        split_seed=merged["split_seed"] if merged["split_seed"] is not None else 0,
        n_phantoms=fidelity.n_phantoms,
        max_gflops=fidelity.max_gflops or 0.0,  # stored 0 = no cap, so a resumed run does not add one
        folds=merged["folds"] or 2,
        confirm_epochs=merged["confirm_epochs"] or fidelity.confirm_epochs,
        confirm_top=merged["confirm_top"] if merged["confirm_top"] is not None else DEFAULT_TOP_K,
        confirm_folds=merged["confirm_folds"] or DEFAULT_CONFIRM_FOLDS,
        bounds=merged["bounds"] or SpaceBounds().to_dict(),
        score=merged["score"] or DEFAULT_SCORE,
    )
    try:
        settings.space()
    except SpecInputError as e:
        raise ValueError(f"--size: {e}") from None
    scored = " with batch-norm statistics recomputed" if settings.score == "auc_bn" else ""
    line = (f"{fidelity.reason}; each trial scored by {settings.folds}-fold cross-validation at its last epoch"
            f"{scored}; "
            f"confirmation of the top {settings.confirm_top} at {settings.confirm_epochs} epochs"
            + (", kept from the study" if stored else ""))
    return settings, line


def _check_args(args: argparse.Namespace) -> None:
    positive("--trials", args.trials)
    positive("--epochs", args.epochs)
    if args.size is not None and min(args.size) < 4:
        raise ValueError(f"--size: expected three voxel counts of at least 4, got {args.size}")
    if args.phantoms is not None and args.phantoms < 10:
        raise ValueError(f"--phantoms: expected at least 10, got {args.phantoms}")
    positive("--timeout", args.timeout, "a positive number of seconds")
    if args.folds is not None and not 2 <= args.folds <= 10:
        raise ValueError(f"--folds: expected 2 to 10 folds, got {args.folds}")
    if args.confirm_folds is not None and not 2 <= args.confirm_folds <= 10:
        raise ValueError(f"--confirm-folds: expected 2 to 10 folds, got {args.confirm_folds}")
    positive("--confirm-top", args.confirm_top)
    positive("--confirm-epochs", args.confirm_epochs)
    positive("--jobs", args.jobs, "a positive count of worker processes")
    budget_minutes(args.budget, resolve_device(args.device))


def budget_minutes(value: str | None, device) -> float | None:
    """``--budget`` in minutes: None for 'none', the device's default when not given.

    Raises:
        ValueError: Not a positive number of minutes or 'none'.
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
        raise ValueError(f"--budget: expected a positive number of minutes or 'none', got {value!r}")
    return minutes


@dataclass
class Started:
    """A run ready to search: its study, settings and data, as :func:`start` made them."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    storage_url: str
    settings: RunSettings
    prepared: PreparedData
    folds: list
    device: torch.device
    objectives: tuple[str, ...]
    created: bool
    stored: dict | None
    began: float = field(default_factory=time.monotonic)  # when the command started, for its time budget


def start(args: argparse.Namespace) -> Started:
    """Open (or create) the study, settle its settings against the flags, load the data and make the folds.

    Raises:
        ValueError, DataError: Bad flags, a flag that contradicts the study, unusable data.
    """
    began = time.monotonic()
    _check_args(args)
    objectives = parse_objectives(args.objectives)
    device = resolve_device(args.device)
    storage_url = args.storage or default_storage(args.study, args.studies_dir)
    storage = open_storage(storage_url)
    stored = _stored_settings(storage, args.study)
    if args.confirm_only and stored is None:
        raise ValueError(f"--confirm-only: no study {args.study!r} in {redact(storage_url)} to confirm "
                         "(run python -m search.run first)")
    settings, fidelity_line = resolve_settings(args, stored, device)
    prepared = _prepare(args, settings)
    # Creating the study and storing its settings is one step (search.study.create_or_load_study).
    study, created = create_or_load_study(
        args.study, storage, seed=settings.seed, pruner=args.pruner, max_folds=settings.folds,
        objectives=objectives, bounds=settings.space(), sampler=args.sampler,
        attrs={schema.STUDY_DATA_SUMMARY: prepared.summary(), schema.STUDY_BOUNDS: settings.space().to_dict(),
               SETTINGS_ATTR: settings.to_dict()})
    if not created and not stored:
        # Another run created the study while this one loaded its data: the study's settings hold, and a
        # flag that contradicts them is the usual one-line error.
        stored = study.user_attrs.get(SETTINGS_ATTR) or {}
        joined, fidelity_line = resolve_settings(args, stored, device)
        if _data_key(joined) != _data_key(settings):
            prepared = _prepare(args, joined)
        settings = joined
    print(f"study {args.study!r} in {redact(storage_url)} ({'new' if created else 'resumed'})")
    print(fidelity_line)
    print(describe(prepared))
    folds = search_folds(prepared, settings.folds, args.studies_dir, settings.split_seed)
    return Started(study, storage, storage_url, settings, prepared, folds, device, objectives, created, stored, began)


def run_search(args: argparse.Namespace, r: Started) -> int:
    """The search, then the confirmation, on a started run. Returns the exit code (0, 2, or 130)."""
    study, settings = r.study, r.settings
    if r.created and study.user_attrs.get(schema.STUDY_BASELINE_NOTE):
        print(f"note: {study.user_attrs[schema.STUDY_BASELINE_NOTE]}")
    if not r.created and (not r.stored or any(r.stored.get(k) != settings.to_dict()[k] for k in CONFIRM_SETTINGS)):
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    # What a dead worker (kill -9, a crash) or Ctrl-C left behind: failed with its reason, queued again.
    for line in [*recover_trials(study), requeue_lost_baseline(study)]:
        if line:
            print(line)

    amp = device_precision(r.device).amp
    interrupted = stage = None
    if not args.confirm_only:
        budget = _budget(args, r, amp)
        run_trials = _search_parallel if args.jobs > 1 else _search
        interrupted = run_trials(args, study, settings, r.folds, r.device, amp, r.objectives, budget)
        if interrupted is None:
            return EXIT_BAD_INPUT
        stage = "search"
        print()
        print(summary_table(study))
        if budget.stop is not None and budget.stop.stopped:
            print(budget.stop.stopped)
    if not interrupted and not args.no_confirm and len(r.objectives) == 1:
        interrupted = _confirm(args, study, r.storage, r.prepared, settings, r.device, amp)
        stage = "confirmation"
    _print_next_steps(args, r.storage_url)
    if interrupted:
        flags = " ".join(f"--{k} {v}" for k, v in (("study", args.study), ("storage", redact(args.storage or "")),
                                                   ("studies-dir", args.studies_dir if args.studies_dir != "studies"
                                                    else "")) if v)
        again = "--trials N" if stage == "search" else "--confirm-only"
        what = ("trials are" if args.jobs > 1 else "trial is") if stage == "search" else "confirmation run is"
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
    return exit_code(lambda: run_search(args, start(args)),
                     interrupted="interrupted: finished trials are kept; run the same command again to continue")


def _trial_settings(settings: RunSettings, device, amp: bool, objectives: tuple[str, ...]) -> SearchSettings:
    """What every trial of this run shares."""
    return SearchSettings(size=settings.size, epochs=settings.epochs, device=device, seed=settings.seed, amp=amp,
                          objectives=objectives, bounds=settings.space(), max_gflops=settings.max_gflops or None,
                          recompute_bn=settings.score == "auc_bn")


@dataclass
class Budget:
    """A run's time plan (search.budget) and, under a budget, the callback that stops the search in time."""

    plan: Plan
    stop: BudgetStop | None


def _workload(args: argparse.Namespace, r: Started) -> Workload:
    s = r.settings
    fold_train = sum(len(train) for _, train, _ in r.folds) / max(len(r.folds), 1)
    confirms = not args.no_confirm and len(r.objectives) == 1
    non_test = len(r.prepared.split.train) + len(r.prepared.split.val)
    # Every candidate (the top trunks and the baseline) trains once per fresh fold on (k-1)/k of the non-test scans.
    confirm = (s.confirm_top + 1) * s.confirm_epochs * non_test * (s.confirm_folds - 1)
    return Workload(args.trials, round(s.folds * s.epochs * fold_train), round(confirm) if confirms else 0,
                    s.confirm_top + 1)


def _budget(args: argparse.Namespace, r: Started, amp: bool) -> Budget:
    """Measure this machine's speed, print what the run will take here, and arm the budget's stop rule."""
    work = _workload(args, r)
    speed = measure_speed(r.settings.size, r.device, amp)
    minutes = budget_minutes(args.budget, r.device)
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
        return Budget(time_plan, None)
    size, top = r.settings.size, r.settings.confirm_top
    return Budget(time_plan, BudgetStop(time_plan.deadline, speed, work,
                                        lambda study: [c.trial for c in select_candidates(study, size, top)]))


def _search(args: argparse.Namespace, study: optuna.Study, settings: RunSettings, folds: list, device, amp: bool,
            objectives: tuple[str, ...], budget: Budget) -> bool:
    """The trials. Returns whether Ctrl-C stopped them."""
    run = _trial_settings(settings, device, amp, objectives)
    progress = SearchProgress(args.trials, settings.epochs * settings.folds)
    artifacts = TrialArtifacts(artifact_dir(args.studies_dir, args.study))
    objective = Objective([FoldData(f.fold, train, val) for f, train, val in folds], run,
                          on_epoch=progress.on_epoch, on_trial_end=artifacts)
    interrupted = False
    try:
        callbacks = [progress.on_trial_end, *([budget.stop] if budget.stop is not None else [])]
        study.optimize(objective, n_trials=args.trials, timeout=args.timeout, catch=(TrialFailed,),
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


def _search_parallel(args: argparse.Namespace, study: optuna.Study, settings: RunSettings, folds: list, device,
                     amp: bool, objectives: tuple[str, ...], budget: Budget) -> bool | None:
    """The trials on ``--jobs`` worker processes. Returns whether Ctrl-C stopped them; None when every worker
    failed with an error (printed)."""
    jobs = min(args.jobs, args.trials)
    storage_url = args.storage or default_storage(args.study, args.studies_dir)
    run = _trial_settings(settings, device, amp, objectives)
    threads = threads_per_worker(jobs)
    plan = WorkerPlan(study=args.study, storage_url=storage_url, studies_dir=args.studies_dir,
                      data_root=str(resolve_data_root(settings.data, args.studies_dir, settings.n_phantoms, 0)),
                      task=settings.task, split_seed=settings.split_seed, folds=settings.folds, sampler=args.sampler,
                      pruner=args.pruner, search=run, threads=threads,
                      deadline=_parallel_deadline(args.timeout, budget.plan))
    devices = worker_devices(device, jobs)
    where = ", ".join(sorted({str(d) for d in devices}))
    per_worker = f", {threads} CPU thread{'s' if threads > 1 else ''} each" if device.type == "cpu" else ""
    print(f"{jobs} workers on {where}{per_worker}")
    progress = SearchProgress(args.trials, settings.epochs * settings.folds)
    try:
        result = run_parallel(plan, devices, study, args.trials, progress)
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
    estimate (padded by search.budget.SAFETY) and the slowest worker's last trial may run past it.
    """
    ends = [time.time() + timeout] if timeout else []
    if time_plan.deadline is not None:
        ends.append(time.time() + (time_plan.deadline - budget_now()) - SAFETY * time_plan.confirm_s)
    return min(ends) if ends else None


def _confirm(args: argparse.Namespace, study: optuna.Study, storage, prepared: PreparedData, settings: RunSettings,
             device, amp: bool) -> bool:
    """The confirmation stage (resumable). Returns whether Ctrl-C stopped it."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        print("\nconfirmation skipped: no complete trial yet")
        return False
    # Fresh folds: another assignment than the search's (seed + 1), new training seeds.
    fresh = search_folds(prepared, settings.confirm_folds, args.studies_dir, settings.split_seed + 1)
    confirm_settings = ConfirmSettings(epochs=settings.confirm_epochs, seed=settings.seed,
                                       folds=settings.confirm_folds, fold_seed=settings.split_seed + 1,
                                       top_k=settings.confirm_top)
    print(f"\nconfirming the top {settings.confirm_top} distinct specs and the seed baseline on fresh "
          f"{settings.confirm_folds}-fold splits at {settings.confirm_epochs} epochs")
    try:
        decision = confirm(study, storage, [ConfirmFold(0, f.fold, train, val) for f, train, val in fresh],
                           confirm_settings, settings.size, device, amp,
                           artifacts=artifact_dir(args.studies_dir, args.study))
    except KeyboardInterrupt:
        return True
    except ValueError as e:
        print(f"confirmation: {e}", file=sys.stderr)
        return False
    print(format_decision(decision))
    return False


def _prepare(args: argparse.Namespace, settings: RunSettings) -> PreparedData:
    """The study's data: train and validation parts only, at its size, task and split."""
    root = resolve_data_root(settings.data, args.studies_dir, settings.n_phantoms, 0)
    return prepare_data(root, PreprocessConfig(size=settings.size), task=settings.task, seed=settings.split_seed,
                        studies_dir=args.studies_dir, workers=args.workers, progress=sys.stderr.isatty())


def _data_key(settings: RunSettings) -> tuple:
    """The settings that decide which data is loaded, and how."""
    return settings.data, settings.n_phantoms, settings.task, settings.size, settings.split_seed


def _stored_settings(storage, name: str) -> dict | None:
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    for s in summaries:
        if s.study_name == name:
            return s.user_attrs.get(SETTINGS_ATTR) or {}
    return None


def _print_next_steps(args: argparse.Namespace, storage_url: str) -> None:
    artifacts = artifact_dir(args.studies_dir, args.study)
    study_flags = "" if args.study == "lungct" and not args.storage else f" --study {args.study}"
    if args.storage:
        study_flags += f" --storage {redact(storage_url)}"
    if args.studies_dir != "studies":
        study_flags += f" --studies-dir {args.studies_dir}"
    print("\nnext:")
    print(f"  optuna-dashboard {redact(storage_url)} --artifact-dir {artifacts}   # live view, learning curves")
    print(f"  python -m search.report{study_flags}   # offline HTML report: importance, Pareto front")
    print(f"  python -m search.export{study_flags}   # ship the recommended model, test it once, write it")


if __name__ == "__main__":
    raise SystemExit(main())
