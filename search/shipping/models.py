"""What export ships and how it gets its weights: the choice, the retraining on train+val, the ensemble.

``choose`` reads the confirmation's recommendation (or ``--trial``); ``retrain`` trains a spec on the
train and validation parts from the seed its trial used and scores the locked test part once;
``assemble`` instead loads the confirmation's fold models of a spec as one ``Ensemble``. Each gives a
:class:`Shipped`: the model, its test probabilities and metrics, and how it was trained. For an ordinal
task (severity grades) the networks are built with the task's K grades (``space.build(spec, grades=K)``:
an ordinal head of K-1 cumulative logits) and scored with ``search.stats.metrics.task_metrics``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lungct.errors import UsageError
from lungct.records import get_task
from search.model.folder import (
    Ensemble,
    members_of,
)
from search.selection.confirm import Decision, stored_decision
from search.selection.settings import RunSettings
from search.stats.metrics import BinaryMetrics, OrdinalMetrics, task_metrics
from search.study import schema
from search.study.artifacts import artifact_dir
from search.training.data import Tensors
from search.training.loop import EpochResult, predict_probs, recalibrate_batchnorm
from search.training.precision import device_precision
from search.training.unit import NON_FINITE, TrainingFailed, train_model
from space import ArchSpec, TrainSpec, baseline, baseline_train, build, describe_spec, fit_to_size


class ExportError(Exception):
    """Export cannot go on (nothing chosen, training diverged, exported files disagree); one line."""


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
    trial: int | None = None  # --trial: export this trial instead of the recommendation
    workers: int | None = None  # processes decoding scans on a cold cache


@dataclass(frozen=True)
class Shipped:
    """A model to ship (trained on train+val, or the confirmation's fold models as an ensemble) and its test scores."""

    role: str
    trial: int | None
    spec: ArchSpec
    train_spec: TrainSpec
    epochs: int
    epochs_rule: str
    model: torch.nn.Module
    probs: np.ndarray  # (N,) P(label 1), or (N, K-1) P(grade >= k) for an ordinal task
    metrics: BinaryMetrics | OrdinalMetrics
    train_seconds: float
    note: str | None = None
    member_train_scans: tuple[int, ...] = ()  # per fold model of an ensemble; empty for one model

    @property
    def members(self) -> int:
        """Trained copies in the model: an ensemble's fold models, else 1."""
        return members_of(self.model)


def task_grades(s: ExportSettings) -> int:
    """K, the labels of the study's task: 2 for a binary task, the grades of an ordinal one."""
    return get_task(s.task).n_grades


@dataclass(frozen=True)
class Choice:
    """What export trains: the confirmation's recommendation or a trial asked for with ``--trial``."""

    spec: ArchSpec
    train_spec: TrainSpec
    trial: FrozenTrial | None
    is_baseline: bool
    how: str
    confirmation: Decision | None = None
    members: tuple[str, ...] | None = None  # artifact ids of the confirmation's fold models of this spec


def choose(study: optuna.Study, number: int | None, size: tuple[int, int, int]) -> Choice:
    """The trial asked for, else the confirmation's recommendation.

    Raises:
        UsageError: No such trial, it did not complete, or the study has no confirmation yet.
    """
    trials = study.get_trials(deepcopy=False)
    decision = stored_decision(study)
    if number is not None:
        if not 0 <= number < len(trials):
            raise UsageError(f"--trial: study {study.study_name!r} has trials 0..{len(trials) - 1}, not {number}")
        trial = trials[number]
        if trial.state != TrialState.COMPLETE or schema.SPEC not in trial.user_attrs:
            raise UsageError(f"--trial: trial {number} is {trial.state.name.lower()}; only complete trials can be "
                             "exported")
        return Choice(ArchSpec.from_dict(trial.user_attrs[schema.SPEC]),
                      TrainSpec.from_dict(trial.user_attrs[schema.TRAIN_SPEC]), trial,
                      bool(trial.user_attrs.get(schema.BASELINE)), f"trial {number}, as given by --trial", decision)
    if not decision:
        raise UsageError(f"study: {study.study_name!r} has no confirmation yet, so nothing is recommended; run "
                         f"python -m search.run --confirm-only --study {study.study_name} (or pass --trial N)")
    rec = decision.recommended
    rec_trial = trials[rec.trial] if rec.trial is not None and rec.trial < len(trials) else None
    if rec.baseline:
        spec, _ = fit_to_size(baseline(), size)
        return Choice(spec, baseline_train(), rec_trial, True, "the confirmation's recommendation: the seed baseline",
                      decision, rec.members)
    return Choice(ArchSpec.from_dict(rec.spec), TrainSpec.from_dict(rec.train_spec), rec_trial, False,
                  f"the confirmation's recommendation: {rec.key}", decision, rec.members)


def epoch_printer(label: str, epochs: int):
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
            trainval: Tensors, test: Tensors, s: ExportSettings, note: str | None = None) -> Shipped:
    """Train ``spec`` on train+val from the seed its trial used, then score the test part once.

    Raises:
        ExportError: Training diverged or ran out of memory.
    """
    seed = s.seed + (trial or 0)  # the search seeds trial n with seed + n; export repeats that
    amp = device_precision(s.device).amp
    plural = "s" if epochs != 1 else ""
    print(f"training the {role} ({describe_spec(spec.to_dict())}) on train+val ({len(trainval)} scans) for "
          f"{epochs} epoch{plural} ({epochs_rule}), seed {seed}, {s.device.type}{', bf16 autocast' if amp else ''}",
          flush=True)
    on_epoch, close = epoch_printer(role, epochs)
    try:
        trained = train_model(spec, train_spec, trainval, None, epochs=epochs, device=s.device, seed=seed, amp=amp,
                              on_epoch=on_epoch, grades=task_grades(s))
    except TrainingFailed as e:
        hint = "try --epochs or another --trial" if e.kind == NON_FINITE else "try --device cpu"
        raise ExportError(f"training the {role}: {e}; {hint}") from None
    finally:
        close()
    model, fitted = trained.model, trained.fitted
    if recalibrate_batchnorm(model, trainval, s.device, train_spec.batch_size):
        print(f"  {role}: batch-norm statistics recomputed over the {len(trainval)} training scans", flush=True)
    model = model.to("cpu").eval()
    # Test in float32 on the CPU: the numbers then describe the exported weights as predict runs them.
    probs = predict_probs(model, test.volumes, torch.device("cpu"), amp=False)
    metrics = task_metrics(test.labels.numpy(), probs)
    return Shipped(role, trial, spec, train_spec, epochs, epochs_rule, model, probs, metrics,
                   round(fitted.train_seconds, 2), note)


def member_runs(storage: str, decision: Decision) -> dict[str, dict]:
    """The confirmation runs that kept weights, keyed by artifact id: their user attrs."""
    if decision.companion_study is None:
        return {}
    try:
        companion = optuna.load_study(study_name=decision.companion_study, storage=storage)
    except KeyError:
        return {}
    return {t.user_attrs[schema.WEIGHTS_ARTIFACT]: t.user_attrs for t in companion.get_trials(deepcopy=False)
            if t.user_attrs.get(schema.WEIGHTS_ARTIFACT)}


def assemble(role: str, trial: int | None, spec: ArchSpec, train_spec: TrainSpec, ids: Sequence[str],
             decision: Decision, test: Tensors, s: ExportSettings, note: str | None = None) -> Shipped:
    """The confirmation's fold models of ``spec`` as one :class:`Ensemble`, scored on the test part once.

    Raises:
        UsageError: A fold model's weights are missing or unreadable in the artifact store.
        ExportError: They do not fit the spec.
    """
    store_dir = artifact_dir(s.studies_dir, s.study)
    store = FileSystemArtifactStore(str(store_dir))
    runs = member_runs(s.storage, decision)
    epochs, folds = decision.settings.epochs, decision.settings.folds
    n_train = tuple(int(runs.get(i, {}).get(schema.N_TRAIN, 0)) for i in ids)
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
                raise UsageError(f"artifacts: fold model {i} of the {role} ({artifact}) is missing or unreadable in "
                                 f"{store_dir} ({type(e).__name__}); rerun python -m search.run --confirm-only, or "
                                 "export without --ensemble") from None
            net = build(spec, grades=task_grades(s))  # the confirmation trained the task's head
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ExportError(f"artifacts: fold model {i} of the {role} does not fit its spec "
                                  f"({str(e).splitlines()[0]})") from None
            members.append(net)
    model = Ensemble(members).eval()
    probs = predict_probs(model, test.volumes, torch.device("cpu"), amp=False)
    metrics = task_metrics(test.labels.numpy(), probs)
    seconds = sum(float(runs.get(i, {}).get(schema.TRAIN_SECONDS, 0.0)) for i in ids)
    rule = f"the confirmation's fold models, {epochs} epochs each"
    return Shipped(role, trial, spec, train_spec, epochs, rule, model, probs, metrics, round(seconds, 2), note,
                   member_train_scans=n_train)


def epochs_for(s: ExportSettings, stored: dict, decision: Decision | None) -> tuple[int, str]:
    """``--epochs``, else the confirmation's epochs per run, and the rule in words.

    The confirmation measured every candidate and the baseline at that budget; training longer or
    shorter here would ship a model the confirmation never scored.
    """
    if s.epochs is not None:
        return s.epochs, "as given by --epochs"
    if decision:
        return decision.settings.epochs, "the confirmation's epochs per run"
    return RunSettings.from_dict(stored).confirm_epochs, "the study's confirmation epochs per run"

