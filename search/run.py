"""``python -m search.run --trials N``: the architecture search.

Samples architectures from the ``space`` package with a seeded TPE sampler, trains each on the train
split, reports validation ROC AUC every epoch so the pruner can stop poor trials, and stores
everything in an Optuna study (SQLite under ``studies/`` by default). Running it again continues the
same study: ``--trials N`` adds N trials. Trial 0 of every new study is the course's seed model.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lungct.errors import DataError
from lungct.records import TASKS, PreprocessConfig
from search.artifacts import TrialArtifacts, artifact_dir
from search.data import describe, prepare_data, resolve_data_root
from search.fidelity import choose_fidelity
from search.objective import Objective, SearchSettings, TrialFailed
from search.progress import SearchProgress, summary_table
from search.study import PRUNERS, create_or_load_study, default_storage, open_storage, parse_objectives, redact
from search.train import resolve_device

SETTINGS_ATTR = "settings"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.run``."""
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=50, metavar="N", help="trials to add to the study (default: 50)")
    p.add_argument("--data", metavar="ROOT", help="data folder or CSV manifest (default: the synthetic phantom "
                   "set, generated once under studies/)")
    p.add_argument("--study", default="lungct", metavar="NAME", help="study name (default: lungct)")
    p.add_argument("--storage", metavar="URL", help="any SQLAlchemy URL, PostgreSQL included (default: "
                   "sqlite:///studies/<study>.db)")
    p.add_argument("--epochs", type=int, metavar="E", help="maximum epochs per trial (default: 8 on the CPU, "
                   "30 on a GPU; a resumed study keeps its own)")
    p.add_argument("--size", type=int, nargs=3, metavar=("D", "H", "W"), help="input size in voxels (default: "
                   "32 64 64 on the CPU, the seed's 64 128 128 on a GPU; a resumed study keeps its own)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = CUDA when available, else CPU (default: auto)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seeds the sampler and training (default: 0; a resumed study keeps its own)")
    p.add_argument("--split-seed", type=int, default=None, metavar="S",
                   help="seed of the data set's train/val/test split; keep one per data set so every study, "
                   "export and ablation holds out the same test scans (default: 0)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="start no new trial after this many "
                   "seconds (default: no limit)")
    p.add_argument("--pruner", default="hyperband", choices=PRUNERS,
                   help="early stopping of poor trials over epochs (default: hyperband)")
    p.add_argument("--objectives", default="auc", metavar="LIST",
                   help="auc (default), or auc,params / auc,flops for a multi-objective study that looks for "
                   "the Pareto front of AUC against cost; Optuna cannot prune multi-objective studies, so "
                   "--pruner is ignored there")
    p.add_argument("--max-gflops", type=float, default=None, metavar="G",
                   help="prune, before training, any trial whose forward GFLOPs per sample exceed G; 0 = no cap "
                   "(default: 3x the seed baseline's cost at the input size on the CPU, no cap on a GPU)")
    p.add_argument("--task", default=None, choices=sorted(TASKS),
                   help="which categories are labels 0 and 1 (default: course = CT-0 vs CT-2/CT-3)")
    p.add_argument("--phantoms", type=int, default=None, metavar="N",
                   help="size of the default phantom set when no --data is given (default: 200)")
    p.add_argument("--studies-dir", default="studies", metavar="DIR",
                   help="where studies, caches, splits and artifacts are written (default: studies)")
    p.add_argument("--workers", type=int, default=None, help="processes decoding scans on a cold cache "
                   "(default: all cores)")
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

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"data": self.data, "task": self.task, "size": list(self.size), "epochs": self.epochs,
                "seed": self.seed, "split_seed": self.split_seed, "n_phantoms": self.n_phantoms,
                "max_gflops": self.max_gflops}


def resolve_settings(args: argparse.Namespace, stored: dict | None, device) -> tuple[RunSettings, str]:
    """Settings from the flags, the stored study, then the device's default fidelity, and the fidelity line.

    Raises:
        ValueError: A flag contradicts the settings the existing study was run with.
    """
    given = {"data": args.data, "task": args.task, "size": list(args.size) if args.size else None,
             "epochs": args.epochs, "seed": args.seed, "split_seed": args.split_seed, "n_phantoms": args.phantoms,
             "max_gflops": args.max_gflops}
    if stored:
        clash = [k for k, v in given.items() if v is not None and k in stored and v != stored[k]
                 and not (k == "data" and Path(v).resolve() == Path(stored[k] or "").resolve())]
        if clash:
            was = ", ".join(f"{k}={stored[k]}" for k in clash)
            raise ValueError(f"study settings: this study was run with {was}; a study must keep one setting "
                             "(to compare trials fairly): drop those flags, or start a new --study NAME")
        merged = {k: (v if v is not None else stored.get(k)) for k, v in given.items()}
    else:
        merged = given
    fidelity = choose_fidelity(device, merged["size"], merged["epochs"], merged["n_phantoms"], merged["max_gflops"])
    settings = RunSettings(
        data=str(Path(merged["data"]).resolve()) if merged["data"] else None,
        task=merged["task"] or "course",
        size=fidelity.size,
        epochs=fidelity.epochs,
        seed=merged["seed"] if merged["seed"] is not None else 0,
        split_seed=merged["split_seed"] if merged["split_seed"] is not None else 0,
        n_phantoms=fidelity.n_phantoms,
        max_gflops=fidelity.max_gflops or 0.0,  # stored 0 = no cap, so a resumed run does not add one
    )
    line = fidelity.reason + (", kept from the study" if stored else "")
    return settings, line


def _check_args(args: argparse.Namespace) -> None:
    if args.trials < 1:
        raise ValueError(f"--trials: expected a positive count, got {args.trials}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs: expected a positive count, got {args.epochs}")
    if args.size is not None and min(args.size) < 4:
        raise ValueError(f"--size: expected three voxel counts of at least 4, got {args.size}")
    if args.phantoms is not None and args.phantoms < 10:
        raise ValueError(f"--phantoms: expected at least 10, got {args.phantoms}")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout: expected a positive number of seconds, got {args.timeout}")


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) a search. Returns the exit code: 0 done, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines replace Optuna's per-trial logs
    try:
        _check_args(args)
        objectives = parse_objectives(args.objectives)
        device = resolve_device(args.device)
        storage_url = args.storage or default_storage(args.study, args.studies_dir)
        storage = open_storage(storage_url)
        stored = _stored_settings(storage, args.study)
        settings, fidelity_line = resolve_settings(args, stored, device)
        print(f"study {args.study!r} in {redact(storage_url)} ({'resumed' if stored else 'new'})")
        print(fidelity_line)
        root = resolve_data_root(settings.data, args.studies_dir, settings.n_phantoms, 0)
        prepared = prepare_data(root, PreprocessConfig(size=settings.size), task=settings.task,
                                seed=settings.split_seed, studies_dir=args.studies_dir, workers=args.workers,
                                progress=sys.stderr.isatty())
        print(describe(prepared))
        study, created = create_or_load_study(args.study, storage, seed=settings.seed, pruner=args.pruner,
                                              max_epochs=settings.epochs, objectives=objectives)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if created:
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
        study.set_user_attr("data_summary", prepared.summary())

    run = SearchSettings(size=settings.size, epochs=settings.epochs, device=device, seed=settings.seed,
                         amp=choose_fidelity(device, settings.size, settings.epochs).amp, objectives=objectives,
                         max_gflops=settings.max_gflops or None)
    progress = SearchProgress(args.trials, settings.epochs)
    artifacts = TrialArtifacts(artifact_dir(args.studies_dir, args.study))
    objective = Objective(prepared.tensors("train"), prepared.tensors("val"), run, on_epoch=progress.on_epoch,
                          on_trial_end=artifacts)
    interrupted = False
    try:
        study.optimize(objective, n_trials=args.trials, timeout=args.timeout, catch=(TrialFailed,),
                       callbacks=[progress.on_trial_end])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        _fail_running(study, objective)
    print()
    print(summary_table(study))
    _print_next_steps(args, storage_url)
    if interrupted:
        flags = " ".join(f"--{k} {v}" for k, v in (("study", args.study), ("storage", args.storage)) if v)
        print(f"\nInterrupted: the running trial is marked failed, finished trials are kept. Resume with:\n"
              f"  python -m search.run --trials N {flags}".rstrip(), file=sys.stderr)
        return 130
    return 0


def _stored_settings(storage, name: str) -> dict | None:
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    for s in summaries:
        if s.study_name == name:
            return s.user_attrs.get(SETTINGS_ATTR) or {}
    return None


def _fail_running(study: optuna.Study, objective: Objective) -> None:
    """Mark this process's trial failed if it is still RUNNING (Optuna fails it itself in most cases)."""
    number = objective.running
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number] if number < len(study.get_trials(deepcopy=False)) else None
    if trial is not None and trial.state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL)


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
    print(f"  python -m search.export{study_flags}   # retrain the best model, test it once, write it")


if __name__ == "__main__":
    raise SystemExit(main())
