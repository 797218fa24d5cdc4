"""The precision policy: whether a model trains under bf16 autocast or in float32, and why.

bf16 is used only where it is verified on the machine at hand. On some CPUs with native bf16 (measured
on a 2-core AMD EPYC with AVX512-BF16 and no AMX, torch 2.13.0, oneDNN 3.12) the bf16 convolution
backward pass returns wrong weight gradients at some feature-map shapes: where a padded kernel is
deeper than the map but the map is more than one voxel deep (depth 2 for 3x3x3 kernels, 2 to 4 for
5x5x5), the weight gradient is 80-100% off float32 or not finite, and differs from run to run; at the
other depths it is repeatable and within 1% of float32. The seed baseline meets it at a 16x32x32 input
(its last level runs at 2x4x4). ``benchmarks/bf16_fault.py`` reproduces it. So on such a CPU a bf16
request goes through :func:`probe_bf16`, which checks the actual model at the actual input shape and
keeps bf16 only if its gradients are finite, bitwise repeatable and, layer by layer, close to float32.
The verdict is cached per process, so the cross-validation folds of one spec pay for it once.

``LUNGCT_PRECISION`` (``float32``, ``bf16`` or ``auto``, read at each call) pins the choice for tests
and users; ``auto`` (the default) is the policy above.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import platform
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lungct.errors import UsageError

PRECISION_ENV = "LUNGCT_PRECISION"
PRECISION_CHOICES = ("auto", "float32", "bf16")
# bf16 training steps of the whole model. At the fault report's Conv3d(128, 256) at 2x4x4 the second step
# differed bitwise from the first in 239 of 240 trials (fresh processes and warm ones) and the third in
# the last one. The layer check below catches the fault on its own as well: each of 1600 faulty runs was
# at least 97% off float32.
PROBE_REPEATS = 3
# The largest relative error ||g_bf16 - g_fp32|| / ||g_fp32|| of a layer's gradient that counts as close.
# Over 1081 layer checks in 120 sampled specs (inputs 16x24x20 to 32x64x64, batch 2 to 8) the sound
# ones gave at most 0.97% (median 0.30%), the faulty ones at least 89%: 5% sits 5x above the one and
# 18x below the other. The 17 specs with a 3-deep kernel at depth 2 were flagged, and no other.
PROBE_RTOL = 0.05
# The layers whose gradients are checked against float32: those that CPU autocast runs in bf16.
BF16_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
               nn.Linear)
PROBE_SEED = 0

_cache: dict[str, Precision] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Precision:
    """A resolved precision.

    Attributes:
        amp: Train (and evaluate) under bf16 autocast; False means float32.
        reason: A short phrase saying why, e.g. "float32: bf16 gradients not repeatable on this CPU at
            this model's shapes".
    """

    amp: bool
    reason: str

    @property
    def name(self) -> str:
        """``bf16`` or ``float32``."""
        return "bf16" if self.amp else "float32"


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`probe_bf16` measured.

    Attributes:
        finite: Every parameter gradient of every bf16 training step was finite.
        repeatable: Every bf16 training step gave bitwise the same parameter gradients as the first.
        max_rel_error: The worst relative error, against float32, of a bf16 layer's gradients at its
            input shape in the model (inf when not finite).
        worst: Where that error was: layer, gradient and input shape.
        repeats: bf16 training steps made.
        layers: (layer, input shape) pairs checked against float32.
        seconds: Wall time of the probe.
    """

    finite: bool
    repeatable: bool
    max_rel_error: float
    worst: str
    repeats: int
    layers: int
    seconds: float

    def verdict(self, rtol: float = PROBE_RTOL) -> Precision:
        """bf16 when the gradients were finite, repeatable and within ``rtol`` of float32, else float32."""
        if not self.finite:
            return Precision(False, "float32: bf16 gradients not finite on this CPU at this model's shapes")
        if not self.repeatable:
            return Precision(False, "float32: bf16 gradients not repeatable on this CPU at this model's shapes")
        if not self.max_rel_error <= rtol:
            return Precision(False, f"float32: bf16 gradients {self.max_rel_error:.0%} off float32 on this CPU "
                                    f"at this model's shapes (limit {rtol:.0%})")
        return Precision(True, f"bf16: gradients repeatable, layers within {self.max_rel_error:.1%} of float32 "
                               f"at this model's shapes")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (AVX512-BF16 or AMX), where bf16 autocast pays.

    Measured here (2-core Xeon with AMX): a baseline training step at 32x64x64 took 65 ms/sample with
    bf16 autocast against 97 ms/sample in float32, both channels-last. Native bf16 says the work is fast,
    not that it is right: :func:`choose_precision` still probes each model.
    """
    if platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    return kernels_use_bf16(torch.backends.cpu.get_cpu_capability(),
                            os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"))


def kernels_use_bf16(capability: str, onednn_isa: str | None) -> bool:
    """Whether torch's and oneDNN's kernels may use the CPU's bf16 instructions.

    ``ATEN_CPU_CAPABILITY`` (seen in ``capability``, e.g. ``AVX2``) or ``ONEDNN_MAX_CPU_ISA`` capped below
    AVX512_CORE_BF16 (how an AVX2-only CPU is emulated on a newer one) leave the flags in /proc/cpuinfo but
    run bf16 in software: a test study's fixtures took 12-24x as long as in float32 (benchmarks/RESULTS.md,
    "Test suite"). So the policy trains in float32 there, as on the CPU being emulated.
    """
    if not capability.upper().startswith("AVX512"):
        return False
    isa = (onednn_isa or "ALL").strip().upper()
    return isa in ("", "ALL") or any(part in isa for part in ("BF16", "AMX", "FP16", "AVX10"))


def cpu_model() -> str:
    """The CPU's model name and its bf16 units, for benchmark figures (which must name the CPU they ran on)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    have = set(flags.group(1).split()) if flags else set()
    extras = [f for f in ("amx_bf16", "avx512_bf16") if f in have]
    return f"{name.group(1) if name else 'unknown CPU'} ({', '.join(extras) or 'no bf16 units'}; AMX: " \
           f"{'yes' if 'amx_bf16' in have else 'no'})"


def forced_precision() -> str:
    """The value of ``LUNGCT_PRECISION``: ``auto`` (also when unset or empty), ``float32`` or ``bf16``.

    Raises:
        ValueError: The variable holds anything else.
    """
    value = os.environ.get(PRECISION_ENV, "").strip().lower() or "auto"
    if value not in PRECISION_CHOICES:
        raise UsageError(f"{PRECISION_ENV}: expected one of {', '.join(PRECISION_CHOICES)}, got {value!r}")
    return value


def device_precision(device: torch.device) -> Precision:
    """What ``device`` allows before a model is seen: ``amp`` True means bf16 may be used.

    On a CPU with native bf16 under ``auto`` that is a permission, not a promise: each model is probed by
    :func:`choose_precision`. The reason is the phrase a fidelity line prints.
    """
    forced = forced_precision()
    if forced != "auto":
        return Precision(forced == "bf16", f"{'bf16 autocast' if forced == 'bf16' else 'float32'} "
                                           f"(forced by {PRECISION_ENV}={forced})")
    if device.type == "cuda":
        return Precision(True, "bf16 autocast")
    if cpu_has_fast_bf16():
        return Precision(True, "bf16 autocast where a per-model probe finds it repeatable and close to float32, "
                               "else float32")
    return Precision(False, "float32 (no native bf16 on this CPU)")


def choose_precision(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> Precision:
    """The precision to train ``model`` in at input ``input_shape`` (B, 1, D, H, W) on ``device``.

    ``LUNGCT_PRECISION=float32|bf16`` wins. Under ``auto``: bf16 on CUDA, unprobed, since cuDNN's
    default gradient kernels need not be bitwise repeatable, so the repeat check would reject sound
    kernels there; float32 on a CPU without native bf16; otherwise the cached verdict of
    :func:`probe_bf16`. The caller's model and random state are left untouched.

    Raises:
        ValueError: ``LUNGCT_PRECISION`` holds an unknown value, or ``input_shape`` is not 5-D.
    """
    forced = forced_precision()
    if forced == "float32":
        return Precision(False, f"float32: forced by {PRECISION_ENV}=float32")
    if forced == "bf16":
        return Precision(True, f"bf16: forced by {PRECISION_ENV}=bf16")
    if device.type == "cuda":
        return Precision(True, "bf16: CUDA autocast")
    if device.type != "cpu":
        return Precision(False, f"float32: bf16 not verified on {device.type}")
    if not cpu_has_fast_bf16():
        return Precision(False, "float32: no native bf16 on this CPU")
    key = probe_key(model, input_shape, device)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    # Outside the lock, so one thread's probe does not hold up another's cache hit; two threads probing
    # the same new spec at once only repeat the work.
    verdict = probe_bf16(model, input_shape, device).verdict()
    with _cache_lock:
        _cache[key] = verdict
    return verdict


def clear_precision_cache() -> None:
    """Forget every cached probe verdict, e.g. between tests."""
    with _cache_lock:
        _cache.clear()


def probe_key(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> str:
    """The cache key of a probe: the module tree, parameter and buffer shapes, input shape, device, threads.

    The thread count is part of it because oneDNN picks its kernels and their work split by thread count.
    """
    parts = (
        repr(model),
        [(name, tuple(p.shape), str(p.dtype), p.requires_grad) for name, p in model.named_parameters()],
        [(name, tuple(b.shape), str(b.dtype)) for name, b in model.named_buffers()],
        tuple(int(n) for n in input_shape), device.type, torch.get_num_threads(),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def probe_bf16(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
               repeats: int = PROBE_REPEATS, seed: int = PROBE_SEED) -> ProbeResult:
    """Check bf16 autocast on a copy of ``model`` at ``input_shape``: repeatable, finite, close to float32.

    Two checks, because a whole model's gradient is no yardstick for closeness: in float32 alone, a
    0.1% nudge to the input moved the gradient of sampled specs (batch or instance norm over small maps,
    batch 2) by up to 147%, and bf16 moved it as much at shapes where every layer is sound.

    1. The whole model trains one step ``repeats`` times under bf16 autocast, in training mode and
       channels-last as :func:`search.training.loop.fit` trains, on a seeded uniform [0, 1] input with binary
       cross-entropy against alternating labels, each run reseeding a forked random state so dropout
       draws the same mask. Its parameter gradients must be finite and bitwise the same every time.
    2. Each layer that autocast runs in bf16 (convolutions, linear layers) is checked on its own at
       every input shape it saw in step 1: the gradients of its weight, bias and (where the model needs
       it) input, for a seeded Gaussian input and a positive output gradient, in bf16 against float32.

    Nothing is cached here; the caller's model and random state are untouched.

    Raises:
        ValueError: ``input_shape`` is not 5-D, or ``repeats`` is below 2.
    """
    if len(input_shape) != 5:
        raise ValueError(f"input_shape: expected (B, C, D, H, W), got {tuple(input_shape)}")
    if repeats < 2:
        raise ValueError(f"repeats: at least 2 bf16 runs are needed to see whether they repeat, got {repeats}")
    start = time.perf_counter()
    probe_model = copy.deepcopy(model).to(device)
    # torch's stubs leave out Module.to's memory_format keyword, which it takes.
    probe_model = probe_model.to(memory_format=torch.channels_last_3d).train()  # type: ignore[call-overload]
    x = torch.rand(tuple(input_shape), generator=torch.Generator().manual_seed(seed)).to(device)  # (B, 1, D, H, W)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    seen: dict[tuple[str, tuple[int, ...]], bool] = {}  # (layer, input shape) -> whether its input needs a gradient
    hooks = [module.register_forward_pre_hook(_recorder(name, seen))
             for name, module in probe_model.named_modules() if isinstance(module, BF16_LAYERS)]
    with torch.enable_grad():
        try:
            runs = [gradients(probe_model, x, amp=True, seed=seed)]
        finally:
            for hook in hooks:
                hook.remove()
        runs += [gradients(probe_model, x, amp=True, seed=seed) for _ in range(repeats - 1)]
        layers = dict(probe_model.named_modules())
        checked: dict[tuple[str, tuple[int, ...], bool], tuple[float, str]] = {}
        errors = []
        for (name, shape), needs_input_grad in seen.items():
            # Layers of one configuration at one shape run the same kernels: check them once.
            same = (repr(layers[name]), shape, needs_input_grad)
            if same not in checked:
                checked[same] = layer_error(layers[name], shape, needs_input_grad, seed)
                errors.append((checked[same], f"{name} at {shape}"))
    finite = all(bool(torch.isfinite(g).all()) for grads in runs for g in grads.values())
    repeatable = all(run.keys() == runs[0].keys() and all(torch.equal(run[k], runs[0][k]) for k in run)
                     for run in runs[1:])
    (error, which), where = max(errors, key=lambda e: _sortable(e[0][0]), default=((0.0, ""), ""))
    worst = f"{which} of {where}" if where else ""
    return ProbeResult(finite, repeatable, error, worst, repeats, len(errors), time.perf_counter() - start)


def _recorder(name: str, seen: dict[tuple[str, tuple[int, ...]], bool]):
    def record(module: nn.Module, args: tuple) -> None:
        key = (name, tuple(args[0].shape))
        seen[key] = seen.get(key, False) or args[0].requires_grad
    return record


def _sortable(error: float) -> float:
    return math.inf if math.isnan(error) else error


def gradients(model: nn.Module, x: torch.Tensor, amp: bool, seed: int) -> dict[str, torch.Tensor]:
    """Parameter gradients of one training step of ``model`` on ``x``, in bf16 autocast or float32."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        logits = logits.float()
        target = (torch.arange(logits.numel(), device=logits.device) % 2).float().reshape(logits.shape)
        F.binary_cross_entropy_with_logits(logits, target).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def layer_error(layer: nn.Module, input_shape: tuple[int, ...], needs_input_grad: bool,
                seed: int) -> tuple[float, str]:
    """The worst relative error of ``layer``'s bf16 gradients against float32 at ``input_shape``, and which.

    The input is seeded Gaussian, the output gradient seeded uniform in [0.5, 1.5]. Each gradient (of
    ``weight``, ``bias`` and, when ``needs_input_grad``, ``input``) is compared as
    ``||g_bf16 - g_fp32|| / ||g_fp32||`` in float64; a non-finite one counts as inf. The forward pass is
    not compared: a single-output layer's outputs are sums that cancel, so their relative error is
    noise (up to 2.5% at sound shapes), and the fault is in the backward pass (forward within 0.3% of
    float32 at every shape measured, faulty ones included).
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(layer.parameters()).device
    x = torch.randn(input_shape, generator=generator).to(device)
    if x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    grad_out: list[torch.Tensor] = []

    def run(amp: bool) -> dict[str, torch.Tensor]:
        xi = x.detach().clone().requires_grad_(needs_input_grad)
        layer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            y = layer(xi)
        if not grad_out:  # one output gradient for both runs, drawn once the output's shape is known
            # Positive, so a bias gradient (its sum over batch and voxels) cannot cancel to ~0 and turn
            # bf16's rounding of each term into a large relative error, as a Gaussian one did at batch 2.
            g = (0.5 + torch.rand(y.shape, generator=generator)).to(device)
            # Channels-last, as the gradient arrives in training: the layout picks oneDNN's kernel.
            grad_out.append(g.contiguous(memory_format=torch.channels_last_3d) if g.dim() == 5 else g)
        y.float().backward(grad_out[0])
        grads = {name: p.grad.detach().double() for name, p in layer.named_parameters(recurse=False)
                 if p.grad is not None}
        if needs_input_grad:
            assert xi.grad is not None  # backward filled it: xi requires a gradient
            grads["input"] = xi.grad.detach().double()
        layer.zero_grad(set_to_none=True)
        return grads

    reference = run(amp=False)
    low = run(amp=True)
    worst, which = 0.0, ""
    for name, ref in reference.items():
        if not bool(torch.isfinite(low[name]).all()):
            return math.inf, name
        scale = float(ref.norm())
        diff = float((low[name] - ref).norm())
        error = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        if error > worst or not which:
            worst, which = error, name
    return worst, which
