"""Benchmark: does this machine have the bf16 convolution-backward fault? (run by hand, prints figures)

Trains one Conv3d(128, 256, 3, padding=1) a step at a time under CPU bf16 autocast, with the same input
and weights each time, at the spatial shapes of the fault report (2x4x4, where the seed baseline's last
level runs at a 16x32x32 input) and two controls (1x2x2, 4x8x8), in the default and the channels-last
layouts. Per shape it prints the largest difference between the repeats' weight gradients, whether they
were all finite, and the first run's relative error against float32. search.training.precision explains what
the policy does about it.

    python benchmarks/bf16_fault.py
    python benchmarks/bf16_fault.py --repeats 16 --threads 1
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

FAULT_SHAPES = ((2, 4, 4),)
CONTROL_SHAPES = ((1, 2, 2), (4, 8, 8))
# A sound bf16 gradient is within about 0.4% of float32 here; the faulty ones are about 100% off.
FAULT_REL_ERROR = 0.1


def cpu_description() -> str:
    """The CPU model and whether it has AMX and AVX512-BF16, from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()} (no /proc/cpuinfo: AMX and AVX512-BF16 unknown)"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines() if line.startswith("flags")),
                 set())
    has = {name: "yes" if flag in flags else "no" for name, flag in (("AMX-BF16", "amx_bf16"),
                                                                     ("AVX512-BF16", "avx512_bf16"))}
    return f"{model}: " + ", ".join(f"{name} {v}" for name, v in has.items())


def measure(spatial: tuple[int, int, int], channels_last: bool, repeats: int, seed: int = 0) -> dict:
    """Weight gradients of ``repeats`` identical bf16 steps at ``spatial``: spread, finiteness, error."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d(128, 256, 3, padding=1)
    x = torch.randn(2, 128, *spatial)  # (B, C, D, H, W)
    reference_conv = torch.nn.Conv3d(128, 256, 3, padding=1)
    reference_conv.load_state_dict(conv.state_dict())
    reference_conv(x).square().sum().backward()
    reference = reference_conv.weight.grad
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    grads = []
    for _ in range(repeats):
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = conv(x).float().square().sum()
        loss.backward()
        grads.append(conv.weight.grad.detach().double())
    spread = max(float((g - grads[0]).abs().max()) for g in grads[1:])
    finite = all(bool(torch.isfinite(g).all()) for g in grads)
    error = float((grads[0] - reference.double()).norm() / reference.double().norm())
    return {"spread": spread, "finite": finite, "error": error,
            "faulty": not finite or spread != 0.0 or not error <= FAULT_REL_ERROR}


def main(argv: list[str] | None = None) -> int:
    """Print the figures and the verdict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=8, help="identical bf16 steps per shape (default: 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    if args.repeats < 2:
        p.error("--repeats: at least 2 are needed to compare repeats")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(cpu_description())
    print(f"Conv3d(128, 256, 3, padding=1), batch 2, {args.repeats} identical bf16-autocast steps per shape")
    print(f"{'shape':<8} {'layout':<14} {'role':<8} {'max |diff| between repeats':>27} {'finite':>7} "
          f"{'1st run rel. error vs fp32':>27}")
    faulty = []
    for role, shapes in (("fault", FAULT_SHAPES), ("control", CONTROL_SHAPES)):
        for spatial in shapes:
            for channels_last in (False, True):
                r = measure(spatial, channels_last, args.repeats)
                name = "x".join(map(str, spatial))
                layout = "channels_last" if channels_last else "default"
                print(f"{name:<8} {layout:<14} {role:<8} {r['spread']:>27.4g} {'yes' if r['finite'] else 'NO':>7} "
                      f"{r['error']:>27.3g}")
                if r["faulty"]:
                    faulty.append(f"{name} {layout}")
    if faulty:
        print(f"this machine HAS the bf16 conv-backward fault (at {', '.join(faulty)})")
    else:
        print("this machine does not have the bf16 conv-backward fault")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
