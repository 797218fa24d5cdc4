"""One ablation run, (variant, repeat, fold), as one trial of the ablation's study; its record; the progress.

A run trains a variant on the fold's training part through ``search.training.unit.train_model`` inside
``search.study.trial_run.trial_run`` (as the search and the confirmation do) and is scored on the fold's
validation part after its last epoch: by the ROC AUC for a binary task; for an ordinal one (severity) with
the task's K grades in the head and scored by the mean "grade >= k" AUC (``search.stats.metrics.task_metrics``),
beside the exact-grade accuracy, the balanced accuracy, the quadratic weighted kappa and the mean
absolute error in grades. The trial holds everything the outputs need, so an interrupted
ablation resumes from its study: finished runs (complete, or pruned for a non-finite loss, which the same
seed would repeat) are never redone.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from lungct.records import get_task
from lungct.splits import Fold
from search.ablation.settings import AblationSettings
from search.ablation.variants import Variant
from search.stats.metrics import OrdinalMetrics
from search.study.notes import BINARY_SCORE, ScoreName
from search.study.storage import fail_running, schema
from search.study.trial_run import KnownFailure, TrialRun, trial_run
from search.training.data import PreparedData
from search.training.loop import EpochResult, Tensors, device_name
from search.training.unit import train_model
from space import cost

RUN_COLUMNS = (
    "variant", "repeat", "fold", "seed", "state", "auc", "accuracy", "sensitivity", "specificity",
    "auc_best_epoch", "best_epoch", "epochs", "train_seconds", "n_train", "n_val", "params", "gflops", "device",
    "trial", "reason",
)
# An ordinal task's runs.csv: its metrics in place of the binary sensitivity and specificity.
ORDINAL_RUN_COLUMNS = tuple(c for name in RUN_COLUMNS if name not in ("sensitivity", "specificity")
                            for c in ((name, "balanced_accuracy", "qwk", "mae") if name == "accuracy" else (name,)))
RunKey = tuple[str, str, int, int]  # (variant, spec key, repeat, fold)
# The ordinal metrics' trial attrs (a binary run holds none of them).
BALANCED_ACCURACY, QWK, MAE = "balanced_accuracy", "qwk", "mae"


def run_columns(ordinal: bool) -> tuple[str, ...]:
    """The columns of runs.csv: :data:`RUN_COLUMNS`, or :data:`ORDINAL_RUN_COLUMNS` for an ordinal task."""
    return ORDINAL_RUN_COLUMNS if ordinal else RUN_COLUMNS


@dataclass(frozen=True)
class RunRecord:
    """One finished (or failed) run, read back from its trial.

    ``accuracy`` is the exact-grade accuracy for an ordinal task; ``sensitivity`` and ``specificity`` are
    binary only (NaN for an ordinal run), ``balanced_accuracy``, ``qwk`` and ``mae`` ordinal only (None for
    a binary run).
    """

    variant: str
    repeat: int
    fold: int
    seed: int
    state: str
    auc: float
    accuracy: float
    sensitivity: float
    specificity: float
    auc_best_epoch: float
    best_epoch: int
    epochs: int
    train_seconds: float
    n_train: int
    n_val: int
    params: int
    gflops: float
    device: str
    trial: int
    reason: str
    balanced_accuracy: float | None = None
    qwk: float | None = None
    mae: float | None = None

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> RunRecord:
        """The run a trial of an ablation study holds."""
        a = trial.user_attrs
        nan = math.nan
        return cls(
            variant=a[schema.VARIANT], repeat=int(a[schema.REPEAT]), fold=int(a[schema.FOLD]),
            seed=int(a[schema.SEED]), state=trial.state.name.lower(), auc=a.get(schema.AUC, nan),
            accuracy=a.get(schema.ACCURACY, nan), sensitivity=a.get(schema.SENSITIVITY, nan),
            specificity=a.get(schema.SPECIFICITY, nan), auc_best_epoch=a.get(schema.AUC_BEST_EPOCH, nan),
            best_epoch=a.get(schema.BEST_EPOCH, 0), epochs=a.get(schema.EPOCHS_RUN, 0),
            train_seconds=a.get(schema.TRAIN_SECONDS, nan), n_train=a.get(schema.N_TRAIN, 0),
            n_val=a.get(schema.N_VAL, 0), params=a.get(schema.PARAMS, 0), gflops=a.get(schema.GFLOPS, nan),
            device=a.get(schema.DEVICE, ""), trial=trial.number,
            reason=a.get(schema.PRUNE_REASON, a.get(schema.FAIL_REASON, "")),
            balanced_accuracy=a.get(BALANCED_ACCURACY), qwk=a.get(QWK), mae=a.get(MAE),
        )

    @property
    def scored(self) -> bool:
        """Whether the run finished with a validation AUC."""
        return self.state == "complete" and math.isfinite(self.auc)

    def to_row(self, columns: Sequence[str] = RUN_COLUMNS) -> dict:
        """A row of runs.csv (an ordinal task's: ``columns=ORDINAL_RUN_COLUMNS``; a metric a run lacks is NaN)."""
        row = {c: getattr(self, c) for c in columns}
        return row | {c: math.nan for c in (BALANCED_ACCURACY, QWK, MAE) if c in row and row[c] is None}


def run_seed(base: int, repeat: int, fold: int) -> int:
    """The seed of run (repeat, fold), the same for every variant."""
    return base + 1000 * repeat + fold


def run_key(variant: Variant, fold: Fold) -> RunKey:
    """The key of ``variant``'s run on ``fold`` in :func:`finished_runs`."""
    return variant.name, variant.key, fold.repeat, fold.fold


def finished_runs(study: optuna.Study) -> dict[RunKey, FrozenTrial]:
    """Finished runs keyed by (variant, spec key, repeat, fold): complete, or pruned for a non-finite loss.

    A failed or still-running leftover is not finished and is redone.
    """
    done: dict[RunKey, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        a = t.user_attrs
        if {schema.VARIANT, schema.SPEC_KEY, schema.REPEAT, schema.FOLD} <= a.keys():
            done.setdefault((a[schema.VARIANT], a[schema.SPEC_KEY], int(a[schema.REPEAT]), int(a[schema.FOLD])), t)
    return done


class AblationProgress:
    """A bar over runs (ETA, per-epoch postfix) on a terminal; elsewhere one line per finished run."""

    def __init__(self, total: int, epochs: int, enabled: bool | None = None, score: ScoreName = BINARY_SCORE):
        self.interactive = sys.stderr.isatty() if enabled is None else enabled
        self.score = score
        self.total = total
        self.epochs = epochs
        self.done = 0
        self.bar = tqdm(total=total, desc="runs", unit="run", disable=not self.interactive, dynamic_ncols=True)

    def start(self, variant: str, fold: Fold) -> None:
        """A run begins."""
        self.bar.set_description(f"{variant} r{fold.repeat}f{fold.fold}")

    def on_epoch(self, result: EpochResult) -> None:
        """An epoch of the running run ended."""
        auc = result.val.auc if result.val is not None else math.nan
        self.bar.set_postfix(epoch=f"{result.epoch}/{self.epochs}", loss=f"{result.train_loss:.3f}",
                             val_auc=f"{auc:.3f}")

    def on_run_end(self, run: RunRecord) -> None:
        """A run ended (complete, diverged or failed)."""
        self.done += 1
        if run.scored:
            if self.score.ordinal:
                what = (f"{self.score.short} {run.auc:.3f}, grade accuracy {run.accuracy:.3f}, QWK "
                        f"{math.nan if run.qwk is None else run.qwk:.3f}, {run.train_seconds:.0f} s")
            else:
                what = f"AUC {run.auc:.3f}, accuracy {run.accuracy:.3f}, {run.train_seconds:.0f} s"
        else:
            what = f"{run.state} ({run.reason or 'see optuna-dashboard'})"
        line = f"{run.variant} repeat {run.repeat} fold {run.fold}: {what}"
        if self.interactive:
            self.bar.write(line)
            self.bar.update()
        else:
            print(f"[{self.done}/{self.total}] {line}", flush=True)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class AblationRunner:
    """Runs one (variant, fold) at a time as a trial of the ablation study, on data loaded once.

    Args:
        prepared: The loaded train and validation scans.
        settings: Size, epochs, seeds, precision, and the task, whose grades the head is built for.
        device: Where to train.
        on_epoch: Called after every epoch of every run.
    """

    def __init__(self, prepared: PreparedData, settings: AblationSettings, device: torch.device,
                 on_epoch: Callable[[EpochResult], None] | None = None):
        self.prepared = prepared
        self.settings = settings
        self.grades = get_task(settings.task).n_grades
        self.device = device
        self.on_epoch = on_epoch
        self.running: int | None = None  # the trial number in progress, for cleanup after Ctrl-C
        self._fold: tuple[tuple[int, int], Tensors, Tensors] | None = None

    def fold_data(self, fold: Fold) -> tuple[Tensors, Tensors]:
        """The fold's training and validation tensors (kept while the same fold runs for every variant)."""
        if self._fold is None or self._fold[0] != (fold.repeat, fold.fold):
            self._fold = None  # free the previous fold's copy before making the next
            data = Tensors(*self.prepared.loaded.select(fold.train))
            val = Tensors(*self.prepared.loaded.select(fold.val))
            self._fold = ((fold.repeat, fold.fold), data, val)
        return self._fold[1], self._fold[2]

    def run(self, study: optuna.Study, variant: Variant, fold: Fold) -> RunRecord:
        """Train ``variant`` on the fold's training part and score it on its validation part, as one trial.

        Optuna's own loop runs the trial, so its heartbeat marks a run failed if this process is killed,
        and a Ctrl-C fails the trial before it propagates.
        """
        study.optimize(lambda trial: self._objective(trial, variant, fold), n_trials=1, catch=(KnownFailure,))
        number = self.running
        self.running = None
        assert number is not None  # _objective set it: optimize ran the trial
        return RunRecord.from_trial(study.get_trials(deepcopy=False)[number])

    def _objective(self, trial: optuna.Trial, variant: Variant, fold: Fold) -> float:
        self.running = trial.number
        with trial_run(trial) as run:
            return self._train(run, variant, fold)

    def _train(self, run: TrialRun, variant: Variant, fold: Fold) -> float:
        s, trial = self.settings, run.trial
        seed = run_seed(s.seed, fold.repeat, fold.fold)
        data, val = self.fold_data(fold)
        spec_cost = cost(variant.spec, s.size)
        run.set({
            schema.VARIANT: variant.name, schema.REPEAT: fold.repeat, schema.FOLD: fold.fold, schema.SEED: seed,
            schema.SPEC_KEY: variant.key, schema.SPEC: variant.spec.to_dict(),
            schema.TRAIN_SPEC: variant.train_spec.to_dict(), schema.ORIGIN: variant.origin,
            schema.PADDING: variant.padding, schema.PARAMS: spec_cost.params, schema.GFLOPS: spec_cost.gflops,
            schema.N_TRAIN: len(data), schema.N_VAL: len(val), schema.DEVICE: device_name(self.device),
            schema.AMP_BF16: s.amp,
        })
        history: list[EpochResult] = []

        def on_epoch(result: EpochResult) -> None:
            history.append(result)
            if result.val is not None and math.isfinite(result.val.auc):
                trial.report(result.val.auc, result.epoch)  # learning curves in optuna-dashboard
            if self.on_epoch is not None:
                self.on_epoch(result)

        run.on_failure = lambda _: self._record_curve(trial, history)
        fitted = train_model(variant.spec, variant.train_spec, data, val, epochs=s.epochs, device=self.device,
                             seed=seed, amp=s.amp, on_epoch=on_epoch, grades=self.grades).fitted
        self._record_curve(trial, history)
        last = fitted.history[-1].val
        assert last is not None
        # The fold's score is the last epoch's: choosing the best epoch on the fold being scored would
        # bias every variant upward. The best-epoch AUC is kept for reference only.
        run.set({schema.AUC: last.auc, **_rates(last), schema.AUC_BEST_EPOCH: fitted.best_auc,
                 schema.BEST_EPOCH: fitted.best_epoch, schema.TRAIN_SECONDS: round(fitted.train_seconds, 2)})
        return last.auc

    def _record_curve(self, trial: optuna.Trial, history: list[EpochResult]) -> None:
        trial.set_user_attr(schema.EPOCHS_RUN, len(history))
        trial.set_user_attr(schema.TRAIN_LOSS, [round(h.train_loss, 5) for h in history])
        trial.set_user_attr(schema.VAL_AUC, [round(h.val.auc, 5) if h.val is not None else None for h in history])


def _rates(metrics) -> dict:
    """The run's attrs beside its AUC: accuracy, sensitivity, specificity; for an ordinal task the exact-grade
    accuracy, the balanced accuracy, the quadratic weighted kappa and the mean absolute error in grades."""
    if isinstance(metrics, OrdinalMetrics):
        exact = sum(row[k] for k, row in enumerate(metrics.confusion)) / metrics.n if metrics.n else math.nan
        return {schema.ACCURACY: exact, BALANCED_ACCURACY: metrics.balanced_accuracy, QWK: metrics.qwk,
                MAE: metrics.mae}
    return {schema.ACCURACY: metrics.accuracy, schema.SENSITIVITY: metrics.sensitivity,
            schema.SPECIFICITY: metrics.specificity}


def run_all(study: optuna.Study, todo: Sequence[tuple[Fold, Variant]], runner: AblationRunner,
            progress: AblationProgress) -> None:
    """Run ``todo`` in order, one trial each.

    A Ctrl-C fails the running run's trial (``search.study.storage.fail_running``, as every command that runs
    trials does) and propagates; finished runs stay in the study, so running again resumes.
    """
    try:
        for fold, variant in todo:
            progress.start(variant.name, fold)
            progress.on_run_end(runner.run(study, variant, fold))
    finally:
        progress.close()
        fail_running(study, runner.running)
