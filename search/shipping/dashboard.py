"""What an export leaves on its study for optuna-dashboard: what was shipped, its test AUC, and its pictures."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial

from search.model.folder import ModelInfo
from search.model.saliency import write_examples
from search.selection.dashboard import write_study_note
from search.shipping.figures import CALIBRATION_PNG, CONFUSION_PNG, ROC_PNG
from search.shipping.models import ExportSettings, Shipped
from search.study import schema
from search.study.artifacts import AtomicArtifactStore, artifact_dir
from search.study.faults import StorageError
from search.study.storage import redact
from search.training.data import Tensors

DASHBOARD_PICTURES = (ROC_PNG, CALIBRATION_PNG)  # from the model folder
ORDINAL_DASHBOARD_PICTURES = (ROC_PNG, CONFUSION_PNG)  # an ordinal export draws no calibration picture


def note_export(study: optuna.Study, chosen: FrozenTrial | None, result: dict, out: Path) -> None:
    """Store what was shipped and its test AUC on the study, and rewrite the dashboard's study note from it."""
    def auc(entry: dict | None) -> dict | None:
        return entry["auc"] if entry else None

    shipped_baseline = chosen is None or bool(chosen.user_attrs.get(schema.BASELINE))
    study.set_user_attr(schema.STUDY_EXPORTED, {
        "trial": None if chosen is None else chosen.number, "baseline": shipped_baseline, "folder": str(out),
        "test": {"n": result["n"], "model": {"auc": auc(result["model"])},
                 "baseline": {"auc": auc(result["baseline"])} if result["baseline"] else None,
                 "baseline_is_model": result["baseline_is_model"], "auc_difference": result["auc_difference"]}})
    write_study_note(study)


def upload_pictures(s: ExportSettings, study: optuna.Study, trial: FrozenTrial | None, model: Shipped,
                    test: Tensors, info: ModelInfo) -> list[str]:
    """Attach the test ROC, the calibration and saliency examples to the study for optuna-dashboard.

    Optuna keeps a finished trial immutable (``upload_artifact`` on it raises, and the dashboard refuses
    uploads to finished trials too), so the pictures are study artifacts, their names starting with the
    exported trial: ``export_trial<N>_roc.png``, ``export_trial<N>_saliency_<outcome>.png``. The saliency
    examples are the surest test scan of each outcome (``search.model.saliency.write_examples``; for an
    ordinal model the surest correct scan of the lowest and highest grade and the worst miss); they show
    scans, so they stay in the study's own artifact store (``studies/<study>-artifacts``), never in the
    model folder, which is meant to be shared. A failed upload is a warning: the folder is written.

    Returns:
        The names uploaded.
    """
    store_dir = artifact_dir(s.studies_dir, s.study)
    prefix = f"export_trial{trial.number}_" if trial is not None else "export_"
    names = []
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        store = AtomicArtifactStore(str(store_dir))
        with tempfile.TemporaryDirectory() as tmp:
            shown = ORDINAL_DASHBOARD_PICTURES if info.ordinal else DASHBOARD_PICTURES
            pictures = [s.out / name for name in shown if (s.out / name).is_file()]
            pictures += write_examples(model.model, test.volumes, test.labels.numpy(), model.probs, info.classes,
                                       info.threshold, Path(tmp))
            for picture in pictures:
                named = Path(tmp) / f"{prefix}{picture.name}"
                shutil.copyfile(picture, named)
                upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study,
                                mimetype="image/png")
                names.append(named.name)
    except (OSError, ValueError, RuntimeError, StorageError) as e:
        print(f"warning: dashboard pictures not uploaded ({type(e).__name__}: {e}); the model folder is complete",
              file=sys.stderr)
        return names
    print(f"dashboard: {', '.join(names)} attached to study {s.study!r} (optuna-dashboard "
          f"{redact(s.storage)} --artifact-dir {store_dir}, the study's artifacts)")
    return names
