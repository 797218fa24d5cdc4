"""``python -m search.ablate``: the seed baseline against each course modification, by repeated cross-validation.

Trains the seed model and each of the course's six modifications (and, with --study NAME, that search
study's best architecture) on the same K stratified folds x R repeats of the train+validation scans,
with the same seeds, then compares each variant with the baseline fold by fold: mean and 95% CI of
validation AUC and accuracy, the paired AUC difference and a paired test, and a verdict at 0.05.
With --task severity every run trains the ordinal head of the task's four grades and is scored by the
mean AUC of "grade >= k" (k = 1..3), the search's score, beside the exact-grade accuracy, the quadratic
weighted kappa and the mean absolute error in grades. The locked test part is never read. Every run is
a trial of its own Optuna study, so an interrupted ablation resumes where it stopped and
optuna-dashboard shows each run's learning curve.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import optuna
import torch

from lungct.errors import UsageError
from search import cli
from search.ablation import AblationJob, AblationSettings, run_ablation
from search.ablation.variants import STUDY_BEST, parse_variants
from search.study.names import study_name
from search.study.storage import redact
from search.training.fidelity import CPU_DEFAULT, GPU_DEFAULT, choose_fidelity, device_defaults
from space import variants


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.ablate``."""
    cpu, gpu = CPU_DEFAULT, GPU_DEFAULT
    cpu_size, gpu_size = " ".join(map(str, cpu["size"])), " ".join(map(str, gpu["size"]))
    p = cli.command_parser("search.ablate", __doc__)
    cli.add_data_flag(p)
    p.add_argument("--variants", default="all", metavar="LIST",
                   help=f"all, or a comma-separated list of {', '.join(variants())}; the baseline is always "
                   "included, since every variant is compared with it (default: all)")
    # --study and --storage mean other things than search.run's: a study to add, where the runs go.
    p.add_argument("--study", metavar="NAME", type=study_name, help=f"also run the best complete trial of this "
                   f"search study as variant {STUDY_BEST} (default: none)")
    p.add_argument("--study-storage", metavar="URL", help="storage of --study (default: sqlite:///studies/<NAME>.db)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="stratified folds per repeat (default: 5)")
    p.add_argument("--repeats", type=int, default=2, metavar="R",
                   help="repeats of the K-fold split, each reshuffled (default: 2)")
    p.add_argument("--epochs", type=int, metavar="E", help=f"epochs per run (default: {cpu['ablate_epochs']} on "
                   f"the CPU, {gpu['ablate_epochs']} on a GPU)")
    cli.add_size_flag(p, f"{cpu_size} on the CPU, the seed's {gpu_size} on a GPU")
    cli.add_device_flag(p)
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the folds and training (run "
                   "(repeat r, fold f) uses S + 1000 r + f for every variant) (default: 0)")
    cli.add_split_seed_flag(p, 0, ", whose test part the ablation never reads; keep it equal to search.run's "
                            "--split-seed; with --study the study's is used (default: 0)")
    cli.add_task_flag(p)
    p.add_argument("--storage", metavar="URL", help="where the runs are stored, any SQLAlchemy URL "
                   "(default: sqlite:///studies/ablation.db)")
    p.add_argument("--out", metavar="DIR", help="where ablation.csv, runs.csv and ablation.html go "
                   "(default: studies/ablation)")
    cli.add_phantoms_flag(p, default=cpu["n_phantoms"], shown=cpu["n_phantoms"])
    cli.add_studies_dir_flag(p, "where studies, caches, splits and outputs are written")
    cli.add_workers_flag(p)
    return p


def _at_least(flag: str, value: int, least: int) -> None:
    if value < least:
        raise UsageError(f"{flag}: expected at least {least}, got {value}")


def parse_flags(args: argparse.Namespace) -> tuple[AblationSettings, AblationJob, torch.device]:
    """The flags as the settings every run shares (the device's default fidelity where a flag is not given),
    the job, and the device.

    Raises:
        UsageError: A flag's value is out of range, or ``--variants`` names no variant.
    """
    _at_least("--folds", args.folds, 2)
    cli.positive("--repeats", args.repeats)
    cli.positive("--epochs", args.epochs)
    if args.size is not None and min(args.size) < 4:
        raise UsageError(f"--size: expected three voxel counts of at least 4, got {args.size}")
    _at_least("--phantoms", args.phantoms, 10)
    names, added = parse_variants(args.variants)
    device = cli.device_flag(args.device)
    job = AblationJob(variants=tuple(names), baseline_added=added, study=args.study,
                      study_storage=args.study_storage, storage=args.storage, out=args.out,
                      studies_dir=args.studies_dir, workers=args.workers)
    epochs = args.epochs or device_defaults(device)["ablate_epochs"]
    fidelity = choose_fidelity(device, tuple(args.size) if args.size else None, epochs, args.phantoms)
    settings = AblationSettings(data=str(Path(args.data).resolve()) if args.data else None, task=args.task,
                                size=fidelity.size, split_seed=args.split_seed, n_phantoms=fidelity.n_phantoms,
                                epochs=fidelity.epochs, folds=args.folds, repeats=args.repeats, seed=args.seed,
                                amp=fidelity.amp)
    return settings, job, device


def resume_hint(argv: list[str]) -> str:
    """What Ctrl-C leaves, and the command that resumes, every URL in it with its passwords masked."""
    shown = [redact(arg) if "://" in arg else arg for arg in argv]
    return ("Interrupted: the running run is marked failed; finished runs are kept. Resume with:\n"
            f"  python -m search.ablate {shlex.join(shown)}").rstrip()


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) an ablation. Returns the exit code: 0 done, 2 bad input, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines replace Optuna's per-trial logs

    def body() -> None:
        run_ablation(*parse_flags(args))

    return cli.exit_code(body, interrupted=resume_hint(argv))


if __name__ == "__main__":
    raise SystemExit(main())
