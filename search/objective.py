"""The trial objective: sample a spec, train it, report validation AUC each epoch, prune, record costs.

An :class:`Objective` holds the data (loaded once in ``main``) and is called once per trial. It never
reads files. Known failures are caught by type and recorded on the trial as a reason:

- a spec that cannot run at the input size is pruned before training (``prune_reason``);
- a non-finite training loss prunes the trial (``prune_reason``);
- running out of memory fails the trial (``fail_reason``), frees memory, and the study goes on.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import torch

from search.study import BASELINE_ATTR
from search.train import (
    EpochResult,
    FitResult,
    NonFiniteLossError,
    Tensors,
    TrainingOutOfMemory,
    device_name,
    fit,
    place,
)
from space import SpaceBounds, SpecInputError, build, check_input_size, cost, fit_to_size, sample


class TrialFailed(Exception):
    """A trial failed for a known reason (recorded as its ``fail_reason``); the study goes on."""


@dataclass(frozen=True)
class SearchSettings:
    """What every trial of a run shares.

    Attributes:
        size: Input (D, H, W).
        epochs: Maximum epochs per trial (pruning may stop a trial earlier).
        device: Where to train.
        seed: Base seed; trial ``n`` initialises and shuffles with ``seed + n``.
        amp: bf16 autocast.
        objectives: ``("auc",)`` or ``("auc", "params")`` / ``("auc", "flops")``.
        bounds: The search space.
        max_gflops: Prune, untrained, any spec costing more forward GFLOPs per sample (None: no cap).
    """

    size: tuple[int, int, int]
    epochs: int
    device: torch.device
    seed: int = 0
    amp: bool = False
    objectives: tuple[str, ...] = ("auc",)
    bounds: SpaceBounds = field(default_factory=SpaceBounds)
    max_gflops: float | None = None


class Objective:
    """The callable passed to ``study.optimize``.

    Args:
        train: Training set (augmented during training).
        val: Validation set (its AUC is the trial's value).
        settings: Size, epochs, device, seeds, objectives.
        on_epoch: Called after each epoch of each trial (for progress display).
        on_trial_end: Called with the trial, the fitted result and the built model after a trial
            that trained (completed or pruned), e.g. to store artifacts.
    """

    def __init__(self, train: Tensors, val: Tensors, settings: SearchSettings,
                 on_epoch: Callable[[optuna.Trial, EpochResult], None] | None = None,
                 on_trial_end: Callable[[optuna.Trial, FitResult, torch.nn.Module], None] | None = None):
        self.settings = settings
        self.train = place(train, settings.device)
        self.val = place(val, settings.device)
        self.on_epoch = on_epoch
        self.on_trial_end = on_trial_end
        self.running: int | None = None  # the trial number in progress, for cleanup after Ctrl-C

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.running = trial.number
        try:
            value = self._run(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            raise
        self.running = None
        return value

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        s = self.settings
        arch, train_spec = sample(trial, s.bounds)
        if trial.user_attrs.get(BASELINE_ATTR):
            try:
                arch, note = fit_to_size(arch, s.size)
            except SpecInputError as e:
                self._prune(trial, f"invalid at input {'x'.join(map(str, s.size))}: {e}")
            if note:
                trial.set_user_attr("padding_fallback", note)
        try:
            check_input_size(arch, s.size)
        except SpecInputError as e:
            self._prune(trial, f"invalid at input {'x'.join(map(str, s.size))}: {e}")
        spec_cost = cost(arch, s.size)
        trial.set_user_attr("spec", arch.to_dict())
        trial.set_user_attr("train_spec", train_spec.to_dict())
        trial.set_user_attr("params", spec_cost.params)
        trial.set_user_attr("keras_params", spec_cost.keras_params)
        trial.set_user_attr("gflops", spec_cost.gflops)
        trial.set_user_attr("device", device_name(s.device))
        trial.set_user_attr("amp_bf16", s.amp)
        if s.max_gflops is not None and spec_cost.gflops > s.max_gflops and not trial.user_attrs.get(BASELINE_ATTR):
            self._prune(trial, f"too costly for this fidelity: {spec_cost.gflops:.1f} GFLOPs/sample, above the cap "
                               f"of {s.max_gflops:g} (--max-gflops)")

        torch.manual_seed(s.seed + trial.number)
        model = build(arch)
        history: list[EpochResult] = []
        single = len(s.objectives) == 1

        def on_epoch(result: EpochResult) -> None:
            history.append(result)
            if self.on_epoch is not None:
                self.on_epoch(trial, result)
            if single:
                trial.report(result.val.auc, result.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {result.epoch} (val AUC {result.val.auc:.3f})")

        start = time.perf_counter()
        fitted: FitResult | None = None
        try:
            fitted = fit(model, self.train, self.val, optimizer=train_spec.optimizer, lr=train_spec.lr,
                         weight_decay=train_spec.weight_decay, batch_size=train_spec.batch_size,
                         epochs=s.epochs, device=s.device, seed=s.seed + trial.number, amp=s.amp,
                         on_epoch=on_epoch)
        except optuna.TrialPruned as e:
            self._record(trial, history, start)
            trial.set_user_attr("prune_reason", str(e))
            self._finish(trial, history, model)
            raise
        except NonFiniteLossError as e:
            self._record(trial, history, start)
            self._cleanup(model)
            self._prune(trial, str(e))
        except TrainingOutOfMemory as e:
            trial.set_user_attr("fail_reason", str(e))
            self._cleanup(model)
            raise TrialFailed(str(e)) from None
        self._record(trial, history, start)
        self._finish(trial, history, model, fitted)
        best = fitted.best_auc
        if not single:
            return best, float(spec_cost.params if s.objectives[1] == "params" else spec_cost.gflops)
        return best

    def _prune(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(reason)

    def _record(self, trial: optuna.Trial, history: list[EpochResult], start: float) -> None:
        trial.set_user_attr("epochs_run", len(history))
        trial.set_user_attr("wall_seconds", round(time.perf_counter() - start, 2))
        if not history:
            return
        train_s = sum(h.seconds for h in history)
        trial.set_user_attr("train_loss", [round(h.train_loss, 5) for h in history])
        trial.set_user_attr("val_auc", [round(h.val.auc, 5) for h in history])
        best = max(history, key=lambda h: (h.val.auc if math.isfinite(h.val.auc) else -1.0, -h.epoch))
        trial.set_user_attr("best_epoch", best.epoch)
        trial.set_user_attr("val_accuracy", best.val.accuracy)
        trial.set_user_attr("val_sensitivity", best.val.sensitivity)
        trial.set_user_attr("val_specificity", best.val.specificity)
        trial.set_user_attr("epoch_seconds", round(train_s / len(history), 3))
        trial.set_user_attr("train_seconds", round(train_s, 2))
        trial.set_user_attr("samples_per_s", round(len(self.train) * len(history) / max(train_s, 1e-9), 2))

    def _finish(self, trial: optuna.Trial, history: list[EpochResult], model: torch.nn.Module,
                fitted: FitResult | None = None) -> None:
        if self.on_trial_end is not None and history:
            self.on_trial_end(trial, fitted or FitResult(history=history), model)
        self._cleanup(model)

    def _cleanup(self, model: torch.nn.Module) -> None:
        model.to("cpu")  # release the GPU copy of the weights even while a caller still holds the module
        gc.collect()
        if self.settings.device.type == "cuda":
            torch.cuda.empty_cache()
