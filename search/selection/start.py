"""A run made ready to search: its study opened (or created), its settings settled, its data and folds loaded.

:func:`start` does it for ``python -m search.run`` and returns a :class:`Started` run, which
``search.selection.stages`` takes through the search and the confirmation.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from lungct.errors import UsageError
from lungct.records import PreprocessConfig
from search.selection.settings import DataSettings, GivenSettings, RunJob, RunSettings, resolve_settings
from search.study import schema
from search.study.backup import BackupAfterEachRun, check_folder, restore_if_missing, sqlite_file
from search.study.storage import create_or_load_study, default_storage, open_storage, redact
from search.training.data import PreparedData, describe, prepare_data, resolve_data_root, search_folds


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
               schema.STUDY_SETTINGS: settings.to_dict()})
    if not created and not stored:
        # Another run created the study while this one loaded its data: the study's settings hold, and a
        # flag that contradicts them is the usual one-line error.
        stored = study.user_attrs.get(schema.STUDY_SETTINGS) or {}
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


def _prepare(data: DataSettings, job: RunJob) -> PreparedData:
    """The study's data: train and validation parts only, at its size, task and split."""
    root = resolve_data_root(data.data, job.studies_dir, data.n_phantoms, 0)
    return prepare_data(root, PreprocessConfig(size=data.size), task=data.task, seed=data.split_seed,
                        studies_dir=job.studies_dir, workers=job.workers, progress=sys.stderr.isatty())


def _stored_settings(storage, name: str) -> dict | None:
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    for s in summaries:
        if s.study_name == name:
            return s.user_attrs.get(schema.STUDY_SETTINGS) or {}
    return None
