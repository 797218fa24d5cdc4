"""``python -m search.export``: train the recommended model, test it once on the locked test part, write a model folder.

The search saw only the train and validation parts. Export takes the confirmation stage's
recommendation (``search.selection.confirm``: the seed baseline unless a candidate beat it by more than the paired
noise), trains it on train + validation for the confirmation's epoch count, and evaluates it once on the
test part, which nothing else reads. The seed baseline is trained and tested the same way beside it, so
what the search gained is measured on scans neither model has seen, and metrics.json records the
confirmed score, the test AUC and their difference (the optimism). ``--ensemble`` ships instead the
fold models the confirmation trained and scored for a searched spec, as an ensemble that averages their
probabilities: the model whose out-of-fold score chose it (measured: 0.011-0.012 AUC below the refit on
fresh phantoms, at three times the inference, with an optimism near 0; benchmarks/RESULTS.md). The folder
it writes (see ``search.model.folder``) is what ``python -m search.predict`` reads; the baseline's weights go
to its ``baseline/`` subfolder, a model folder of its own, so both can be scored on new scans. Pictures of
the test evaluation (ROC with its bootstrap band, calibration, confusion counts; ``search.shipping.figures``) are
drawn from metrics.json into the folder beside the model card that embeds them; the ROC, the calibration
and Grad-CAM++ saliency montages of the surest test scan of each outcome are also attached to the study
for optuna-dashboard, named after the exported trial (its artifact store, not the shared folder: they
show scans). The folder also holds ``bundle/``, the same model as a MONAI bundle that ``python -m monai.bundle
run`` executes with the project's own preprocessing (``search.shipping.bundle``).

For an ordinal task (``--task severity`` in the search) the model and the baseline are trained with the
task's ordinal head (``space.build(spec, grades=K)``, K-1 cumulative logits), and metrics.json, the card
and the pictures report the mean "grade >= k" AUC (the selection metric) with its interval and the
paired difference from the baseline, QWK and MAE with intervals, the macro one-vs-rest AUC, the balanced
accuracy, the K x K confusion matrix and each "grade >= k" ROC curve with its band
(``search.shipping.metrics.evaluate_grades``); the dashboard's saliency examples are the surest correct
scan of the lowest and of the highest grade and the worst miss.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch

from lungct.errors import UsageError
from search.cli import (
    add_data_flag,
    add_device_flag,
    add_studies_dir_flag,
    add_study_flags,
    add_workers_flag,
    command_parser,
    device_flag,
    exit_code,
    positive,
)
from search.model.folder import CARD
from search.selection.settings import stored_settings
from search.shipping.bundle import BUNDLE_DIR
from search.shipping.export import run_export
from search.shipping.metrics import evaluate as evaluate  # re-exported: tests import it from here
from search.shipping.models import ExportError, ExportSettings
from search.shipping.models import choose as choose  # re-exported: tests import it from here
from search.shipping.writing import BASELINE_DIR as BASELINE_DIR  # re-exported: tests import it from here
from search.stats.intervals import DEFAULT_RESAMPLES
from search.study.storage import default_storage, load_existing_study


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.export``."""
    p = command_parser("search.export", __doc__, epilog="Exit code: 0 written, 1 training or the export check "
                       "failed, 2 bad input (flags, study, data, --out), 130 interrupted (nothing written).")
    add_study_flags(p)
    add_studies_dir_flag(p, "where studies, caches and splits live")
    add_data_flag(p, "the data the study searched on, as stored in the study",
                  "it must be the same data set, so the test part is the one the search held out")
    p.add_argument("--out", metavar="DIR", help="model folder to write (default: studies/<study>/model)")
    p.add_argument("--trial", type=int, metavar="N", help="export this complete trial instead of the "
                   "confirmation's recommendation (default: the recommendation; see python -m search.run)")
    p.add_argument("--ensemble", action="store_true",
                   help="ship the confirmation's fold models of a recommended searched spec as one ensemble "
                   "(mean probability) instead of training it once more on all of train+val: the exact models the "
                   "confirmation scored, at K times the inference (default: off, one model; a recommended seed "
                   "baseline and the baseline beside the model are always trained once on train+val)")
    p.add_argument("--epochs", type=int, metavar="E", help="training epochs on train+val for the model and the "
                   "baseline (default: the confirmation's epochs per run, which the study stores)")
    add_device_flag(p)
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"stratified bootstrap resamples for the 95%% CIs of AUC (default: {DEFAULT_RESAMPLES})")
    p.add_argument("--include-scan-ids", action="store_true",
                   help="also write the locked test part's study ids, with each scan's label and both models' "
                   "probabilities, into metrics.json (default: off: study ids can identify patients, and the "
                   "folder is meant to be shared; it holds counts and metrics only, and no local path)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier export in --out (default: refuse; a folder that is not an "
                   "export is never replaced)")
    add_workers_flag(p)
    return p


@dataclass(frozen=True, kw_only=True)
class ExportJob:
    """What ``python -m search.export`` was asked for; the rest comes from the study's stored settings.

    Attributes:
        study: The study's name.
        storage: Its storage URL (None: ``sqlite:///<studies_dir>/<study>.db``).
        studies_dir: Where studies, caches and splits live.
        data: The data folder (None: the one the study searched on).
        out: The model folder to write (None: ``<studies_dir>/<study>/model``).
        trial: Export this complete trial instead of the confirmation's recommendation.
        ensemble: Ship the confirmation's fold models of the recommendation.
        epochs: Training epochs on train+val (None: the confirmation's).
        device: The torch device to train on.
        bootstrap: Stratified bootstrap resamples for the test AUC's CI.
        include_scan_ids: Also write the test part's study ids and probabilities into metrics.json.
        force: Replace an earlier export in ``out``.
        workers: Processes decoding scans on a cold cache (None: all cores).
    """

    study: str = "lungct"
    storage: str | None = None
    studies_dir: str = "studies"
    data: str | None = None
    out: str | None = None
    trial: int | None = None
    ensemble: bool = False
    epochs: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bootstrap: int = DEFAULT_RESAMPLES
    include_scan_ids: bool = False
    force: bool = False
    workers: int | None = None


def parse_flags(args: argparse.Namespace) -> ExportJob:
    """The flags as an :class:`ExportJob`.

    Raises:
        UsageError: A flag's value is out of range, or two flags exclude each other.
    """
    job = ExportJob(study=args.study, storage=args.storage, studies_dir=args.studies_dir, data=args.data,
                    out=args.out, trial=args.trial, ensemble=args.ensemble, epochs=args.epochs,
                    device=device_flag(args.device), bootstrap=args.bootstrap,
                    include_scan_ids=args.include_scan_ids, force=args.force, workers=args.workers)
    check_flags(job)
    return job


def check_flags(job: ExportJob) -> None:
    """Refuse what no export can do, naming the flag.

    Raises:
        UsageError: The first such flag.
    """
    positive("--epochs", job.epochs)
    if job.ensemble and job.trial is not None:
        raise UsageError("--ensemble: ships the confirmation's fold models of its recommendation; a --trial is "
                         "trained on train+val instead, so pass one or the other")
    if job.ensemble and job.epochs is not None:
        raise UsageError("--epochs: the fold models --ensemble ships trained for the confirmation's epochs, and the "
                         "baseline beside them trains for as many; pass one or the other")
    if job.bootstrap < 100:
        raise UsageError(f"--bootstrap: expected at least 100 resamples, got {job.bootstrap}")


def export_settings(job: ExportJob) -> tuple[optuna.Study, ExportSettings]:
    """The study and what to export from it: the job, then the settings the study was run with.

    Raises:
        UsageError: No such study, or one that ``search.run`` did not make.
    """
    storage = job.storage or default_storage(job.study, job.studies_dir)
    study = load_existing_study(job.study, storage)
    run = stored_settings(study)
    return study, ExportSettings(
        study=job.study, storage=storage, studies_dir=Path(job.studies_dir),
        out=Path(job.out) if job.out else Path(job.studies_dir) / job.study / "model",
        data=job.data or run.data, task=run.task, size=run.size, seed=run.seed, split_seed=run.split_seed,
        n_phantoms=run.n_phantoms, epochs=job.epochs, bootstrap=job.bootstrap, device=job.device,
        force=job.force, include_scan_ids=job.include_scan_ids, ensemble=job.ensemble, trial=job.trial,
        workers=job.workers)


def main(argv: list[str] | None = None) -> int:
    """Export a study's best model. Returns the exit code: 0 done, 1 export failed, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def body() -> None:
        out = run_export(*export_settings(parse_flags(args)))
        print(f"\nwrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
        print(f"read {out / CARD}; predict on a scan with:\n  python -m search.predict {out} SCAN.nii.gz")
        bundle = out / BUNDLE_DIR
        print(f"or with MONAI's bundle runner (see {bundle / 'docs' / 'README.md'}):\n  python -m monai.bundle run "
              f"--config_file {bundle}/configs/inference.json --meta_file {bundle}/configs/metadata.json "
              f"--bundle_root {bundle} --dataset_dir SCANS_DIR --output_dir OUT_DIR")

    return exit_code(body, failures=(ExportError,), interrupted="interrupted: nothing was written")


if __name__ == "__main__":
    raise SystemExit(main())
