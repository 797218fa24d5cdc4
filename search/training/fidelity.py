"""Default fidelity (input size, epochs, phantom count) and precision for the device a run uses.

On a GPU the default is the seed's own setting: 64x128x128 voxels. On a laptop-class CPU that would
take hours per trial, so the CPU default is sized so that ``--trials 50`` finishes in about half an
hour on a 2-core AVX512-BF16 CPU (measured figures: benchmarks/RESULTS.md); CPUs differ by about 8x, so
``search.selection.budget`` measures the machine at hand and fits the run to ``--budget``. Explicit
``--size``/``--epochs`` win.
The precision is ``search.training.precision``'s: the fidelity says whether bf16 is allowed, and training
decides per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch

from search.training.precision import cpu_has_fast_bf16 as cpu_has_fast_bf16
from search.training.precision import device_precision
from space import baseline, cost, fit_to_size


class FidelityDefaults(TypedDict):
    """One device kind's defaults: "epochs" is per fold of a search trial; "confirm_epochs" is per confirmation
    run, and what export trains for; "ablate_epochs" is per ablation run."""

    size: tuple[int, int, int]
    epochs: int
    confirm_epochs: int
    ablate_epochs: int
    n_phantoms: int


GPU_DEFAULT: FidelityDefaults = {"size": (64, 128, 128), "epochs": 30, "confirm_epochs": 60, "ablate_epochs": 30,
                                 "n_phantoms": 200}
# 4 epochs per fold: a trial trains every fold (2 by default), so a trial costs 2 x 4 epochs of half the
# non-test scans; the search only has to rank specs well enough to put good ones in the top 2, and the
# confirmation (3 folds of two thirds of the non-test scans, 12 epochs) decides at a budget close to what
# export trains at. 50 trials plus that confirmation fit half an hour on 2 cores (benchmarks/RESULTS.md).
CPU_DEFAULT: FidelityDefaults = {"size": (32, 64, 64), "epochs": 4, "confirm_epochs": 12, "ablate_epochs": 6,
                                 "n_phantoms": 200}
# On the CPU a trial may cost at most this many times the seed baseline's forward GFLOPs at the same
# input: the space holds models 10-20x the baseline's cost (64 filters, three convolutions per level at
# full resolution), and a batch-norm trial at the baseline's cost took about 1/30 of a CPU study's half
# hour; 0.6x keeps 3 levels of 64-64-128 filters (3.1 GFLOPs at 32x64x64, the GPU seed-1 winner).
CPU_COST_CAP = 0.6


@dataclass(frozen=True)
class Fidelity:
    """What a run trains at, and why.

    ``amp`` means bf16 is allowed: callers pass it to :func:`search.training.loop.fit`, which on a CPU keeps
    bf16 only for models whose probe passes.
    """

    size: tuple[int, int, int]
    epochs: int
    n_phantoms: int
    amp: bool
    reason: str
    max_gflops: float | None = None
    confirm_epochs: int = 12


def device_defaults(device: torch.device) -> FidelityDefaults:
    """The default fidelity table of ``device``'s kind: :data:`GPU_DEFAULT` or :data:`CPU_DEFAULT`."""
    return GPU_DEFAULT if device.type == "cuda" else CPU_DEFAULT


def baseline_gflops(size: tuple[int, int, int]) -> float:
    """Forward GFLOPs per sample of the seed baseline at ``size`` (with 'same' padding where 'valid' cannot run)."""
    spec, _ = fit_to_size(baseline(), size)
    return cost(spec, size).gflops


def choose_fidelity(device: torch.device, size: Sequence[int] | None = None, epochs: int | None = None,
                    n_phantoms: int | None = None, max_gflops: float | None = None,
                    given_by: str = "on the command line") -> Fidelity:
    """The fidelity for ``device``, with explicit values taking precedence, and a sentence saying why.

    ``max_gflops`` None means the device's default (on the CPU, :data:`CPU_COST_CAP` times the baseline's
    cost at the chosen size; on a GPU, no cap); 0 means no cap. ``given_by`` says where explicit values came
    from, for the fidelity line (a resumed study passes its stored ones).
    """
    base = device_defaults(device)
    chosen_size = base["size"]
    if size:
        d, h, w = size  # a stored study's size may be a list
        chosen_size = (d, h, w)
    chosen_epochs = epochs or base["epochs"]
    chosen_n = n_phantoms or base["n_phantoms"]
    allowed = device_precision(device)
    amp, precision = allowed.amp, allowed.reason
    if device.type == "cuda":
        why = "GPU: the seed's 64x128x128 input"
    else:
        why = ("CPU: sized for --trials 50 with its confirmation in about 30 min on a 2-core AVX512-BF16 CPU; the "
               "time line says what it takes on this one; a GPU run uses 64x128x128")
    if size or epochs:
        why = f"as given {given_by}" + ("" if size and epochs else f"; the rest is the {why}")
    if max_gflops is None and device.type != "cuda":
        cap: float | None = round(CPU_COST_CAP * baseline_gflops(chosen_size), 2)
        cap_text = f", specs above {cap:g} GFLOPs/sample ({CPU_COST_CAP:g}x the baseline) narrowed to fit"
    elif max_gflops:
        cap, cap_text = float(max_gflops), f", specs above {max_gflops:g} GFLOPs/sample narrowed to fit"
    else:
        cap, cap_text = None, ""
    text = (f"fidelity: {'x'.join(map(str, chosen_size))} voxels, {chosen_epochs} epochs per fold, "
            f"{precision}, channels-last{cap_text} ({why})")
    # An explicit --epochs keeps the confirmation at twice the search's epochs, as before defaults existed.
    confirm = 2 * epochs if epochs else base["confirm_epochs"]
    return Fidelity(chosen_size, chosen_epochs, chosen_n, amp, text, cap, confirm)
