"""``python -m search.export``: train the recommended model, test it once on the locked test part, write a model folder.

The search saw only the train and validation parts. Export takes the confirmation stage's
recommendation (``search.confirm``: the seed baseline unless a candidate beat it by more than the paired
noise), trains it on train + validation for the confirmation's epoch count, and evaluates it once on the
test part, which nothing else reads. The seed baseline is trained and tested the same way beside it, so
what the search gained is measured on scans neither model has seen, and metrics.json records the
confirmed score, the test AUC and their difference (the optimism). ``--ensemble`` ships instead the
fold models the confirmation trained and scored for a searched spec, as an ensemble that averages their
probabilities: the model whose out-of-fold score chose it (measured: 0.011-0.012 AUC below the refit on
fresh phantoms, at three times the inference, with an optimism near 0; benchmarks/RESULTS.md). The folder
it writes (see ``search.model_dir``) is what ``python -m search.predict`` reads; the baseline's weights go
to its ``baseline/`` subfolder, a model folder of its own, so both can be scored on new scans. Pictures of
the test evaluation (ROC with its bootstrap band, calibration, confusion counts; ``search.figures``) are
drawn from metrics.json into the folder beside the model card that embeds them; the ROC, the calibration
and Grad-CAM++ saliency montages of the surest test scan of each outcome are also attached to the study
for optuna-dashboard, named after the exported trial (its artifact store, not the shared folder: they
show scans).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lungct.errors import DataError
from lungct.files import make_shareable
from lungct.records import PreprocessConfig, get_task
from search import schema
from search.artifacts import artifact_dir
from search.data import PreparedData, prepare_data, resolve_data_root
from search.fidelity import choose_fidelity
from search.figures import CALIBRATION_PNG, ROC_PNG, curve_metrics, write_model_figures
from search.intervals import DEFAULT_RESAMPLES, Interval, bootstrap_auc, bootstrap_auc_difference, wilson
from search.metrics import BinaryMetrics, binary_metrics
from search.model_card import render_model_card
from search.model_dir import (
    CARD,
    METRICS,
    ONNX,
    TOLERANCE,
    Ensemble,
    ModelInfo,
    export_onnx,
    fixed_input,
    is_model_dir,
    load_model,
    logits,
    members_of,
    onnx_logits,
    save_model,
    write_json,
)
from search.run import RunSettings
from search.saliency import write_examples
from search.study import default_storage, load_existing_study, redact, shareable_storage
from search.train import EpochResult, Tensors, predict_probs, recalibrate_batchnorm, resolve_device
from search.trainer import TrainingFailed
from search.trainer import train_spec as train_spec_unit
from search.trials import baseline_trial
from space import ArchSpec, SpecInputError, TrainSpec, baseline, baseline_train, build, cost, describe_spec, fit_to_size

BASELINE_DIR = "baseline"  # the seed baseline trained beside the model, a model folder of its own
PHANTOM_MARKER = "phantoms.json"  # lungct.phantom.MARKER_NAME: the file that marks a synthetic phantom set
VERSIONED = ("lungct-nas", "torch", "monai", "optuna", "numpy", "nibabel", "scikit-learn", "safetensors", "onnx",
             "onnxscript", "onnxruntime", "matplotlib")


class ExportError(Exception):
    """Export cannot go on (nothing chosen, training diverged, exported files disagree); one line."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.export``."""
    p = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit code: 0 written, 1 training or the export check failed, 2 bad input "
                                "(flags, study, data, --out), 130 interrupted (nothing written).")
    p.add_argument("--study", default="lungct", metavar="NAME", help="study name (default: lungct)")
    p.add_argument("--storage", metavar="URL", help="any SQLAlchemy URL (default: sqlite:///studies/<study>.db)")
    p.add_argument("--studies-dir", default="studies", metavar="DIR",
                   help="where studies, caches and splits live (default: studies)")
    p.add_argument("--data", metavar="ROOT", help="data folder or CSV manifest (default: the data the study "
                   "searched on, as stored in the study); it must be the same data set, so the test part "
                   "is the one the search held out")
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
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = CUDA when available, else CPU (default: auto)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"stratified bootstrap resamples for the 95%% CIs of AUC (default: {DEFAULT_RESAMPLES})")
    p.add_argument("--include-scan-ids", action="store_true",
                   help="also write the locked test part's study ids, with each scan's label and both models' "
                   "probabilities, into metrics.json (default: off: study ids can identify patients, and the "
                   "folder is meant to be shared; it holds counts and metrics only, and no local path)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier export in --out (default: refuse; a folder that is not an "
                   "export is never replaced)")
    p.add_argument("--workers", type=int, default=None, help="processes decoding scans on a cold cache "
                   "(default: all cores)")
    return p


@dataclass(frozen=True)
class ExportSettings:
    """What an export run does, from the flags and the study."""

    study: str
    storage: str
    studies_dir: Path
    out: Path
    data: str | None
    task: str
    size: tuple[int, int, int]
    seed: int
    split_seed: int
    n_phantoms: int
    epochs: int | None
    bootstrap: int
    device: torch.device
    force: bool
    include_scan_ids: bool = False
    ensemble: bool = False


@dataclass(frozen=True)
class Trained:
    """A model to ship (trained on train+val, or the confirmation's fold models as an ensemble) and its test scores."""

    role: str
    trial: int | None
    spec: ArchSpec
    train_spec: TrainSpec
    epochs: int
    epochs_rule: str
    model: torch.nn.Module
    probs: np.ndarray
    metrics: BinaryMetrics
    train_seconds: float
    note: str | None = None
    member_train_scans: tuple[int, ...] = ()  # per fold model of an ensemble; empty for one model

    @property
    def members(self) -> int:
        """Trained copies in the model: an ensemble's fold models, else 1."""
        return members_of(self.model)


def _check_args(args: argparse.Namespace) -> None:
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs: expected a positive count, got {args.epochs}")
    if args.ensemble and args.trial is not None:
        raise ValueError("--ensemble: ships the confirmation's fold models of its recommendation; a --trial is "
                         "trained on train+val instead, so pass one or the other")
    if args.ensemble and args.epochs is not None:
        raise ValueError("--epochs: the fold models --ensemble ships trained for the confirmation's epochs, and the "
                         "baseline beside them trains for as many; pass one or the other")
    if args.bootstrap < 100:
        raise ValueError(f"--bootstrap: expected at least 100 resamples, got {args.bootstrap}")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to write over anything but an empty folder, or an earlier export with ``--force``.

    Raises:
        ValueError: ``out`` is a file, a non-empty folder that is not an export, or an export without force.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    if not any(out.iterdir()):
        return
    if not is_model_dir(out):
        raise ValueError(f"--out: {out} is a non-empty folder that holds no exported model; choose another --out")
    if not force:
        raise ValueError(f"--out: {out} already holds an exported model; add --force to replace it")


@dataclass(frozen=True)
class Choice:
    """What export trains: the confirmation's recommendation or a trial asked for with ``--trial``."""

    spec: ArchSpec
    train_spec: TrainSpec
    trial: FrozenTrial | None
    is_baseline: bool
    how: str
    confirmation: dict | None = None
    members: list[str] | None = None  # artifact ids of the confirmation's fold models of this spec


def choose(study: optuna.Study, number: int | None, size: tuple[int, int, int]) -> Choice:
    """The trial asked for, else the confirmation's recommendation.

    Raises:
        ValueError: No such trial, it did not complete, or the study has no confirmation yet.
    """
    trials = study.get_trials(deepcopy=False)
    decision = study.user_attrs.get(schema.STUDY_CONFIRMATION)
    if number is not None:
        if not 0 <= number < len(trials):
            raise ValueError(f"--trial: study {study.study_name!r} has trials 0..{len(trials) - 1}, not {number}")
        trial = trials[number]
        if trial.state != TrialState.COMPLETE or schema.SPEC not in trial.user_attrs:
            raise ValueError(f"--trial: trial {number} is {trial.state.name.lower()}; only complete trials can be "
                             "exported")
        return Choice(ArchSpec.from_dict(trial.user_attrs[schema.SPEC]),
                      TrainSpec.from_dict(trial.user_attrs[schema.TRAIN_SPEC]), trial,
                      bool(trial.user_attrs.get(schema.BASELINE)), f"trial {number}, as given by --trial", decision)
    if not decision:
        raise ValueError(f"study: {study.study_name!r} has no confirmation yet, so nothing is recommended; run "
                         f"python -m search.run --confirm-only --study {study.study_name} (or pass --trial N)")
    rec = decision["recommended"]
    trial = trials[rec["trial"]] if rec.get("trial") is not None and rec["trial"] < len(trials) else None
    if rec["baseline"]:
        spec, _ = fit_to_size(baseline(), size)
        return Choice(spec, baseline_train(), trial, True, "the confirmation's recommendation: the seed baseline",
                      decision, rec.get("members"))
    return Choice(ArchSpec.from_dict(rec["spec"]), TrainSpec.from_dict(rec["train_spec"]), trial, False,
                  f"the confirmation's recommendation: {rec['key']}", decision, rec.get("members"))


def _epoch_printer(label: str, epochs: int):
    """An ``on_epoch`` callback: a bar on a terminal, one line per epoch elsewhere; and its closer."""
    bar = tqdm(total=epochs, desc=f"  {label}", unit="epoch", leave=False, disable=not sys.stderr.isatty(),
               dynamic_ncols=True)

    def on_epoch(result: EpochResult) -> None:
        if bar.disable:
            print(f"  {label}: epoch {result.epoch}/{epochs}, train loss {result.train_loss:.4f}, "
                  f"{result.seconds:.1f} s", flush=True)
        else:
            bar.set_postfix(loss=f"{result.train_loss:.3f}")
            bar.update()

    return on_epoch, bar.close


def retrain(role: str, trial: int | None, spec: ArchSpec, train_spec: TrainSpec, epochs: int, epochs_rule: str,
            trainval: Tensors, test: Tensors, s: ExportSettings, note: str | None = None) -> Trained:
    """Train ``spec`` on train+val from the seed its trial used, then score the test part once.

    Raises:
        ExportError: Training diverged or ran out of memory.
    """
    seed = s.seed + (trial or 0)  # the search seeds trial n with seed + n; export repeats that
    amp = choose_fidelity(s.device, s.size, epochs).amp
    plural = "s" if epochs != 1 else ""
    print(f"training the {role} ({describe_spec(spec.to_dict())}) on train+val ({len(trainval)} scans) for "
          f"{epochs} epoch{plural} ({epochs_rule}), seed {seed}, {s.device.type}{', bf16 autocast' if amp else ''}",
          flush=True)
    on_epoch, close = _epoch_printer(role, epochs)
    try:
        trained = train_spec_unit(spec, train_spec, trainval, None, epochs=epochs, device=s.device, seed=seed, amp=amp,
                                  on_epoch=on_epoch)
    except TrainingFailed as e:
        hint = "try --epochs or another --trial" if e.kind == "non_finite" else "try --device cpu"
        raise ExportError(f"training the {role}: {e}; {hint}") from None
    finally:
        close()
    model, fitted = trained.model, trained.fitted
    if recalibrate_batchnorm(model, trainval, s.device, train_spec.batch_size):
        print(f"  {role}: batch-norm statistics recomputed over the {len(trainval)} training scans", flush=True)
    model = model.to("cpu").eval()
    # Test in float32 on the CPU: the numbers then describe the exported weights as predict runs them.
    probs = predict_probs(model, test.volumes, torch.device("cpu"), amp=False)
    metrics = binary_metrics(test.labels.numpy(), probs)
    return Trained(role, trial, spec, train_spec, epochs, epochs_rule, model, probs, metrics,
                   round(fitted.train_seconds, 2), note)


def _member_runs(storage: str, decision: dict) -> dict[str, dict]:
    """The confirmation runs that kept weights, keyed by artifact id: their user attrs."""
    try:
        companion = optuna.load_study(study_name=decision["companion_study"], storage=storage)
    except KeyError:
        return {}
    return {t.user_attrs[schema.WEIGHTS_ARTIFACT]: t.user_attrs for t in companion.get_trials(deepcopy=False)
            if t.user_attrs.get(schema.WEIGHTS_ARTIFACT)}


def assemble(role: str, trial: int | None, spec: ArchSpec, train_spec: TrainSpec, ids: list[str], decision: dict,
             test: Tensors, s: ExportSettings, note: str | None = None) -> Trained:
    """The confirmation's fold models of ``spec`` as one :class:`Ensemble`, scored on the test part once.

    Raises:
        ValueError: A fold model's weights are missing or unreadable in the artifact store.
        ExportError: They do not fit the spec.
    """
    store_dir = artifact_dir(s.studies_dir, s.study)
    store = FileSystemArtifactStore(str(store_dir))
    runs = _member_runs(s.storage, decision)
    epochs = int(decision["settings"]["epochs"])
    folds = int(decision["settings"]["folds"])
    n_train = tuple(int(runs.get(i, {}).get("n_train", 0)) for i in ids)
    print(f"assembling the {role} ({describe_spec(spec.to_dict())}): the {len(ids)} fold models the confirmation "
          f"trained ({folds}-fold, {epochs} epochs, {'/'.join(map(str, n_train))} training scans) and scored",
          flush=True)
    members = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, artifact in enumerate(ids):
            path = Path(tmp) / f"member{i}.safetensors"
            try:
                download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact)
                state = load_file(str(path))
            except (OSError, SafetensorError, ArtifactNotFound) as e:
                raise ValueError(f"artifacts: fold model {i} of the {role} ({artifact}) is missing or unreadable in "
                                 f"{store_dir} ({type(e).__name__}); rerun python -m search.run --confirm-only, or "
                                 "export without --ensemble") from None
            net = build(spec)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ExportError(f"artifacts: fold model {i} of the {role} does not fit its spec "
                                  f"({str(e).splitlines()[0]})") from None
            members.append(net)
    model = Ensemble(members).eval()
    probs = predict_probs(model, test.volumes, torch.device("cpu"), amp=False)
    metrics = binary_metrics(test.labels.numpy(), probs)
    seconds = sum(float(runs.get(i, {}).get(schema.TRAIN_SECONDS, 0.0)) for i in ids)
    rule = f"the confirmation's fold models, {epochs} epochs each"
    return Trained(role, trial, spec, train_spec, epochs, rule, model, probs, metrics, round(seconds, 2), note,
                   member_train_scans=n_train)


def _epochs_for(s: ExportSettings, stored: dict, decision: dict | None) -> tuple[int, str]:
    """``--epochs``, else the confirmation's epochs per run, and the rule in words.

    The confirmation measured every candidate and the baseline at that budget; training longer or
    shorter here would ship a model the confirmation never scored.
    """
    if s.epochs is not None:
        return s.epochs, "as given by --epochs"
    if decision:
        return int(decision["settings"]["epochs"]), "the confirmation's epochs per run"
    return RunSettings.from_dict(stored).confirm_epochs, "the study's confirmation epochs per run"


def _rates(m: BinaryMetrics) -> dict:
    """Accuracy, sensitivity and specificity with Wilson intervals, and the confusion matrix."""
    return {
        "accuracy": wilson(m.tp + m.tn, m.n).to_dict(),
        "sensitivity": wilson(m.tp, m.tp + m.fn).to_dict(),
        "specificity": wilson(m.tn, m.tn + m.fp).to_dict(),
        "threshold": m.threshold,
        "confusion_matrix": {"tn": m.tn, "fp": m.fp, "fn": m.fn, "tp": m.tp},
    }


def evaluate(model: Trained, base: Trained | None, test: Tensors, n_resamples: int, seed: int) -> dict:
    """Test metrics of the model (and the baseline) with 95% CIs, and the paired difference in AUC.

    Each model's entry also holds the numbers its pictures are drawn from (``search.figures.curve_metrics``:
    ROC curve and bootstrap band, from the AUC interval's resamples, calibration bins, Brier score), which
    name no scan.
    """
    labels = test.labels.numpy().astype(int)
    out = {"n": int(labels.size), "n_negative": int(np.sum(labels == 0)), "n_positive": int(np.sum(labels == 1))}
    for key, t in (("model", model), ("baseline", base)):
        if t is None:
            out[key] = None
            continue
        out[key] = {"auc": bootstrap_auc(labels, t.probs, n_resamples, seed=seed).to_dict(), **_rates(t.metrics),
                    **curve_metrics(labels, t.probs, n_resamples, seed=seed)}
    out["baseline_is_model"] = base is model
    out["auc_difference"] = (bootstrap_auc_difference(labels, model.probs, base.probs, n_resamples, seed=seed)
                             .to_dict() if base is not None else None)
    return out


def _selection_entry(choice: Choice, result: dict) -> dict:
    """How the model was chosen, its confirmed score, its test AUC, and the difference (the optimism)."""
    entry = {"how": choice.how, "is_baseline": choice.is_baseline, "rule": None, "why": None,
             "confirmed_score": None, "baseline_confirmed_score": None, "test_auc": result["model"]["auc"]["estimate"],
             "optimism": None}
    decision = choice.confirmation
    if decision:
        entry["rule"] = decision.get("rule")
        rows = {r["key"]: r for r in decision.get("candidates", [])}
        key = "baseline" if choice.is_baseline else next(
            (k for k, r in rows.items() if choice.trial is not None and r.get("trial") == choice.trial.number), None)
        if key in rows:
            entry["confirmed_score"] = rows[key]["confirmed"]
        if "baseline" in rows:
            entry["baseline_confirmed_score"] = rows["baseline"]["confirmed"]
        if choice.how.startswith("the confirmation"):
            entry["why"] = decision["recommended"].get("why")
        if entry["confirmed_score"] is not None:
            entry["optimism"] = entry["confirmed_score"] - entry["test_auc"]
    return entry


def _training_entry(s: ExportSettings, model: Trained) -> dict:
    """How the shipped weights were trained, in words and numbers."""
    if model.members > 1:
        data = (f"an ensemble of {model.members} fold models from the confirmation stage, each trained on its "
                f"fold's training scans ({'/'.join(map(str, model.member_train_scans))} of train + validation) and "
                "scored on the rest; probabilities averaged")
        mode = "confirmation fold models"
    else:
        data, mode = "train + validation parts", "trained on train + validation"
    return {"data": data, "mode": mode, "device": s.device.type, "seed": s.seed,
            "augmentation": "the search's augmentation (search.train.DEFAULT_AUGMENT)",
            "batchnorm_statistics": "recomputed over the training scans after training "
                                    "(search.train.recalibrate_batchnorm), model and baseline alike",
            "test_inference": "float32 on the CPU, threshold 0.5"}


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _model_entry(t: Trained, trial: FrozenTrial | None, size: tuple[int, int, int]) -> dict:
    c = cost(t.spec, size)
    entry = {
        "trial": t.trial, "spec": t.spec.to_dict(), "architecture": describe_spec(t.spec.to_dict()),
        "train_spec": t.train_spec.to_dict(), "params": c.params, "keras_params": c.keras_params,
        "gflops": round(c.gflops, 4), "members": t.members, "member_train_scans": list(t.member_train_scans),
        "epochs": t.epochs, "epochs_rule": t.epochs_rule, "train_seconds": t.train_seconds, "note": t.note,
    }
    if trial is not None and trial.state == TrialState.COMPLETE:
        entry["search_cv_auc"] = trial.values[0]
        entry["search_cv_se"] = trial.user_attrs.get(schema.SCORE_SE)
    return entry


def _data_entry(prepared: PreparedData, root: Path, settings: dict, test_ids: list[str] | None) -> dict:
    """The data summary with folder names in place of local paths, and the test ids only if asked for."""
    summary = prepared.summary()
    summary["root"] = Path(summary["root"]).name
    summary["split_file"] = Path(summary["split_file"]).name  # it names the data set's fingerprint and seed
    summary["phantoms"] = settings.get("data") is None or (root / PHANTOM_MARKER).is_file()
    if test_ids is not None:
        summary["test_ids"] = test_ids
    return summary


def _shareable_settings(settings: dict) -> dict:
    """The study's settings with the data folder named, not located."""
    return settings | ({"data": Path(settings["data"]).name} if settings.get("data") else {})


def _test_predictions(ids: list[str], test: Tensors, model: Trained, base: Trained | None) -> list[dict]:
    """Per test scan: study id, label, and each model's probability (for ROC curves made elsewhere)."""
    rows = []
    for i, (sid, label) in enumerate(zip(ids, test.labels.tolist(), strict=True)):
        rows.append({"study_id": sid, "label": int(label), "p_model": round(float(model.probs[i]), 6),
                     "p_baseline": round(float(base.probs[i]), 6) if base is not None else None})
    return rows


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


def _print_test(result: dict, classes: tuple[str, str]) -> None:
    print(f"\nlocked test part ({result['n']} scans: {result['n_negative']} {classes[0]}, "
          f"{result['n_positive']} {classes[1]}), evaluated once:")
    for key, label in (("model", "exported model"), ("baseline", "seed baseline")):
        r = result[key]
        if r is None:
            continue
        auc = Interval(**r["auc"]).text()
        rates = ", ".join(f"{k} {Interval(**r[k]).estimate:.3f}" for k in ("accuracy", "sensitivity", "specificity"))
        print(f"  {label:<15} AUC {auc}; {rates}")
    if result["baseline_is_model"]:
        print("  (the exported model is the seed baseline itself)")
    elif result["auc_difference"] is not None:
        print(f"  difference in AUC (model - baseline): {Interval(**result['auc_difference']).text()}")


def run_export(args: argparse.Namespace) -> Path:
    """Everything after parsing: choose, train (or assemble), test, write. Returns the folder written.

    Raises:
        ValueError, DataError: Bad flags, a missing study, unusable data.
        ExportError: Training or the export check failed.
    """
    storage = args.storage or default_storage(args.study, args.studies_dir)
    study = load_existing_study(args.study, storage)
    stored = study.user_attrs.get(schema.STUDY_SETTINGS)
    if not stored:
        raise ValueError(f"study: {args.study!r} has no stored settings (was it made by python -m search.run?)")
    s = ExportSettings(
        study=args.study, storage=storage, studies_dir=Path(args.studies_dir),
        out=Path(args.out) if args.out else Path(args.studies_dir) / args.study / "model",
        data=args.data or stored.get("data"), task=stored.get("task", "course"),
        size=tuple(stored["size"]), seed=int(stored.get("seed", 0)),
        split_seed=int(stored.get("split_seed", stored.get("seed", 0))), n_phantoms=int(stored.get("n_phantoms", 200)),
        epochs=args.epochs, bootstrap=args.bootstrap, device=resolve_device(args.device), force=args.force,
        include_scan_ids=args.include_scan_ids, ensemble=args.ensemble,
    )
    check_out_dir(s.out, s.force)
    choice = choose(study, args.trial, s.size)
    chosen, spec, train_spec = choice.trial, choice.spec, choice.train_spec
    # A kept seed baseline is not a search result: no maximum over noisy scores chose it, so nothing asks for
    # the fold models the confirmation scored, and the course trains it on all its scans. Measured on fresh
    # phantoms: its refit beat its own fold ensemble by +0.036 AUC (CI +0.008 to +0.067).
    ensemble = s.ensemble and not choice.is_baseline
    if ensemble and not choice.members:
        raise ValueError(f"--ensemble: the confirmation of {s.study!r} kept no fold models of its recommendation "
                         "(it was confirmed by an older lungct-nas); rerun python -m search.run --confirm-only, or "
                         "export without --ensemble")
    print(f"study {s.study!r} in {redact(s.storage)}: exporting {choice.how}")

    root = resolve_data_root(s.data, s.studies_dir, s.n_phantoms, 0)
    prepared = prepare_data(root, PreprocessConfig(size=s.size), parts=("train", "val", "test"), task=s.task,
                            seed=s.split_seed, studies_dir=s.studies_dir, workers=args.workers,
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
    epochs, rule = _epochs_for(s, stored, choice.confirmation)
    if ensemble:
        model = assemble("exported model", chosen.number if chosen else 0, spec, train_spec, choice.members,
                         choice.confirmation, test, s)
    else:
        model = retrain("exported model", chosen.number if chosen else 0, spec, train_spec, epochs, rule, trainval,
                        test, s)
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
    result = evaluate(model, base, test, s.bootstrap, seed=s.seed)
    _print_test(result, info.classes)

    s.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=s.out.parent, prefix=f".{s.out.name}.tmp."))
    loaded_ids = set(prepared.loaded.study_ids)
    test_ids = [sid for sid in prepared.split.test if sid in loaded_ids]
    data = _data_entry(prepared, Path(root), stored, test_ids if s.include_scan_ids else None)
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
                      "n_trials": len(study.trials), "settings": _shareable_settings(stored)},
            "task": {"name": info.task, "description": info.task_description, "classes": list(info.classes),
                     "threshold": info.threshold},
            "test": result,
            "selection": _selection_entry(choice, result),
            "model": _model_entry(model, chosen, s.size),
            "baseline": (_model_entry(base, base_trial, s.size) | {"note": base_note}) if base is not None
            else {"note": base_note},
            "data": data,
            "training": _training_entry(s, model),
            **({"test_predictions": _test_predictions(test_ids, test, model, base)} if s.include_scan_ids else {}),
            "export_check": check,
            "versions": _versions(),
        }
        write_json(tmp / METRICS, metrics)
        write_model_figures(metrics, tmp)
        (tmp / CARD).write_text(render_model_card(metrics))
        check_out_dir(s.out, s.force)  # again: another process may have written there while we trained
        _replace_dir(tmp, s.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        upload_pictures(s, study, chosen, model, test, info)
    except KeyboardInterrupt:
        print(f"\ninterrupted while uploading pictures to optuna-dashboard; the model folder {s.out} is complete",
              file=sys.stderr)
    return s.out


DASHBOARD_PICTURES = (ROC_PNG, CALIBRATION_PNG)  # from the model folder


def upload_pictures(s: ExportSettings, study: optuna.Study, trial: FrozenTrial | None, model: Trained,
                    test: Tensors, info: ModelInfo) -> list[str]:
    """Attach the test ROC, the calibration and saliency examples to the study for optuna-dashboard.

    Optuna keeps a finished trial immutable (``upload_artifact`` on it raises, and the dashboard refuses
    uploads to finished trials too), so the pictures are study artifacts, their names starting with the
    exported trial: ``export_trial<N>_roc.png``, ``export_trial<N>_saliency_<outcome>.png``. The saliency
    examples are the surest test scan of each outcome (``search.saliency.write_examples``); they show
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
        store = FileSystemArtifactStore(str(store_dir))
        with tempfile.TemporaryDirectory() as tmp:
            pictures = [s.out / name for name in DASHBOARD_PICTURES if (s.out / name).is_file()]
            pictures += write_examples(model.model, test.volumes, test.labels.numpy(), model.probs, info.classes,
                                       info.threshold, Path(tmp))
            for picture in pictures:
                named = Path(tmp) / f"{prefix}{picture.name}"
                shutil.copyfile(picture, named)
                upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study,
                                mimetype="image/png")
                names.append(named.name)
    except (OSError, ValueError, RuntimeError) as e:
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
    try:
        _check_args(args)
        out = run_export(args)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"\nwrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"read {out / CARD}; predict on a scan with:\n  python -m search.predict {out} SCAN.nii.gz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
