"""The training loop shared by the search, export and ablation: fit a model, evaluate it each epoch.

Tensors arrive once, in memory, as float16 (N, 1, D, H, W) volumes in [0, 1]; nothing here reads files.
On CUDA the training set moves to the GPU once when it fits, batches are augmented there, and the
forward pass runs under bf16 autocast; on the CPU the batches stay where they are, and a bf16 request
trains in bf16 only where ``search.training.precision`` verifies it for the model at hand. Both use the
channels-last 3D memory layout. Randomness (initial weights, shuffling, augmentation, dropout) all
flows from the ``seed`` argument.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lungct.augment import AugmentConfig, augment_batch
from lungct.errors import UsageError
from search.stats.metrics import BinaryMetrics, OrdinalMetrics, task_metrics
from search.training.data import Tensors  # the data code's type; imported from here by older callers
from search.training.precision import Precision, choose_precision
from space.spec import check_choice

DEFAULT_AUGMENT = AugmentConfig()


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"non-finite training loss ({value}) at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


class TrainingOutOfMemory(RuntimeError):
    """Training ran out of memory (GPU or CPU); the message names the device and the original error type."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure, on the GPU or the CPU."""
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def device_name(device: torch.device) -> str:
    """``cpu`` or the GPU's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@dataclass(frozen=True)
class EpochResult:
    """One epoch: mean training loss, validation metrics (None without a validation set), seconds."""

    epoch: int
    train_loss: float
    val: BinaryMetrics | OrdinalMetrics | None
    seconds: float


@dataclass
class FitResult:
    """What training produced.

    Attributes:
        history: One entry per epoch run.
        best_epoch: 1-based epoch with the best validation AUC (the last epoch without validation); the
            ablation reports it for reference only, as every score is the last epoch's.
        best_auc: That AUC (NaN without validation).
        train_seconds: Wall time of the training steps (validation excluded).
        data_seconds: The part of it spent making batches (gathering, casting, augmenting): on the CPU
            the time a step waits for its data; on a GPU only the host's share (kernels run async).
        precision: What training and its validation ran in: ``bf16`` (autocast) or ``float32``.
        precision_reason: Why, e.g. "float32: bf16 gradients not repeatable on this CPU at this model's
            shapes".
    """

    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    best_auc: float = math.nan
    train_seconds: float = 0.0
    data_seconds: float = 0.0
    precision: str = "float32"
    precision_reason: str = ""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU raises ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device: --device cuda was asked for, but torch sees no CUDA GPU")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


# Each optimiser a spec may name (space.spec.OPTIMIZERS) and how it is made: (parameters, lr, weight decay).
OPTIMIZER_TABLE: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
}


def make_optimizer(params, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum 0.9) by name; an unknown name raises ValueError naming the nearest."""
    return OPTIMIZER_TABLE[check_choice("make_optimizer", "name", name, OPTIMIZER_TABLE)](params, lr, weight_decay)


def place(data: Tensors, device: torch.device) -> Tensors:
    """The set on ``device`` when it is a GPU with room to spare, else unchanged (batches move later)."""
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    need = data.volumes.element_size() * data.volumes.nelement()
    if need > free // 3:
        return data
    return Tensors(data.volumes.to(device, non_blocking=True), data.labels.to(device, non_blocking=True))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse rather than give it back to the kernel; whether it agreed.

    A CPU training step allocates and frees the same large activations every step. glibc serves every
    block over 32 MB with its own mmap and unmaps it on free, so each step paid the kernel to fault in
    and zero those pages again: at the seed's 64x128x128, 272 against 158 ms per sample, and 42 against
    28 at 32x64x64 (benchmarks/RESULTS.md; PyTorch's CPU tuning guides reach the same end by preloading
    jemalloc or tcmalloc). With mmap off and no trimming, freed blocks are reused from the heap; the
    process keeps its peak memory until it exits, which a training process reaches anyway. A no-op (False)
    off Linux or without glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _to_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    batch = batch.to(device, non_blocking=True).float()
    return batch.contiguous(memory_format=torch.channels_last_3d)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


@torch.inference_mode()
def predict_probs(model: nn.Module, volumes: torch.Tensor, device: torch.device, batch_size: int = 8,
                  amp: bool | None = None) -> np.ndarray:
    """Sigmoid probabilities of a model over (N, 1, D, H, W) volumes, in eval mode, without augmentation.

    (N,) P(label 1) for a binary model; (N, K-1) cumulative P(grade >= k) for an ordinal one.
    """
    amp = device.type == "cuda" if amp is None else amp
    model.eval()
    out = []
    for start in range(0, volumes.shape[0], batch_size):
        x = _to_input(volumes[start:start + batch_size], device)
        with _autocast(device, amp):
            logits = model(x)
        if logits.ndim != 2:
            logits = logits.reshape(-1)
        out.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of (B,) logits against 0/1 labels; for (B, K-1) cumulative logits, CORAL's loss.

    The ordinal loss sums the binary cross-entropies of the K-1 "grade >= k" targets per scan (Cao et al.
    2020), then averages over the batch: at K = 2 it is the binary loss, and each threshold's gradient
    has the binary task's scale at any K.
    """
    logits = logits.float()
    if logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits, labels)
    thresholds = torch.arange(1, logits.shape[1] + 1, device=logits.device, dtype=labels.dtype)
    targets = (labels.reshape(-1, 1) >= thresholds).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1).mean()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Tensors, device: torch.device, batch_size: int = 2) -> bool:
    """Recompute every batch-norm layer's running statistics over ``data`` (unaugmented, float32).

    During training the running mean and variance are exponential averages (Keras's momentum 0.99, so
    about the last 100 steps), taken while the weights were still moving; in eval mode they can lag the
    final weights enough to shift every probability. Measured on an exported 64-64-128 net: accuracy at
    threshold 0.5 rose from 0.50 (sensitivity 0.00) to 0.875 on its 24 test scans once the statistics
    were recomputed over its training scans; the seed baseline's barely moved. Uses
    ``torch.optim.swa_utils.update_bn`` (a cumulative average over one pass). Returns whether the model
    has batch norm at all; the model is left in eval mode on ``device``.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    model.to(device)
    # At the training batch size, whose batch statistics training normalised with; a last batch of one is left
    # out, as in training (batch norm cannot normalise one sample where a feature map is down to one voxel).
    n = len(data) - (1 if len(data) % batch_size == 1 and len(data) > 1 else 0)
    batches = (_to_input(data.volumes[i:i + batch_size], device) for i in range(0, n, batch_size))
    torch.optim.swa_utils.update_bn(batches, model, device=None)
    model.eval()
    return True


def fit(
    model: nn.Module,
    data: Tensors,
    val: Tensors | None,
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    device: torch.device,
    seed: int,
    augment: AugmentConfig | None = DEFAULT_AUGMENT,
    amp: bool | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> FitResult:
    """Train ``model`` for ``epochs`` epochs on ``data``, evaluating ROC AUC on ``val`` after each.

    Args:
        model: A freshly built model (its initial weights should come from ``seed``).
        data: Training set; shuffled each epoch, augmented when ``augment`` is given.
        val: Validation set, never augmented; None trains without evaluating (best = last epoch).
        optimizer, lr, weight_decay, batch_size: From the trial's training spec.
        epochs: Epochs to run unless ``on_epoch`` stops it (e.g. by raising ``optuna.TrialPruned``).
        device: Where to train.
        seed: Seeds shuffling and augmentation.
        augment: Training augmentation; None turns it off.
        amp: Whether bf16 autocast is wanted; default on for CUDA, off for the CPU. A request is resolved
            by :func:`search.training.precision.choose_precision` for this model at the training batch shape
            (``LUNGCT_PRECISION`` can pin it; on a CPU it is probed), and validation follows the result,
            which ``FitResult.precision`` records.
        on_epoch: Called after each epoch with its result; an exception it raises propagates.

    Raises:
        NonFiniteLossError: A training loss was NaN or infinite.
        TrainingOutOfMemory: The GPU or the CPU ran out of memory (the GPU cache is freed first), so
            every caller handles one typed error instead of parsing RuntimeError messages.
        ValueError: ``LUNGCT_PRECISION`` holds an unknown value.
    """
    amp = device.type == "cuda" if amp is None else amp
    try:
        if amp:
            # A full training batch's shape, so the probe checks the kernels training runs; a shorter last
            # batch is not probed apart, as the CPU fault measured the same at batch sizes 1 to 8.
            shape = (min(batch_size, max(len(data), 1)), *data.volumes.shape[1:])
            precision = choose_precision(model, shape, device)
        else:
            precision = Precision(False, "float32: bf16 not requested")
        return _train(model, data, val, optimizer, lr, weight_decay, batch_size, epochs, device, seed, augment,
                      precision, on_epoch)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        kind = type(e).__name__
    # Outside the except block, so the traceback no longer pins the failed step's tensors.
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise TrainingOutOfMemory(f"out of memory on {device_name(device)} ({kind})")


def _train(model: nn.Module, data: Tensors, val: Tensors | None, optimizer: str, lr: float, weight_decay: float,
           batch_size: int, epochs: int, device: torch.device, seed: int, augment: AugmentConfig | None,
           precision: Precision, on_epoch: Callable[[EpochResult], None] | None) -> FitResult:
    """The epoch loop of :func:`fit`, in the resolved ``precision``."""
    amp = precision.amp
    if device.type == "cpu":
        keep_freed_memory()
    # torch's stubs leave out Module.to's memory_format keyword, which it takes.
    model = model.to(device).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    data = place(data, device)
    generator = torch.Generator().manual_seed(seed)
    result = FitResult(precision=precision.name, precision_reason=precision.reason)
    n = len(data)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        # A last batch of one breaks batch norm wherever a feature map is down to one voxel.
        if n % batch_size == 1 and n > 1:
            order = order[:-1]
        total, seen = 0.0, 0
        for step, begin in enumerate(range(0, len(order), batch_size), start=1):
            fetch = time.perf_counter()
            rows = order[begin:begin + batch_size].to(data.volumes.device)
            x = _to_input(data.volumes[rows], device)
            y = data.labels[rows].to(device).float()
            if augment is not None:
                x = augment_batch(x, generator, augment).contiguous(memory_format=torch.channels_last_3d)
            result.data_seconds += time.perf_counter() - fetch
            with _autocast(device, amp):
                logits = model(x)
            loss = task_loss(logits if logits.ndim == 2 else logits.reshape(-1), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(epoch, step, value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += value * len(rows)
            seen += len(rows)
        train_time = time.perf_counter() - start
        result.train_seconds += train_time
        metrics = None
        if val is not None:
            probs = predict_probs(model, val.volumes, device, batch_size=max(2 * batch_size, 8), amp=amp)
            metrics = task_metrics(val.labels.cpu().numpy(), probs)
        entry = EpochResult(epoch, total / max(seen, 1), metrics, time.perf_counter() - start)
        result.history.append(entry)
        # Without validation the best epoch is the last; with it, the first epoch of the highest AUC.
        if metrics is None:
            improved = True
        else:
            improved = math.isfinite(metrics.auc) and (math.isnan(result.best_auc) or metrics.auc > result.best_auc)
        if improved or not result.best_epoch:
            result.best_epoch = epoch
            result.best_auc = metrics.auc if metrics is not None else math.nan
        if on_epoch is not None:
            on_epoch(entry)
    return result
