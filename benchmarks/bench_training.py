"""Benchmark: training speed of the seed baseline, the way search.run trains it (run by hand).

Times search.train.fit on random volumes (speed only; the data's content does not matter) for the
seed baseline at the CPU default input and at the seed's 64x128x128, with 140 training scans (the
Keras example's train split) and batch size 2, and prints seconds per epoch and ms per sample.
Figures are recorded in benchmarks/RESULTS.md.

    python benchmarks/bench_training.py                      # both sizes, 2 epochs each
    python benchmarks/bench_training.py --size 32 64 64 --scans 140 --epochs 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from search.fidelity import CPU_DEFAULT, choose_fidelity
from search.train import Tensors, fit, resolve_device
from space import baseline, baseline_train, build, fit_to_size


def time_baseline(size: tuple[int, int, int], scans: int, epochs: int, device: torch.device, amp: bool) -> dict:
    """Seconds per training epoch (validation excluded) of the seed baseline at ``size``."""
    spec, note = fit_to_size(baseline(), size)
    train = baseline_train()
    g = torch.Generator().manual_seed(0)
    data = Tensors(torch.rand(scans, 1, *size, generator=g).half(), (torch.rand(scans, generator=g) > 0.5).float())
    torch.manual_seed(0)
    model = build(spec)
    # One short warm-up epoch (allocator, oneDNN kernel selection), then the timed epochs.
    warm = Tensors(data.volumes[:4], data.labels[:4])
    fit(model, warm, None, optimizer=train.optimizer, lr=train.lr, weight_decay=0.0, batch_size=train.batch_size,
        epochs=1, device=device, seed=0, amp=amp)
    start = time.perf_counter()
    result = fit(model, data, None, optimizer=train.optimizer, lr=train.lr, weight_decay=0.0,
                 batch_size=train.batch_size, epochs=epochs, device=device, seed=0, amp=amp)
    wall = time.perf_counter() - start
    return {"size": size, "padding": spec.padding, "note": note, "epoch_s": wall / epochs,
            "ms_per_sample": 1000 * result.train_seconds / (epochs * scans), "amp": amp}


def main(argv: list[str] | None = None) -> int:
    """Print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=3, action="append",
                   help="input size, repeatable (default: the CPU default and 64 128 128)")
    p.add_argument("--scans", type=int, default=140, help="training scans per epoch (default: 140)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (default: 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    sizes = [tuple(s) for s in args.size] if args.size else [CPU_DEFAULT["size"], (64, 128, 128)]
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {cpu}")
    for size in sizes:
        amp = choose_fidelity(device, size).amp
        r = time_baseline(size, args.scans, args.epochs, device, amp)
        print(f"baseline {'x'.join(map(str, size))} ({r['padding']} padding, bf16={amp}): "
              f"{r['epoch_s']:.1f} s/epoch of {args.scans} scans, {r['ms_per_sample']:.0f} ms/sample")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
