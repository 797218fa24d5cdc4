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
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial
from safetensors import SafetensorError

from lungct.errors import DataError, UsageError
from lungct.files import make_shareable
from lungct.records import PreprocessConfig, get_task
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
from search.model.folder import (
    CARD,
    METRICS,
    ONNX,
    TOLERANCE,
    ModelInfo,
    export_onnx,
    fixed_input,
    is_model_dir,
    load_model,
    logits,
    onnx_logits,
    save_model,
    write_json,
)
from search.model.saliency import write_examples
from search.selection.dashboard import write_study_note
from search.selection.settings import stored_settings
from search.shipping.bundle import BUNDLE_DIR, write_bundle
from search.shipping.figures import CALIBRATION_PNG, CONFUSION_PNG, ROC_PNG, write_model_figures
from search.shipping.metrics import (
    data_entry,
    evaluate,
    model_entry,
    print_test,
    selection_entry,
    shareable_settings,
    test_predictions,
    training_entry,
    versions,
)
from search.shipping.model_card import render_model_card
from search.shipping.models import ExportError, ExportSettings, Shipped, assemble, choose, epochs_for, retrain
from search.stats.intervals import DEFAULT_RESAMPLES
from search.study.artifacts import AtomicArtifactStore, artifact_dir
from search.study.faults import FULL, StorageError, storage_fault
from search.study.storage import default_storage, load_existing_study, redact, schema, shareable_storage
from search.study.trials import baseline_trial
from search.training.data import Tensors, prepare_data, resolve_data_root
from space import ArchSpec, SpecInputError, baseline, baseline_train, build, fit_to_size

BASELINE_DIR = "baseline"  # the seed baseline trained beside the model, a model folder of its own
# Beyond the weights: the figures, the card and metrics.json take about 1 MB; the margin keeps the disk from
# being filled to its last byte.
EXPORT_MARGIN_BYTES = 16 << 20


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


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to write over anything but an empty folder, or an earlier export with ``--force``.

    Raises:
        UsageError: ``out`` is a file, a non-empty folder that is not an export, or an export without force.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out: {out} is a file, not a folder")
    if not any(out.iterdir()):
        return
    if not is_model_dir(out):
        raise UsageError(f"--out: {out} is a non-empty folder that holds no exported model; choose another --out")
    if not force:
        raise UsageError(f"--out: {out} already holds an exported model; add --force to replace it")


def _check_export(directory: Path, model: torch.nn.Module, size: tuple[int, int, int]) -> dict:
    """Reload the written folder and run the ONNX file; both must give the in-memory model's logits."""
    x = fixed_input(size)
    expected = logits(model, x)
    reloaded, _, _ = load_model(directory)
    weights_diff = float(np.max(np.abs(logits(reloaded, x) - expected)))
    onnx_out = onnx_logits(directory / ONNX, x)
    onnx_diff = None if onnx_out is None else float(np.max(np.abs(onnx_out - expected)))
    for what, diff in (("weights.safetensors", weights_diff), (ONNX, onnx_diff)):
        if diff is not None and not diff <= TOLERANCE:
            raise ExportError(f"{what}: reloaded output differs from the trained model by {diff:.2e} "
                              f"(tolerance {TOLERANCE:g}); the export is not trustworthy")
    return {"input": f"seeded uniform (2, 1, {size[0]}, {size[1]}, {size[2]}), seed 0",
            "weights_max_abs_diff": weights_diff, "onnx_max_abs_diff": onnx_diff,
            "onnx_runtime": "onnxruntime" if onnx_out is not None else "not checked: onnxruntime not installed",
            "tolerance": TOLERANCE}


def export_bytes(spec: ArchSpec, members: int, baseline_spec: ArchSpec | None) -> int:
    """Roughly what a model folder takes: float32 weights four times (safetensors, the ONNX file, and the MONAI
    bundle's safetensors copy and model.pt), those of the baseline beside it, and :data:`EXPORT_MARGIN_BYTES` for
    the rest."""
    def weights(s: ArchSpec) -> int:
        return 4 * sum(p.numel() for p in build(s).parameters())

    return 4 * members * weights(spec) + (weights(baseline_spec) if baseline_spec else 0) + EXPORT_MARGIN_BYTES


def check_out_writable(out: Path, need_bytes: int) -> None:
    """Before anything trains: ``out``'s folder can be created and written, and holds about ``need_bytes`` free.

    Raises:
        StorageError: The location is read-only, or its disk has less than ``need_bytes`` free.
        UsageError: The folder cannot be created or written for another reason.
    """
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp.")).rmdir()
        free = shutil.disk_usage(parent).free
    except OSError as e:
        fault = storage_fault(e, parent)
        if fault is not None:
            raise StorageError(fault.kind, parent, fault.reason) from None
        raise UsageError(f"--out: cannot write in {parent}: {e.strerror or e}") from None
    if free < need_bytes:
        raise StorageError(FULL, parent, f"{free / 1e6:.1f} MB free, the model folder needs about "
                           f"{need_bytes / 1e6:.0f} MB; nothing was trained")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an earlier export is removed only once the new one is there."""
    make_shareable(tmp)  # mkdtemp (and safetensors) create owner-only modes; the folder is meant to be shared
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        old.rmdir()
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def run_export(study: optuna.Study, s: ExportSettings) -> Path:
    """Everything after parsing: choose, train (or assemble), test, write. Returns the folder written.

    Raises:
        UsageError, DataError: Bad flags, unusable data.
        ExportError: Training or the export check failed.
    """
    stored = study.user_attrs[schema.STUDY_SETTINGS]
    check_out_dir(s.out, s.force)
    choice = choose(study, s.trial, s.size)
    chosen, spec, train_spec = choice.trial, choice.spec, choice.train_spec
    # A kept seed baseline is not a search result: no maximum over noisy scores chose it, so nothing asks for
    # the fold models the confirmation scored, and the course trains it on all its scans. Measured on fresh
    # phantoms: its refit beat its own fold ensemble by +0.036 AUC (CI +0.008 to +0.067).
    ensemble = s.ensemble and not choice.is_baseline
    if ensemble and not choice.members:
        raise UsageError(f"--ensemble: the confirmation of {s.study!r} kept no fold models of its recommendation "
                         "(it was confirmed by an older lungct-nas); rerun python -m search.run --confirm-only, or "
                         "export without --ensemble")
    base_spec = None if choice.is_baseline else _baseline_spec(s.size)
    check_out_writable(s.out, export_bytes(spec, len(choice.members or ()) if ensemble else 1, base_spec))
    print(f"study {s.study!r} in {redact(s.storage)}: exporting {choice.how}")

    root = resolve_data_root(s.data, s.studies_dir, s.n_phantoms, 0)
    prepared = prepare_data(root, PreprocessConfig(size=s.size), parts=("train", "val", "test"), task=s.task,
                            seed=s.split_seed, studies_dir=s.studies_dir, workers=s.workers,
                            progress=sys.stderr.isatty())
    searched_on = Path((study.user_attrs.get(schema.STUDY_DATA_SUMMARY) or {}).get("split_file", "")).name
    if searched_on and searched_on != prepared.split_path.name:
        raise DataError(f"data: {root} is not the data set study {s.study!r} searched on (its split was "
                        f"{searched_on}, this data's is {prepared.split_path.name}), so its test part would not "
                        "be the held-out one; pass the study's --data")
    trainval, test = prepared.tensors("train", "val"), prepared.tensors("test")
    print(f"data: {root}, task {s.task}, {'x'.join(map(str, s.size))} voxels; train+val {len(trainval)} scans, "
          f"locked test part {len(test)} scans (split {prepared.split_path.name})")

    base_trial = baseline_trial(study)
    epochs, rule = epochs_for(s, stored, choice.confirmation)
    if ensemble:
        # A confirmation's recommendation (checked above): it names its fold models.
        assert choice.members is not None and choice.confirmation is not None
        model = assemble("exported model", chosen.number if chosen else 0, spec, train_spec, choice.members,
                         choice.confirmation, test, s)
    else:
        model = retrain("exported model", chosen.number if chosen else 0, spec, train_spec, epochs, rule, trainval,
                        test, s)
    base_note: str | None
    if choice.is_baseline:
        base = model
        base_note = "the exported model is the seed baseline itself"
    else:
        try:
            base_spec, padding_note = fit_to_size(baseline(), s.size)
        except SpecInputError as e:
            base, base_note = None, f"the seed baseline cannot run at {'x'.join(map(str, s.size))}: {e}"
        else:
            # Beside an ensemble too, the baseline is the seed model as the course trains it, on all train+val
            # scans: the model a user would have without the search (its fold ensemble is weaker, and the
            # confirmation's paired difference already compares the two spec's fold models).
            base = retrain("seed baseline", base_trial.number if base_trial else 0, base_spec, baseline_train(),
                           epochs, rule, trainval, test, s, note=padding_note)
            base_note = padding_note

    info = ModelInfo.for_task(get_task(s.task), prepared.loaded.config)
    result = evaluate(model, base, test, s.bootstrap, seed=s.seed, classes=info.classes)
    print_test(result, info.classes)

    s.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=s.out.parent, prefix=f".{s.out.name}.tmp."))
    loaded_ids = set(prepared.loaded.study_ids)
    test_ids = [sid for sid in prepared.split.test if sid in loaded_ids]
    data = data_entry(prepared, Path(root), stored, test_ids if s.include_scan_ids else None)
    try:
        save_model(tmp, model.model, spec, train_spec, info)
        if base is not None and base is not model:
            save_model(tmp / BASELINE_DIR, base.model, base.spec, base.train_spec, info)
        try:
            export_onnx(model.model, s.size, tmp / ONNX)
        except RuntimeError as e:
            raise ExportError(str(e)) from None
        check = _check_export(tmp, model.model, s.size)
        metrics = {
            "format_version": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "study": {"name": s.study, "storage": shareable_storage(s.storage),
                      "objectives": study.user_attrs.get(schema.STUDY_OBJECTIVES, ["auc"]),
                      "n_trials": len(study.trials), "settings": shareable_settings(stored)},
            "task": task_entry(info),
            "test": result,
            "selection": selection_entry(choice, result),
            "model": model_entry(model, chosen, s.size),
            "baseline": (model_entry(base, base_trial, s.size) | {"note": base_note}) if base is not None
            else {"note": base_note},
            "data": data,
            "training": training_entry(s, model),
            **({"test_predictions": test_predictions(test_ids, test, model, base)} if s.include_scan_ids else {}),
            "export_check": check,
            "versions": versions(),
        }
        write_json(tmp / METRICS, metrics)
        write_model_figures(metrics, tmp)
        (tmp / CARD).write_text(render_model_card(metrics))
        write_bundle(tmp, tmp / BUNDLE_DIR)  # the MONAI bundle, from the finished folder, before it is moved in
        check_out_dir(s.out, s.force)  # again: another process may have written there while we trained
        _replace_dir(tmp, s.out)
    except (OSError, SafetensorError) as e:  # a disk filled since the check: the temporary folder goes below
        fault = storage_fault(e, s.out)
        if fault is None:
            raise
        raise StorageError(fault.kind, s.out.parent, f"{fault.reason}; nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _note_export(study, chosen, result, s.out)
    try:
        upload_pictures(s, study, chosen, model, test, info)
    except KeyboardInterrupt:
        print(f"\ninterrupted while uploading pictures to optuna-dashboard; the model folder {s.out} is complete",
              file=sys.stderr)
    return s.out


def task_entry(info: ModelInfo) -> dict:
    """metrics.json's task: its name, description, class names and threshold; an ordinal task's grades too."""
    entry = {"name": info.task, "description": info.task_description, "classes": list(info.classes),
             "threshold": info.threshold}
    if info.ordinal:
        entry |= {"ordinal": True, "grades": [list(g) for g in info.grades],
                  "predicted_grade": "the median: the number of k with P(grade >= k) >= 0.5"}
    return entry


def _note_export(study: optuna.Study, chosen: FrozenTrial | None, result: dict, out: Path) -> None:
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


def _baseline_spec(size: tuple[int, int, int]) -> ArchSpec | None:
    """The seed baseline at ``size``, or None where it cannot run there."""
    try:
        return fit_to_size(baseline(), size)[0]
    except SpecInputError:
        return None


DASHBOARD_PICTURES = (ROC_PNG, CALIBRATION_PNG)  # from the model folder
ORDINAL_DASHBOARD_PICTURES = (ROC_PNG, CONFUSION_PNG)  # an ordinal export draws no calibration picture


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
