"""A whole ablation, resumable: from the data to the written outputs, as ``python -m search.ablate`` runs it.

Loads the train and validation scans once (the locked test part is never read), folds them, opens (or
resumes) the ablation's study, runs every (variant, fold) not yet finished, then summarises and writes.
Console lines say what is run and, at the end, the table and the verdicts. An ordinal task (severity)
trains the task's grades and compares variants by the mean "grade >= k" AUC, as the search does.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from lungct.errors import UsageError
from lungct.records import PreprocessConfig
from lungct.splits import Fold, fingerprint, load_or_make_folds
from search.ablation.outputs import methods_text, page_html, print_summary, write_outputs
from search.ablation.runs import AblationProgress, AblationRunner, RunRecord, finished_runs, run_all, run_key
from search.ablation.settings import SETTINGS_ATTR, AblationJob, AblationSettings
from search.ablation.summary import summarize, val_train_ratio
from search.ablation.variants import Variant, load_study_best, make_variants, padding_lines
from search.study.notes import score_name
from search.study.storage import default_storage, open_storage, redact, schema
from search.training.data import PreparedData, cv_records, describe, prepare_data, resolve_data_root
from search.training.loop import device_name


@dataclass(frozen=True)
class AblationResult:
    """What an ablation produced.

    Attributes:
        settings: The settings it ran with (the split seed is the search study's with ``--study``).
        study_name: The ablation's study, in ``storage_url``.
        storage_url: Where the runs are stored.
        rows: One summary row per variant (``stats.SUMMARY_COLUMNS``), the baseline first.
        runs: Every finished run, in run order.
        missing: Runs that failed (out of memory) and are redone when the same command runs again.
        paths: ablation.csv, runs.csv and ablation.html.
    """

    settings: AblationSettings
    study_name: str
    storage_url: str
    rows: list[dict]
    runs: list[RunRecord]
    missing: int
    paths: list[Path]


def run_ablation(settings: AblationSettings, job: AblationJob, device: torch.device) -> AblationResult:
    """Run (or resume) an ablation and write its outputs.

    Raises:
        UsageError, lungct.errors.DataError: Bad input (a study, a size, the data), before any run starts.
        KeyboardInterrupt: Ctrl-C; the running run's trial is marked failed, finished runs are kept.
    """
    requested_split = settings.split_seed
    best = None
    if job.study:
        best = load_study_best(job.study, job.study_storage or default_storage(job.study, job.studies_dir))
        if best.task is not None and best.task != settings.task:
            # Another task labels (and splits) other scans: the study's test part could land in these folds.
            raise UsageError(f"--task: study {job.study!r} searched task {best.task!r}, not {settings.task!r}; "
                             f"pass --task {best.task} to cross-validate its best trial")
        if best.split_seed is not None:
            settings = dataclasses.replace(settings, split_seed=best.split_seed)
    variant_list = make_variants(job.variants, settings.size, best)
    storage_url = job.storage or default_storage("ablation", job.studies_dir)
    storage = open_storage(storage_url)
    root = resolve_data_root(settings.data, job.studies_dir, settings.n_phantoms, 0)
    prepared = prepare_data(root, PreprocessConfig(size=settings.size), parts=("train", "val"), task=settings.task,
                            seed=settings.split_seed, studies_dir=job.studies_dir, workers=job.workers,
                            progress=sys.stderr.isatty())
    records = cv_records(prepared)
    folds, folds_path = load_or_make_folds(records, Path(job.studies_dir) / "splits", k=settings.folds,
                                           repeats=settings.repeats, seed=settings.seed)

    study = open_ablation_study(storage, settings, fingerprint(records), folds_path, prepared)
    score = score_name(settings.task)
    precision = "bf16 autocast" if settings.amp else "float32"
    print(describe(prepared))
    print(f"ablation: {len(variant_list)} variants x {settings.folds} folds x {settings.repeats} repeat(s) over "
          f"{len(records)} train+val scans (folds: {folds_path}); {settings.epochs} epoch(s) at "
          f"{'x'.join(map(str, settings.size))} voxels, {precision}, on {device_name(device)}")
    if job.study and settings.split_seed != requested_split:
        print(f"split: seed {settings.split_seed}, as in study {job.study!r}, so its test part stays unread")
    if score.ordinal:
        print(f"task {settings.task}: an ordinal head of {score.grades} grades; each run is scored by the "
              f"{score.long}")
    if job.baseline_added:
        print("baseline added to --variants: every variant is compared with it")
    for line in padding_lines(variant_list):
        print(line)

    done = finished_runs(study)
    todo = [(fold, v) for fold in folds for v in variant_list if run_key(v, fold) not in done]
    total = len(folds) * len(variant_list)
    print(f"study {study.study_name!r} in {redact(storage_url)}: {total} runs, {total - len(todo)} done, "
          f"{len(todo)} to do")
    progress = AblationProgress(len(todo), settings.epochs, score=score)
    start = time.perf_counter()
    run_all(study, todo, AblationRunner(prepared, settings, device, on_epoch=progress.on_epoch), progress)

    runs = collect_runs(study, folds, variant_list)
    rows = summarize(variant_list, runs, folds, settings.size, ordinal=score.ordinal)
    methods = methods_text(settings, len(records), len(prepared.split.test), val_train_ratio(folds))
    page = page_html(rows, runs, settings, study.study_name, storage_url, methods, variant_list)
    paths = write_outputs(Path(job.out) if job.out else Path(job.studies_dir) / "ablation", rows, runs, page,
                          ordinal=score.ordinal)

    missing = total - len(runs)
    print(f"\n{len(todo)} runs in {time.perf_counter() - start:.0f} s" + (
        f"; {missing} runs failed (see runs in optuna-dashboard), run the same command again to retry them"
        if missing else ""))
    print_summary(rows, paths, storage_url, score)
    return AblationResult(settings, study.study_name, storage_url, rows, runs, missing, paths)


def open_ablation_study(storage: optuna.storages.BaseStorage, settings: AblationSettings, data_fingerprint: str,
                        folds_path: Path, prepared: PreparedData) -> optuna.Study:
    """The ablation's study for these settings and scans, created with its settings on first use."""
    study = optuna.create_study(study_name=settings.study_name(data_fingerprint), storage=storage,
                                direction="maximize", sampler=optuna.samplers.RandomSampler(seed=settings.seed),
                                pruner=optuna.pruners.NopPruner(), load_if_exists=True)
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
        study.set_user_attr(schema.FOLDS_FILE, str(folds_path))
        study.set_user_attr(schema.STUDY_DATA_SUMMARY, prepared.summary())
    return study


def collect_runs(study: optuna.Study, folds: list[Fold], variant_list: list[Variant]) -> list[RunRecord]:
    """Every finished run of these variants on these folds, fold by fold in variant order."""
    done = finished_runs(study)
    return [RunRecord.from_trial(done[run_key(v, f)]) for f in folds for v in variant_list if run_key(v, f) in done]
