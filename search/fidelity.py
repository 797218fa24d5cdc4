"""Default fidelity (input size, epochs, phantom count) and precision for the device a run uses.

On a GPU the default is the seed's own setting: 64x128x128 voxels. On a laptop-class CPU that would
take hours per trial, so the CPU default is sized so that ``--trials 50`` finishes in about half an
hour on 2 cores (measured figures: benchmarks/RESULTS.md). Explicit ``--size``/``--epochs`` win.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from space import baseline, cost, fit_to_size

GPU_DEFAULT = {"size": (64, 128, 128), "epochs": 30, "n_phantoms": 200}
CPU_DEFAULT = {"size": (32, 64, 64), "epochs": 8, "n_phantoms": 200}
# On the CPU a trial may cost at most this many times the seed baseline's forward GFLOPs at the same
# input: the space holds models 10-20x the baseline's cost (64 filters, three convolutions per level at
# full resolution), and one of those would take a CPU study's whole half hour on its own.
CPU_COST_CAP = 3.0


@dataclass(frozen=True)
class Fidelity:
    """What a run trains at, and why."""

    size: tuple[int, int, int]
    epochs: int
    n_phantoms: int
    amp: bool
    reason: str
    max_gflops: float | None = None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (AVX512-BF16 or AMX), where bf16 autocast pays.

    Measured here (2-core Xeon with AMX): a baseline training step at 32x64x64 took 65 ms/sample with
    bf16 autocast against 97 ms/sample in float32, both channels-last.
    """
    if platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def baseline_gflops(size: tuple[int, int, int]) -> float:
    """Forward GFLOPs per sample of the seed baseline at ``size`` (with 'same' padding where 'valid' cannot run)."""
    spec, _ = fit_to_size(baseline(), size)
    return cost(spec, size).gflops


def choose_fidelity(device: torch.device, size: tuple[int, int, int] | None = None, epochs: int | None = None,
                    n_phantoms: int | None = None, max_gflops: float | None = None) -> Fidelity:
    """The fidelity for ``device``, with explicit values taking precedence, and a sentence saying why.

    ``max_gflops`` None means the device's default (on the CPU, :data:`CPU_COST_CAP` times the baseline's
    cost at the chosen size; on a GPU, no cap); 0 means no cap.
    """
    base = GPU_DEFAULT if device.type == "cuda" else CPU_DEFAULT
    chosen_size = tuple(size) if size else base["size"]
    chosen_epochs = epochs or base["epochs"]
    chosen_n = n_phantoms or base["n_phantoms"]
    if device.type == "cuda":
        amp, precision = True, "bf16 autocast"
        why = "GPU: the seed's 64x128x128 input"
    else:
        amp = cpu_has_fast_bf16()
        precision = "bf16 autocast (this CPU has native bf16)" if amp else "float32 (no native bf16 on this CPU)"
        why = "CPU: sized so --trials 50 ends within 30 min on 2 cores (14 min measured); a GPU run uses 64x128x128"
    if size or epochs:
        why = "as given on the command line" + ("" if size and epochs else f"; the rest is the {why}")
    if max_gflops is None and device.type != "cuda":
        cap: float | None = round(CPU_COST_CAP * baseline_gflops(chosen_size), 2)
        cap_text = f", trials above {cap:g} GFLOPs/sample ({CPU_COST_CAP:g}x the baseline) pruned untrained"
    elif max_gflops:
        cap, cap_text = float(max_gflops), f", trials above {max_gflops:g} GFLOPs/sample pruned untrained"
    else:
        cap, cap_text = None, ""
    text = (f"fidelity: {'x'.join(map(str, chosen_size))} voxels, up to {chosen_epochs} epochs per trial, "
            f"{precision}, channels-last{cap_text} ({why})")
    return Fidelity(chosen_size, chosen_epochs, chosen_n, amp, text, cap)
