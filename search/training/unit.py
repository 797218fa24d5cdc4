"""One training unit: build a spec, train it with its `TrainSpec`, map known failures one way.

The search's objective, the confirmation stage, the ablation and export all train through
:func:`train_model`, so they seed, clean up and report failures alike:

- a non-finite training loss raises :class:`TrainingFailed` with ``kind == NON_FINITE``;
- running out of memory (GPU or CPU) raises it with ``kind == OUT_OF_MEMORY``;

the trial runners map it one way (``search.study.trial_run``: a pruned or a failed trial), export to a one-line
error.
The model's GPU memory is released whatever happens.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from search.stats.intervals import grade_auc_rows, stratified_resamples
from search.stats.metrics import severity_score
from search.training.data import Tensors
from search.training.loop import EpochResult, FitResult, NonFiniteLossError, TrainingOutOfMemory, fit, predict_probs
from space import ArchSpec, TrainSpec, build

SE_RESAMPLES = 500  # bootstrap resamples for a fold AUC's standard error; ample for a standard error
NON_FINITE = "non_finite"
OUT_OF_MEMORY = "out_of_memory"


class TrainingFailed(RuntimeError):
    """Training could not finish for a known reason.

    Attributes:
        kind: :data:`NON_FINITE` (the loss became NaN or infinite) or :data:`OUT_OF_MEMORY`.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):
        # Both arguments, so the failure crosses a process boundary (the confirmation's parallel runs) whole.
        return (type(self), (self.kind, str(self)))


@dataclass
class Trained:
    """A trained model and what training produced."""

    model: torch.nn.Module
    fitted: FitResult


def train_model(
    arch: ArchSpec,
    train_spec: TrainSpec,
    data: Tensors,
    val: Tensors | None,
    *,
    epochs: int,
    device: torch.device,
    seed: int,
    amp: bool | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    grades: int = 2,
) -> Trained:
    """Build ``arch`` from ``seed`` and train it on ``data`` for ``epochs`` epochs.

    Args:
        arch: What to build.
        train_spec: Optimiser, learning rate, weight decay, batch size.
        data: Training set (augmented).
        val: Scored after every epoch when given.
        epochs: Epochs to train (``on_epoch`` may stop earlier by raising, e.g. ``optuna.TrialPruned``).
        device: Where to train.
        seed: Seeds the initial weights, shuffling and augmentation.
        amp: bf16 autocast requested (see ``search.training.loop.fit``).
        on_epoch: Called after every epoch; what it raises propagates after the model is released.
        grades: The task's labels: 2 (binary), or K > 2 for an ordinal head (``space.build``).

    Returns:
        The model (on the CPU, in eval mode) and the fit result.

    Raises:
        TrainingFailed: Non-finite loss or out of memory.
    """
    torch.manual_seed(seed)
    model = build(arch, grades=grades)
    ok = False
    try:
        fitted = fit(model, data, val, optimizer=train_spec.optimizer, lr=train_spec.lr,
                     weight_decay=train_spec.weight_decay, batch_size=train_spec.batch_size, epochs=epochs,
                     device=device, seed=seed, amp=amp, on_epoch=on_epoch)
        ok = True
    except NonFiniteLossError as e:
        raise TrainingFailed(NON_FINITE, str(e)) from None
    except TrainingOutOfMemory as e:
        raise TrainingFailed(OUT_OF_MEMORY, str(e)) from None
    finally:
        model.to("cpu")  # release the GPU copy even while a caller still holds the module
        if not ok:
            gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return Trained(model.eval(), fitted)




def predict_finite(trained: Trained, volumes: torch.Tensor, device: torch.device, amp: bool = False) -> np.ndarray:
    """Probabilities of a trained model, in the precision it trained in.

    Raises:
        TrainingFailed: ``kind == NON_FINITE`` when a probability is NaN: weights that went non-finite
            in the last steps give no loss to catch, only predictions that no score can be computed on.
    """
    bf16 = amp and trained.fitted.precision == "bf16"
    # train_model hands the model back on the CPU; score it where it trained, then release the device copy.
    try:
        probs = predict_probs(trained.model.to(device), volumes, device, amp=bf16)
    finally:
        trained.model.to("cpu")
    if not np.all(np.isfinite(probs)):
        raise TrainingFailed(NON_FINITE, f"non-finite predictions ({int(np.sum(~np.isfinite(probs)))} of "
                                           f"{probs.size} validation scans) after training")
    return probs


def auc_standard_error(labels: np.ndarray, probs: np.ndarray, seed: int = 0,
                       n_resamples: int = SE_RESAMPLES) -> float:
    """Standard error of a ROC AUC over the scans it was measured on (stratified bootstrap).

    For an ordinal model's (N, K-1) probabilities, of the mean "grade >= k" AUC.

    It measures how much the AUC would move with another draw of scans of the same kind: the noise
    that decides whether two trials' scores differ at all.
    """
    labels = np.asarray(labels).astype(int).ravel()
    if np.unique(labels).size < 2:
        return float("nan")
    rows = stratified_resamples(labels, n_resamples, seed)
    values = grade_auc_rows(labels[rows], severity_score(probs)[rows])
    values = values[np.isfinite(values)]
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
