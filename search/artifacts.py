"""Per-trial files for optuna-dashboard: each trial's learning curve, and the best checkpoint so far.

They go to an ``optuna.artifacts.FileSystemArtifactStore`` under ``studies/<study>-artifacts``, linked
to their trial in the study, so ``optuna-dashboard <storage> --artifact-dir studies/<study>-artifacts``
lists and serves them. A checkpoint is stored only when a trial beats every earlier trial's AUC, so
the folder holds a handful of weight files, not one per trial.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState
from safetensors.torch import save_file

from search.train import FitResult

LEARNING_CURVE = "learning_curve.csv"
CHECKPOINT = "best_checkpoint.safetensors"
CHECKPOINT_SPEC = "best_checkpoint_spec.json"


def artifact_dir(studies_dir: str | Path, study: str) -> Path:
    """``studies/<study>-artifacts``."""
    return Path(studies_dir) / f"{study}-artifacts"


class TrialArtifacts:
    """The ``on_trial_end`` hook of :class:`search.objective.Objective` that uploads a trial's files."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store = FileSystemArtifactStore(self.directory)

    def __call__(self, trial: optuna.Trial, fitted: FitResult, model: torch.nn.Module) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            curve = Path(tmp) / LEARNING_CURVE
            with curve.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["epoch", "train_loss", "val_auc", "val_accuracy", "val_sensitivity",
                                 "val_specificity", "seconds"])
                for h in fitted.history:
                    v = h.val
                    writer.writerow([h.epoch, f"{h.train_loss:.6f}", *(f"{x:.6f}" for x in (
                        v.auc, v.accuracy, v.sensitivity, v.specificity)), f"{h.seconds:.3f}"])
            upload_artifact(artifact_store=self.store, file_path=str(curve), study_or_trial=trial,
                            mimetype="text/csv")
            if fitted.best_state is not None and self._beats_earlier_trials(trial, fitted.best_auc):
                weights = Path(tmp) / CHECKPOINT
                save_file({k: v.contiguous() for k, v in fitted.best_state.items()}, str(weights))
                spec = Path(tmp) / CHECKPOINT_SPEC
                spec.write_text(json.dumps({"spec": trial.user_attrs.get("spec"), "epoch": fitted.best_epoch,
                                            "val_auc": fitted.best_auc}, indent=1))
                upload_artifact(artifact_store=self.store, file_path=str(weights), study_or_trial=trial)
                upload_artifact(artifact_store=self.store, file_path=str(spec), study_or_trial=trial,
                                mimetype="application/json")

    @staticmethod
    def _beats_earlier_trials(trial: optuna.Trial, auc: float) -> bool:
        if not math.isfinite(auc):
            return False
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return all(auc > t.values[0] for t in done)
