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

import optuna

from lungct.errors import UsageError
from search import cli
from search.selection.confirm import DEFAULT_CONFIRM_FOLDS, DEFAULT_TOP_K
from search.selection.objective import DEFAULT_SCORE, SCORES
from search.selection.parallel import usable_cores
from search.selection.settings import GivenSettings, RunJob, load_space_file
from search.selection.stages import Ended, run_study
from search.study.storage import PRUNERS, SAMPLERS, parse_objectives

# The CPU default: what a student on a 2-core laptop-class CPU can wait for; a GPU run has no default budget.
DEFAULT_CPU_BUDGET_MIN = 30.0
# A week: longer is a typo (1e9 minutes is a time of day 1,900 years away), and 1e308 overflows the clock.
MAX_BUDGET_MIN = 10080.0
# Every worker failing is bad input: what stops them all is a flag, the data or the study, said on stderr per worker.
EXIT_CODES = {Ended.DONE: cli.EXIT_OK, Ended.SEARCH_INTERRUPTED: cli.EXIT_INTERRUPTED,
              Ended.CONFIRMATION_INTERRUPTED: cli.EXIT_INTERRUPTED, Ended.WORKERS_FAILED: cli.EXIT_BAD_INPUT}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.run``."""
    p = cli.command_parser("search.run", __doc__, epilog="Exit code: 0 done, 2 bad input (flags, data, study), "
                           "130 interrupted (finished trials kept; the command to resume is printed).")
    p.add_argument("--trials", type=int, default=50, metavar="N", help="trials to add to the study (default: 50)")
    cli.add_data_flag(p)
    cli.add_study_flags(p, "any SQLAlchemy URL, PostgreSQL included")
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
    cli.add_size_flag(p, "32 64 64 on the CPU, the seed's 64 128 128 on a GPU; a resumed study keeps its own")
    cli.add_device_flag(p)
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seeds the sampler and training (default: 0; a resumed study keeps its own)")
    cli.add_split_seed_flag(p, None, "; keep one per data set so every study, export and ablation holds out the "
                            "same test scans (default: 0)")
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
    cli.add_task_flag(p, default=None)
    cli.add_phantoms_flag(p)
    cli.add_studies_dir_flag(p, "where studies, caches, splits and artifacts are written")
    cli.add_workers_flag(p)
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
                   "between them; the confirmation stage follows, its runs as --confirm-jobs says (default: 1)")
    p.add_argument("--confirm-jobs", type=int, default=None, metavar="N",
                   help="confirmation runs trained at once, each in its own process with the CPU cores divided "
                   "among them; each run depends only on its seed and its thread count, so a seed reproduces its "
                   "confirmation at any N > 1 that gives the same threads per run; measured 1.2x with 2 on a 2-core "
                   "EPYC; Ctrl-C with runs in flight can take minutes to stop them (default: 1, one run at a time "
                   "on every thread; on a GPU always 1)")
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
                 backup_to=args.backup_to, confirm_jobs=args.confirm_jobs)
    check_flags(given, job)
    if args.space:
        given = dataclasses.replace(given, bounds=load_space_file(args.space))
    return given, job


def check_flags(given: GivenSettings, job: RunJob) -> None:
    """Refuse a flag's value that no run can use, naming the flag.

    Raises:
        UsageError: The first such flag.
    """
    cli.positive("--trials", job.trials)
    cli.positive("--epochs", given.epochs)
    if given.size is not None and min(given.size) < 4:
        raise UsageError(f"--size: expected three voxel counts of at least 4, got {list(given.size)}")
    if given.n_phantoms is not None and given.n_phantoms < 10:
        raise UsageError(f"--phantoms: expected at least 10, got {given.n_phantoms}")
    cli.positive("--timeout", job.timeout_s, "a positive number of seconds")
    if given.folds is not None and not 2 <= given.folds <= 10:
        raise UsageError(f"--folds: expected 2 to 10 folds, got {given.folds}")
    if given.confirm_folds is not None and not 2 <= given.confirm_folds <= 10:
        raise UsageError(f"--confirm-folds: expected 2 to 10 folds, got {given.confirm_folds}")
    cli.positive("--confirm-top", given.confirm_top)
    cli.positive("--confirm-epochs", given.confirm_epochs)
    cli.positive("--jobs", job.jobs, "a positive count of worker processes")
    cores = usable_cores()
    if job.jobs > cores:
        raise UsageError(f"--jobs: this machine has {cores} CPU core{'s' if cores > 1 else ''} for this run; "
                         f"expected at most {cores} worker process{'es' if cores > 1 else ''}, got {job.jobs}")
    cli.positive("--confirm-jobs", job.confirm_jobs, "a positive count of processes")
    if job.confirm_jobs is not None and job.confirm_jobs > 1 and job.device.type == "cuda":
        raise UsageError("--confirm-jobs: runs train one at a time on a GPU; more than 1 needs --device cpu")
    if job.confirm_jobs is not None and job.confirm_jobs > cores:
        raise UsageError(f"--confirm-jobs: this machine has {cores} CPU core{'s' if cores > 1 else ''} for this "
                         f"run; expected at most {cores}, got {job.confirm_jobs}")
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


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) a search and its confirmation. Returns the exit code: 0 done, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines replace Optuna's per-trial logs
    # Ctrl-C during a trial or a confirmation run is handled where it lands (the run is failed and can be
    # resumed); one that reaches here came while the data loaded or between stages.
    return cli.exit_code(lambda: EXIT_CODES[run_study(*parse_flags(args))],
                         interrupted="interrupted: finished trials are kept; run the same command again to continue")


if __name__ == "__main__":
    raise SystemExit(main())
