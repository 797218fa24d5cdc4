"""The trial objective: sample a spec, score it by cross-validation at the final epoch, prune, record.

An :class:`Objective` holds the cross-validation folds of the non-test scans (loaded once in ``main``)
and is called once per trial. It never reads files. A trial's value estimates how the spec does on scans
it was not trained on:

- each fold trains a fresh model on the fold's training part for the run's epochs and scores ROC AUC on
  the fold's validation part once, at the final epoch (never the best of several epochs, which would
  select on the scans being scored);
- the value is the mean of the fold AUCs; the per-fold AUCs, their bootstrap standard errors and the
  score's standard error are stored on the trial;
- after each fold the running mean is reported (step k = mean of the first k folds), so the pruner
  decides on at least one whole fold's validation part, never on one epoch of a small holdout.

The spec is fitted to the input size before anything is built (``space.fit_sampled``): the space never
trains a spec that cannot run; and to the cost cap (``space.fit_cost``): a spec above it trains narrower,
with the reason recorded, instead of spending the trial slot on nothing. Known failures are caught by
type and recorded on the trial as a reason (``search.study.trial_run``, as in the confirmation and the ablation):
a spec that no narrowing brings under the cost cap is pruned untrained, a non-finite training loss prunes
the trial, running out of memory fails it, and the study goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
import torch

from search.stats.metrics import task_metrics
from search.study import schema
from search.study.trial_run import TrialRun, trial_run
from search.training.data import Tensors
from search.training.loop import EpochResult, FitResult, device_name, place, recalibrate_batchnorm
from search.training.unit import OUT_OF_MEMORY, TrainingFailed, auc_standard_error, predict_finite, train_model
from space import SpaceBounds, cost, fit_cost, fit_sampled, sample


@dataclass(frozen=True)
class FoldData:
    """One cross-validation fold of the non-test scans."""

    index: int
    train: Tensors
    val: Tensors


@dataclass(frozen=True)
class SearchSettings:
    """What every trial of a run shares.

    Attributes:
        size: Input (D, H, W).
        epochs: Epochs per fold (every fold trains this many; the score is the last epoch's).
        device: Where to train.
        seed: Base seed; trial ``n`` trains fold ``i`` from seed ``seed + n + FOLD_SEED_STRIDE * i``.
        amp: bf16 autocast allowed.
        objectives: ``("auc",)`` or ``("auc", "params")`` / ``("auc", "flops")``.
        bounds: The search space, already fitted to ``size`` (``space.bounds_for_size``).
        max_gflops: Narrow (``space.fit_cost``), else prune untrained, any spec costing more forward GFLOPs per
            sample (None: no cap).
        recompute_bn: Recompute every batch-norm layer's statistics over the fold's training scans before
            scoring its validation part (the ``auc_bn`` score).
        grades: The task's labels: 2 (binary: a fold's score is its ROC AUC), or K > 2 ordered grades (an
            ordinal head; a fold's score is the mean "grade >= k" AUC, ``search.stats.metrics``).
        speed_limit: Prune a trial whose second epoch trained more than this many times slower per sample than
            the seed baseline's own trial (None: never; it depends on measured time, so under a budget which trials
            it prunes can differ between two runs of one seed; a run with a time budget sets
            ``search.selection.budget.CONFIRM_SPEED_LIMIT``, the same limit its confirmation applies, so the
            search spends no time on a spec it could not confirm).
    """

    size: tuple[int, int, int]
    epochs: int
    device: torch.device
    seed: int = 0
    amp: bool = False
    objectives: tuple[str, ...] = ("auc",)
    bounds: SpaceBounds = field(default_factory=SpaceBounds)
    max_gflops: float | None = None
    recompute_bn: bool = False
    grades: int = 2
    speed_limit: float | None = None


# What a trial's fold is scored by (search.run --score). After 4 epochs of about 33 steps, batch norm's running
# averages (momentum 0.99) still hold a quarter of their initial values, so eval-mode scores with them rank specs
# by how well they survive stale statistics; the confirmation and export recompute them before scoring.
SCORES = ("auc_bn", "auc")
DEFAULT_SCORE = "auc_bn"
FOLD_SEED_STRIDE = 10_000
# The epoch of the first fold at which a trial's speed is compared with the seed baseline's (the first epoch also
# warms up allocations and the bf16 probe, so a one-epoch fold is never checked).
SPEED_CHECK_EPOCH = 2


def fold_seed(base: int, trial_number: int, fold: int) -> int:
    """The training seed of one fold of one trial (fold 0 keeps the historic ``base + trial``)."""
    return base + trial_number + FOLD_SEED_STRIDE * fold


def score_of(fold_aucs: Sequence[float], fold_ses: Sequence[float]) -> tuple[float, float]:
    """The mean of the fold AUCs and its standard error, the folds' scan sets being disjoint."""
    k = len(fold_aucs)
    mean = float(np.mean(fold_aucs))
    se = float(math.sqrt(sum(s * s for s in fold_ses)) / k) if all(math.isfinite(s) for s in fold_ses) else math.nan
    return mean, se


class Objective:
    """The callable passed to ``study.optimize``.

    Args:
        folds: The cross-validation folds of the non-test scans.
        settings: Size, epochs, device, seeds, objectives.
        on_epoch: Called after each epoch of each fold of each trial (for progress display).
        on_trial_end: Called with the trial, each trained fold's fit result and the last fold's model after
            a trial that trained (completed or pruned), e.g. to store artifacts.
    """

    def __init__(self, folds: Sequence[FoldData], settings: SearchSettings,
                 on_epoch: Callable[[optuna.Trial, EpochResult], None] | None = None,
                 on_trial_end: Callable[[optuna.Trial, list[FitResult], torch.nn.Module], None] | None = None):
        if not folds:
            raise ValueError("folds: need at least one cross-validation fold")
        self.settings = settings
        self.folds = [FoldData(f.index, place(f.train, settings.device), place(f.val, settings.device))
                      for f in folds]
        self.on_epoch = on_epoch
        self.on_trial_end = on_trial_end
        self.running: int | None = None  # the trial number in progress, for cleanup after Ctrl-C
        self._baseline_rate: float | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.running = trial.number  # after Ctrl-C it stays: the caller fails the trial, and may queue it again
        try:
            with trial_run(trial) as run:
                value = self._run(run)
        except Exception:  # pruned or failed: finished by Optuna
            self.running = None
            raise
        self.running = None
        return value

    def _run(self, run: TrialRun) -> float | tuple[float, float]:
        s, trial = self.settings, run.trial
        sampled, train_spec = sample(trial, s.bounds)
        arch, note = fit_sampled(sampled, s.size)
        if note:
            trial.set_user_attr(schema.PADDING_FALLBACK, note)
        is_baseline = bool(trial.user_attrs.get(schema.BASELINE))
        # The reference point is never shrunk: it is the course's model, whatever it costs.
        arch, note = fit_cost(arch, s.size, None if is_baseline else s.max_gflops)
        if note:
            trial.set_user_attr(schema.COST_FALLBACK, note)
        spec_cost = cost(arch, s.size, grades=s.grades)
        run.set({schema.SPEC: arch.to_dict(), schema.TRAIN_SPEC: train_spec.to_dict(),
                 schema.PARAMS: spec_cost.params, schema.KERAS_PARAMS: spec_cost.keras_params,
                 schema.GFLOPS: spec_cost.gflops, schema.DEVICE: device_name(s.device), schema.AMP_BF16: s.amp,
                 schema.N_VAL: [len(f.val) for f in self.folds]})
        if s.max_gflops is not None and spec_cost.gflops > s.max_gflops and not is_baseline:
            run.prune(f"too costly for this fidelity: {spec_cost.gflops:.1f} GFLOPs/sample, above the cap "
                      f"of {s.max_gflops:g} (--max-gflops)")

        single = len(s.objectives) == 1
        fits: list[FitResult] = []
        aucs: list[float] = []
        ses: list[float] = []
        start = time.perf_counter()
        model = None
        history: list[EpochResult] = []  # the running fold's epochs

        floor = None if is_baseline or s.speed_limit is None else self._baseline_speed(trial)

        def on_epoch(result: EpochResult) -> None:
            history.append(result)
            if self.on_epoch is not None:
                self.on_epoch(trial, result)
            if floor and not fits and len(history) == SPEED_CHECK_EPOCH and result.seconds > 0:
                rate = len(self.folds[0].train) / result.seconds
                if floor / rate > (s.speed_limit or math.inf):
                    fits.append(FitResult(history=list(history)))
                    self._record(trial, fits, aucs, ses, start)
                    run.prune(f"too slow for the time budget: {rate:.1f} samples/s at epoch {len(history)}, "
                              f"{floor / rate:.1f}x slower than the seed baseline's trial ({floor:g}), above the "
                              f"limit of {s.speed_limit:g}x: its confirmation would not fit (--budget none trains "
                              "it)")

        def on_failure(error: TrainingFailed) -> None:
            if history and len(fits) == len(aucs):  # the failing fold's epochs, unless it trained to the end
                fits.append(FitResult(history=history))
            self._record(trial, fits, aucs, ses, start)
            if error.kind != OUT_OF_MEMORY:  # a pruned trial keeps what it trained; a failed one does not
                self._finish(trial, fits, model)

        run.on_failure = on_failure
        for fold in self.folds:
            history = []
            run.where = f"fold {fold.index + 1}"
            trained = train_model(arch, train_spec, fold.train, None, epochs=s.epochs, device=s.device,
                                  seed=fold_seed(s.seed, trial.number, fold.index), amp=s.amp, on_epoch=on_epoch,
                                  grades=s.grades)
            model = trained.model
            fits.append(trained.fitted)
            if s.recompute_bn:
                recomputed = recalibrate_batchnorm(model, fold.train, s.device, train_spec.batch_size)
                trial.set_user_attr(schema.BN_RECOMPUTED, recomputed)
            probs = predict_finite(trained, fold.val.volumes, s.device, amp=s.amp)
            labels = fold.val.labels.cpu().numpy()
            aucs.append(task_metrics(labels, probs).auc)
            ses.append(auc_standard_error(labels, probs, seed=fold.index))
            mean, _ = score_of(aucs, ses)
            if single and len(aucs) < len(self.folds):
                trial.report(mean, fold.index + 1)
                if trial.should_prune():
                    self._record(trial, fits, aucs, ses, start)
                    self._finish(trial, fits, model)
                    metric = "mean grade>=k AUC" if s.grades > 2 else "mean AUC"
                    run.prune(f"pruned after fold {fold.index + 1} of {len(self.folds)}: {metric} "
                              f"{mean:.3f} on {sum(len(f.val) for f in self.folds[:len(aucs)])} "
                              "validation scans, below the pruner's bar")
        self._record(trial, fits, aucs, ses, start)
        self._finish(trial, fits, model)
        value, _ = score_of(aucs, ses)
        if single:
            trial.report(value, len(self.folds))
            return value
        return value, float(spec_cost.params if s.objectives[1] == "params" else spec_cost.gflops)

    def _baseline_speed(self, trial: optuna.Trial) -> float | None:
        """The seed baseline's trial's training samples per second in this study, once it has one."""
        if self._baseline_rate is None:
            self._baseline_rate = next(
                (t.user_attrs[schema.SAMPLES_PER_S] for t in trial.study.get_trials(deepcopy=False)
                 if t.user_attrs.get(schema.BASELINE) and t.state == optuna.trial.TrialState.COMPLETE
                 and t.user_attrs.get(schema.SAMPLES_PER_S)), None)
        return self._baseline_rate

    def _record(self, trial: optuna.Trial, fits: list[FitResult], aucs: list[float], ses: list[float],
                start: float) -> None:
        histories = [f.history for f in fits]
        epochs = sum(len(h) for h in histories)
        trial.set_user_attr(schema.EPOCHS_RUN, epochs)
        trial.set_user_attr(schema.WALL_SECONDS, round(time.perf_counter() - start, 2))
        if aucs:
            score, se = score_of(aucs, ses)
            trial.set_user_attr(schema.FOLD_AUCS, [round(a, 5) for a in aucs])
            trial.set_user_attr(schema.FOLD_SES, [round(s, 5) for s in ses])
            trial.set_user_attr(schema.SCORE, round(score, 5))
            trial.set_user_attr(schema.SCORE_SE, round(se, 5) if math.isfinite(se) else None)
        if not epochs:
            return
        train_s = sum(e.seconds for h in histories for e in h)
        n_train = sum(len(f.train) * len(h) for f, h in zip(self.folds, histories, strict=False))
        trial.set_user_attr(schema.TRAIN_LOSS, [[round(e.train_loss, 5) for e in h] for h in histories])
        trial.set_user_attr(schema.PRECISION, [f.precision for f in fits])
        trial.set_user_attr(schema.EPOCH_SECONDS, round(train_s / epochs, 3))
        trial.set_user_attr(schema.TRAIN_SECONDS, round(train_s, 2))
        trial.set_user_attr(schema.SAMPLES_PER_S, round(n_train / max(train_s, 1e-9), 2))

    def _finish(self, trial: optuna.Trial, fits: list[FitResult], model: torch.nn.Module | None) -> None:
        if self.on_trial_end is not None and fits and model is not None:
            self.on_trial_end(trial, fits, model)
