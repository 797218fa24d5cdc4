"""Benchmark: where a search trial's time goes, and how much of it scales with the network (issue 36, item 3).

Runs real search trials (search.selection.objective.Objective, the run's folds, fidelity, seeds, SQLite study
and trial artifacts) on the default data for the seed baseline and for specs drawn from the default space at
GFLOPs from about 0.05 up to the cost cap, and times each phase of a trial:

- ``train``: the training steps of every fold (``FitResult.train_seconds``; its ``data`` part makes batches);
- ``fit other``: the rest of ``train_model`` (building the model, the bf16 probe, the optimiser, epoch ends);
- ``bn``: recomputing batch-norm statistics over the fold's training scans (the ``auc_bn`` score);
- ``predict``: scoring the fold's validation scans; ``metrics``: the AUC and its bootstrap standard error;
- ``record``: the trial's stored attributes and artifacts (weights, histories); ``other``: the rest of
  ``study.optimize`` (sampling the spec, its cost, Optuna's storage).

It prints, per spec, the trial's wall time, the milliseconds per training sample-epoch, and the fixed part
(everything but ``train``), then a least-squares line ms/sample-epoch = a + b x GFLOPs. With ``--ask`` it also
times the sampler's own proposals over a 50-trial study of instant trials. Figures go to benchmarks/RESULTS.md
with the CPU they ran on (printed first); run nothing else beside it. Choosing the specs costs 3000 random draws
and their GFLOPs (about 7 min on an AVX2 CPU) before the first trial.

    python benchmarks/bench_trial_cost.py                 # baseline + 8 drawn specs, CPU default fidelity
    python benchmarks/bench_trial_cost.py --specs 4 --ask  # quicker; and the sampler's cost
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import optuna
import torch

from lungct.records import PreprocessConfig
from search.selection import objective as objective_module
from search.selection.objective import FoldData, Objective, SearchSettings
from search.study import schema
from search.study.artifacts import TrialArtifacts
from search.study.storage import make_sampler
from search.training.data import prepare_data, resolve_data_root, search_folds
from search.training.fidelity import CPU_COST_CAP, CPU_DEFAULT, baseline_gflops
from search.training.precision import device_precision
from space import ArchSpec, SpaceBounds, bounds_for_size, cost, fit_sampled, memory, sample
from space.sample import baseline_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fidelity import cpu_text

SIZE = tuple(CPU_DEFAULT["size"])
# Log-spaced GFLOPs targets for the drawn specs, from the smallest nets the space holds up to the cost cap.
TARGETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.3, 2.2)
PHASES = ("train", "data", "fit other", "bn", "predict", "metrics", "record", "other")


def drawn_params(targets: tuple[float, ...], bounds: SpaceBounds, cap: float, seed: int) -> list[dict]:
    """One spec's parameters per target: the random draw (below ``cap``) whose GFLOPs are nearest to it."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = []
    for _ in range(3000):
        trial = study.ask()
        arch, _ = fit_sampled(sample(trial, bounds)[0], SIZE)
        gflops = cost(arch, SIZE).gflops
        study.tell(trial, 0.0)
        if gflops <= cap:
            draws.append((gflops, trial.params))
    chosen = []
    for target in targets:
        gflops, params = min(draws, key=lambda d: abs(np.log(d[0] / target)))
        if params not in chosen:
            chosen.append(params)
    return chosen


class PhaseClock:
    """Wraps the objective module's steps so that each call's wall time adds to its phase."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.fits: list = []

    def wrap(self, name: str, phase: str, stack: contextlib.ExitStack, owner=objective_module) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                result = original(*args, **kwargs)
                if phase == "fit":
                    self.fits.append(result.fitted)
                return result
            finally:
                self.seconds[phase] += time.perf_counter() - start

        setattr(owner, name, timed)
        stack.callback(setattr, owner, name, original)

    def take(self) -> tuple[dict[str, float], list]:
        """The seconds per phase and the fit results since the last call."""
        out, fits = dict(self.seconds), list(self.fits)
        self.seconds.clear()
        self.fits.clear()
        return out, fits


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    amp = device_precision(device).amp
    cap = round(CPU_COST_CAP * baseline_gflops(SIZE), 2)
    bounds = bounds_for_size(SpaceBounds(), SIZE)
    print(f"machine: {cpu_text()}; bf16 allowed: {amp}; size {SIZE}, {args.epochs} epochs x {args.folds} folds",
          file=sys.stderr)
    root = resolve_data_root(None, args.studies_dir)
    prepared = prepare_data(root, PreprocessConfig(size=SIZE), seed=args.split_seed, studies_dir=args.studies_dir,
                            progress=False)
    folds = [FoldData(f.fold, train, val) for f, train, val in
             search_folds(prepared, args.folds, args.studies_dir, args.split_seed)]
    n_train = [len(f.train) for f in folds]
    settings = SearchSettings(size=SIZE, epochs=args.epochs, device=device, seed=0, amp=amp, bounds=bounds,
                              max_gflops=cap, recompute_bn=True)
    specs = [baseline_params(bounds), *drawn_params(TARGETS[:args.specs], bounds, cap, args.draw_seed)]
    clock = PhaseClock()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        clock.wrap("train_model", "fit", stack)
        clock.wrap("recalibrate_batchnorm", "bn", stack)
        clock.wrap("predict_finite", "predict", stack)
        clock.wrap("task_metrics", "metrics", stack)
        clock.wrap("auc_standard_error", "metrics", stack)
        clock.wrap("_record", "record", stack, owner=Objective)
        clock.wrap("_finish", "record", stack, owner=Objective)
        # No pruning: every trial trains both folds, so each row times the same work.
        study = optuna.create_study(storage=f"sqlite:///{tmp}/bench.db", study_name="cost", direction="maximize",
                                    sampler=make_sampler("tpe", 0), pruner=optuna.pruners.NopPruner())
        objective = Objective(folds, settings, on_trial_end=TrialArtifacts(Path(tmp) / "artifacts"))
        # One trial of the smallest spec first: imports, oneDNN's first kernels, the storage's tables.
        study.enqueue_trial(specs[1] if len(specs) > 1 else specs[0])
        study.optimize(objective, n_trials=1)
        clock.take()
        for n, params in enumerate(specs):
            # The seed baseline is marked as a run marks it: the cost cap never narrows it.
            study.enqueue_trial(params, user_attrs={schema.BASELINE: True} if n == 0 else None)
            start = time.perf_counter()
            study.optimize(objective, n_trials=1)
            wall = time.perf_counter() - start
            trial = study.trials[-1]
            phases, fits = clock.take()
            train_s = sum(f.train_seconds for f in fits)
            data_s = sum(f.data_seconds for f in fits)
            sample_epochs = sum(n * len(f.history) for n, f in zip(n_train, fits, strict=False))
            arch = ArchSpec.from_dict(trial.user_attrs[schema.SPEC])
            row = {"gflops": trial.user_attrs["gflops"], "params": trial.user_attrs["params"],
                   "activation_mb": memory(arch, SIZE).backward / 2 / 1e6, "spec": arch.describe(),
                   "batch_size": trial.user_attrs[schema.TRAIN_SPEC]["batch_size"],
                   "state": trial.state.name, "wall": wall, "train": train_s, "data": data_s,
                   "fit other": phases.get("fit", 0.0) - train_s, "bn": phases.get("bn", 0.0),
                   "predict": phases.get("predict", 0.0), "metrics": phases.get("metrics", 0.0),
                   "record": phases.get("record", 0.0),
                   "ms_per_sample_epoch": 1000 * train_s / max(sample_epochs, 1),
                   "baseline": n == 0, "cpu": cpu_text(), "torch": torch.__version__}
            row["other"] = wall - sum(row[p] for p in PHASES if p not in ("data", "other"))
            row["fixed"] = wall - train_s
            rows.append(row)
            print(f"{row['gflops']:6.2f} GFLOPs: {wall:6.1f} s, {row['ms_per_sample_epoch']:6.1f} ms/sample-epoch, "
                  f"fixed {row['fixed']:5.1f} s ({row['state']})", file=sys.stderr, flush=True)
    return rows


def ask_cost(n_trials: int, seed: int) -> tuple[float, float]:
    """Median seconds the default sampler takes to propose a trial over ``n_trials`` instant trials."""
    bounds = bounds_for_size(SpaceBounds(), SIZE)
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", seed))
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n_trials):
        start = time.perf_counter()
        trial = study.ask()
        sample(trial, bounds)
        times.append(time.perf_counter() - start)
        study.tell(trial, float(rng.uniform(0.5, 0.9)))
    return float(np.median(times[10:])), float(np.max(times))


def print_table(rows: list[dict], markdown: bool) -> None:
    head = ["GFLOPs", "activation MB", "batch", "trial s", "ms/sample-epoch", *PHASES, "fixed s", "fixed %", "spec"]
    lines = []
    for r in sorted(rows, key=lambda r: r["gflops"]):
        name = f"{r['gflops']:.2f}" + (" (seed baseline)" if r["baseline"] else "")
        lines.append([name, f"{r['activation_mb']:.0f}", str(r["batch_size"]), f"{r['wall']:.1f}",
                      f"{r['ms_per_sample_epoch']:.1f}", *(f"{r[p]:.1f}" for p in PHASES), f"{r['fixed']:.1f}",
                      f"{100 * r['fixed'] / r['wall']:.0f}%", r["spec"]])
    if markdown:
        print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        for line in [head, *lines]:
            print("  ".join(f"{c:>10}" for c in line))
    ms = np.array([r["ms_per_sample_epoch"] for r in rows])
    print()
    for key, unit in (("gflops", "GFLOPs"), ("activation_mb", "activation MB")):
        x = np.array([r[key] for r in rows])
        b, a = np.polyfit(x, ms, 1)
        r2 = 1 - np.sum((ms - (a + b * x)) ** 2) / np.sum((ms - ms.mean()) ** 2)
        print(f"ms per sample-epoch = {a:.1f} + {b:.3g} x {unit}: R^2 {r2:.2f} (least squares over {len(rows)} specs)")
    fixed = np.array([r["fixed"] for r in rows])
    share = np.array([r["fixed"] / r["wall"] for r in rows])
    print(f"outside the training steps per trial: median {np.median(fixed):.1f} s ({100 * np.median(share):.0f}%), "
          f"range {fixed.min():.1f}-{fixed.max():.1f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--specs", type=int, default=len(TARGETS), help="drawn specs besides the seed baseline")
    p.add_argument("--epochs", type=int, default=CPU_DEFAULT["epochs"], help="epochs per fold")
    p.add_argument("--folds", type=int, default=2, help="search folds per trial")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--draw-seed", type=int, default=7, help="seed of the random draws of specs")
    p.add_argument("--studies-dir", default="studies", help="where the default data is cached")
    p.add_argument("--ask", action="store_true", help="also time the sampler's proposals over 50 instant trials")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = run(args)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print_table(rows, args.markdown)
    if args.ask:
        median, worst = ask_cost(50, 0)
        print(f"sampler: median {1000 * median:.0f} ms per proposal after the 10 random start-up trials, "
              f"worst {1000 * worst:.0f} ms (50 instant trials)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
