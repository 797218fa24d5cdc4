"""Per-trial files for optuna-dashboard: each trial's learning curves, and the best checkpoint so far.

They go to an ``optuna.artifacts.FileSystemArtifactStore`` under ``studies/<study>-artifacts``, linked
to their trial in the study, so ``optuna-dashboard <storage> --artifact-dir studies/<study>-artifacts``
lists and serves them. The learning curve holds every fold's training loss per epoch and its final
validation AUC. A checkpoint (the last fold's final weights) is stored only when a trial's
cross-validation score beats every earlier trial's, so the folder holds a handful of weight files.
Every file goes in through a temporary name and a rename (:class:`AtomicArtifactStore`), so a full disk
or an interruption leaves no half-written artifact; a full disk fails the trial with that reason.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from safetensors import SafetensorError
from safetensors.torch import save_file

from lungct.files import atomic_path
from search.study import schema
from search.study.faults import StorageError, storage_fault
from search.study.names import check_study_name
from search.training.loop import FitResult

LEARNING_CURVE = "learning_curve.csv"
CHECKPOINT = "best_checkpoint.safetensors"
CHECKPOINT_SPEC = "best_checkpoint_spec.json"


def artifact_dir(studies_dir: str | Path, study: str) -> Path:
    """``studies/<study>-artifacts``.

    Raises:
        ValueError: ``study`` is not a plain file-name component (``search.study.names``).
    """
    return Path(studies_dir) / f"{check_study_name(study)}-artifacts"


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, writing each artifact through a temporary file and a rename.

    Optuna's own writes straight to the artifact's name: a full disk or a Ctrl-C mid-copy leaves a truncated
    file that no trial links to.
    """

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with atomic_path(self._get_filepath(artifact_id)) as tmp, open(tmp, "wb") as fh:
            shutil.copyfileobj(content_body, fh)


class TrialArtifacts:
    """The ``on_trial_end`` hook of :class:`search.selection.objective.Objective` that uploads a trial's files."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store = AtomicArtifactStore(self.directory)

    def __call__(self, trial: optuna.Trial, fits: list[FitResult], model: torch.nn.Module) -> None:
        """Upload the trial's files.

        Raises:
            StorageError: A full disk or a read-only location; recorded on the trial as its fail reason.
        """
        try:
            self._upload(trial, fits, model)
        except (OSError, SafetensorError) as e:
            fault = storage_fault(e, self.directory)
            if fault is None:
                raise
            trial.set_user_attr(schema.FAIL_REASON, f"its files could not be written: {fault}")
            raise StorageError(fault.kind, fault.where, fault.reason) from None

    def _upload(self, trial: optuna.Trial, fits: list[FitResult], model: torch.nn.Module) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            curve = Path(tmp) / LEARNING_CURVE
            aucs = trial.user_attrs.get(schema.FOLD_AUCS) or []
            with curve.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["fold", "epoch", "train_loss", "seconds", "fold_val_auc_final"])
                for fold, fitted in enumerate(fits):
                    auc = f"{aucs[fold]:.6f}" if fold < len(aucs) else ""
                    for h in fitted.history:
                        writer.writerow([fold + 1, h.epoch, f"{h.train_loss:.6f}", f"{h.seconds:.3f}",
                                         auc if h.epoch == len(fitted.history) else ""])
            upload_artifact(artifact_store=self.store, file_path=str(curve), study_or_trial=trial,
                            mimetype="text/csv")
            score = trial.user_attrs.get(schema.SCORE)
            complete = len(aucs) == len(trial.user_attrs.get(schema.N_VAL) or aucs)
            if score is not None and complete and self._beats_earlier_trials(trial, score):
                weights = Path(tmp) / CHECKPOINT
                save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
                spec = Path(tmp) / CHECKPOINT_SPEC
                spec.write_text(json.dumps({"spec": trial.user_attrs.get(schema.SPEC), "fold": len(fits),
                                            "epoch": len(fits[-1].history), "cv_score": score}, indent=1))
                upload_artifact(artifact_store=self.store, file_path=str(weights), study_or_trial=trial)
                upload_artifact(artifact_store=self.store, file_path=str(spec), study_or_trial=trial,
                                mimetype="application/json")

    @staticmethod
    def _beats_earlier_trials(trial: optuna.Trial, auc: float) -> bool:
        if not math.isfinite(auc):
            return False
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return all(auc > t.values[0] for t in done)
