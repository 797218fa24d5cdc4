"""Benchmark: training speed of the seed baseline and of searched models, the way search.run trains them.

Times search.training.loop.fit on random volumes (speed only; the data's content does not matter) with batch
size 2, one warm-up epoch on 4 scans, then ``--epochs`` timed epochs of ``--scans`` scans, and prints
ms per sample and the share of the step spent making batches (gather, cast, augment). With ``--keras
PYTHON`` it runs the seed's own Keras pipeline (../shared/peers/keras_seed.py, in that interpreter's
environment) right after each size, in the same run, and prints the ratio. Figures are recorded in
benchmarks/RESULTS.md with the CPU they ran on.

    python benchmarks/bench_training.py --scans 60 --epochs 1 --keras /tmp/tf/bin/python
    python benchmarks/bench_training.py --size 32 64 64 --models baseline,searched
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_training.py ...   # that tree's training code
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from search.training.data import Tensors
from search.training.fidelity import CPU_DEFAULT, choose_fidelity
from search.training.loop import fit, resolve_device
from search.training.precision import cpu_model
from space import ArchSpec, LevelSpec, baseline, baseline_train, build, fit_to_size

KERAS_SEED = Path(__file__).resolve().parents[2] / "shared" / "peers" / "keras_seed.py"
# Searched models: the specs the CPU studies recommended (benchmarks/RESULTS.md, "Model selection") and
# one of each remaining block and activation kind the fast path treats differently.
SEARCHED = {
    "64-64-128 plain relu (seed 0's pick)": ArchSpec(
        levels=(LevelSpec(64), LevelSpec(64), LevelSpec(128)), padding="valid", head_units=(512,), dropout=0.3),
    "32-32-32 residual-inception gelu (seed 1's pick)": ArchSpec(
        levels=(LevelSpec(32, 1, "residual_inception"),) * 3, activation="gelu", head_units=(), dropout=0.2),
    "32-64-64 2x residual elu": ArchSpec(
        levels=(LevelSpec(32, 2, "residual"), LevelSpec(64, 2, "residual"), LevelSpec(64, 2, "residual")),
        activation="elu", head_units=(100,), dropout=0.3),
}


def time_spec(spec: ArchSpec, size: tuple[int, int, int], scans: int, epochs: int, device: torch.device,
              amp: bool) -> dict:
    """ms per training sample of ``spec`` at ``size`` (validation excluded), and the data share of the step."""
    spec, note = fit_to_size(spec, size)
    train = baseline_train()
    g = torch.Generator().manual_seed(0)
    data = Tensors(torch.rand(scans, 1, *size, generator=g).half(), (torch.rand(scans, generator=g) > 0.5).float())
    torch.manual_seed(0)
    model = build(spec)
    # One short warm-up epoch (allocator, oneDNN kernel selection, the bf16 probe), then the timed epochs.
    warm = Tensors(data.volumes[:4], data.labels[:4])
    fit(model, warm, None, optimizer=train.optimizer, lr=train.lr, weight_decay=0.0, batch_size=train.batch_size,
        epochs=1, device=device, seed=0, amp=amp)
    result = fit(model, data, None, optimizer=train.optimizer, lr=train.lr, weight_decay=0.0,
                 batch_size=train.batch_size, epochs=epochs, device=device, seed=0, amp=amp)
    data_s = getattr(result, "data_seconds", float("nan"))  # an older checkout's fit does not record it
    return {"size": list(size), "padding": spec.padding, "note": note, "precision": result.precision,
            "ms_per_sample": 1000 * result.train_seconds / (epochs * scans),
            "data_share": data_s / result.train_seconds}


def keras_ms(python: str, size: tuple[int, int, int], scans: int) -> float:
    """ms per sample of the seed's Keras pipeline at ``size``, over ``scans`` samples (batch 2)."""
    out = subprocess.run([python, str(KERAS_SEED), *map(str, size), str(max(scans // 2, 2))],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"(\d+) ms/sample", out).group(1))


def main(argv: list[str] | None = None) -> int:
    """Print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=3, action="append",
                   help="input size, repeatable (default: the CPU default and 64 128 128)")
    p.add_argument("--scans", type=int, default=140, help="training scans per timed epoch (default: 140)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (default: 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--models", default="baseline", help="baseline, searched, or baseline,searched (default: "
                   "baseline); searched = the specs in this script's SEARCHED table")
    p.add_argument("--keras", metavar="PYTHON", help="also time the Keras seed pipeline with this interpreter "
                   "(a venv with tensorflow-cpu and scipy) after each size (default: not run)")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    sizes = [tuple(s) for s in args.size] if args.size else [CPU_DEFAULT["size"], (64, 128, 128)]
    specs = {}
    if "baseline" in args.models.split(","):
        specs["seed baseline"] = baseline()
    if "searched" in args.models.split(","):
        specs.update(SEARCHED)
    machine = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {machine}")
    rows = []
    for size in sizes:
        amp = choose_fidelity(device, size).amp
        for name, spec in specs.items():
            r = time_spec(spec, size, args.scans, args.epochs, device, amp) | {"model": name}
            rows.append(r)
            print(f"{name} {'x'.join(map(str, size))} ({r['padding']} padding, {r['precision']}): "
                  f"{r['ms_per_sample']:.2f} ms/sample ({1000 / r['ms_per_sample']:.1f} samples/s), making batches "
                  f"{100 * r['data_share']:.1f}% of the step",
                  flush=True)
        if args.keras:
            ms = keras_ms(args.keras, size, args.scans)
            ours = next((r["ms_per_sample"] for r in rows if r["model"] == "seed baseline" and
                         tuple(r["size"]) == size), None)
            rows.append({"model": "keras seed pipeline", "size": list(size), "ms_per_sample": ms})
            ratio = f": lungct-nas is {ms / ours:.2f}x its samples/s" if ours else ""
            print(f"keras seed pipeline {'x'.join(map(str, size))}: {ms:.0f} ms/sample{ratio}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
