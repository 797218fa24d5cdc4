"""Benchmark: which cheap score ranks architectures the way full training does? (run by hand, not a test)

The search scores a trial cheaply (2 folds x 4 epochs, final-epoch AUC) and leaves the decision to a
confirmation of its top few trunks. That works only if the cheap score puts the truly good specs near
the top. This audit measures it on the embedded default data set at the CPU fidelity:

- **Specs**: the seed baseline, the course's six modifications (all with 'same' padding at 32x64x64),
  and ``--drawn`` specs drawn at random from the default space, stratified by block type and depth, kept
  only below the search's cost cap (the search never trains the others).
- **Cheap scores**, from one run per search fold (the search's folds, seeds and training code) of
  ``--epochs`` epochs; the learning rate is constant, so the state after epoch e of that run is the state
  a run of e epochs ends in, and every score at e is what an e-epoch search would have scored:
  the fold AUC at epoch e with batch-norm statistics as training left them (``auc``: the search's score at
  e = 4) and recomputed over the fold's training scans (``auc_bn``); the validation loss, both ways; the
  sum of training losses over the first e epochs (Ru et al. 2021); one fold only; params and GFLOPs;
  rank combinations.
- **Truth**: the spec trained as export trains it (all non-test scans, ``--truth-epochs`` epochs, batch
  norm recomputed), scored on ``--fresh-n`` fresh phantoms from ``--fresh-seed`` (no study uses it), one
  run per ``--truth-seeds``.

Every run is appended to ``--out`` (JSON lines) as soon as it ends, so a stopped audit resumes where it
stopped, and ``--analyse`` alone re-reads the file: Spearman and Kendall correlation of every score with
the truth (bootstrap 95% CIs over specs), each score's cost in epochs, and how often the truly best spec
of a 50-draw sample lands in the top k of that score.

    python benchmarks/bench_fidelity.py                      # runs (resumable), then the analysis
    python benchmarks/bench_fidelity.py --analyse --markdown # the tables for benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from scipy import stats

from lungct.dataset import load_scans
from lungct.discover import discover
from lungct.records import PreprocessConfig
from search.selection.objective import fold_seed
from search.stats.metrics import binary_metrics
from search.training.data import Tensors, prepare_data, resolve_data_root, search_folds
from search.training.fidelity import CPU_COST_CAP, baseline_gflops
from search.training.loop import fit, predict_probs, recalibrate_batchnorm
from search.training.precision import device_precision
from space import (
    ArchSpec,
    SpaceBounds,
    TrainSpec,
    baseline_train,
    bounds_for_size,
    build,
    cost,
    fit_sampled,
    fit_to_size,
    sample,
    variants,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_selection import ensure_fresh_phantoms, fresh_set_dir

SIZE = (32, 64, 64)
SAMPLE_SIZE = 50  # the search's trial budget: how often does its truly best spec reach the top k?
TOP_K = (1, 2, 3, 5)
BOOTSTRAP = 2000
TOP_K_SAMPLES = 4000


def cpu_text() -> str:
    """The CPU model and the vector features that decide training speed and precision here."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    feats = [f"AVX-512 {'yes' if 'avx512f' in flags else 'no'}", f"bf16 {'yes' if 'avx512_bf16' in flags else 'no'}",
             f"AMX {'yes' if 'amx_bf16' in flags else 'no'}"]
    return f"{model} ({', '.join(feats)}), {torch.get_num_threads()} torch threads"


# ---------------------------------------------------------------------------------------------- the specs

def course_specs() -> dict[str, tuple[ArchSpec, TrainSpec]]:
    """The seed baseline and its six modifications, fitted to the CPU fidelity."""
    return {f"course:{name}": (fit_to_size(spec, SIZE)[0], baseline_train()) for name, spec in variants().items()}


def drawn_specs(n: int, seed: int, cap_gflops: float) -> tuple[dict[str, tuple[ArchSpec, TrainSpec]], dict]:
    """``n`` random draws from the default space below the cost cap, stratified by block type and depth.

    Strata are (block, n_levels) cells filled round-robin, so each block type gets n/3 specs spread over
    the depths the input allows. Returns the specs and how many raw draws landed above the cap.
    """
    bounds = bounds_for_size(SpaceBounds(), SIZE)
    depths = list(range(bounds.n_levels[0], bounds.n_levels[1] + 1))
    cells = [(block, depths[i % len(depths)]) for i in range(math.ceil(n / len(bounds.block)))
             for block in bounds.block][:n]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out: dict[str, tuple[ArchSpec, TrainSpec]] = {}
    draws = above_cap = 0
    while cells and draws < 20_000:
        trial = study.ask()
        draws += 1
        arch, train = sample(trial, bounds)
        arch, _ = fit_sampled(arch, SIZE)
        gflops = cost(arch, SIZE).gflops
        study.tell(trial, 0.0)
        if gflops > cap_gflops:
            above_cap += 1
            continue
        cell = (arch.levels[0].block, arch.n_levels)
        if cell in cells:
            cells.remove(cell)
            out[f"drawn:{trial.number}"] = (arch, train)
    return out, {"raw_draws": draws, "above_cap": above_cap}


# ----------------------------------------------------------------------------------------------- the runs

def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def _score(model: torch.nn.Module, val: Tensors) -> tuple[float, float]:
    """(AUC, mean BCE) of ``model`` on ``val``, float32 on the CPU."""
    probs = predict_probs(model, val.volumes, torch.device("cpu"), amp=False)
    labels = val.labels.numpy()
    p = torch.as_tensor(probs, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
    loss = float(F.binary_cross_entropy(p, torch.as_tensor(labels, dtype=torch.float64)))
    return float(binary_metrics(labels, probs).auc), loss


def cheap_run(arch: ArchSpec, train: TrainSpec, fold_train: Tensors, fold_val: Tensors, epochs: int,
              score_at: set[int], seed: int, amp: bool) -> dict:
    """One search fold trained for ``epochs``, scored at each epoch of ``score_at`` both ways."""
    torch.manual_seed(seed)
    model = build(arch)
    scores: dict[str, dict] = {}

    def on_epoch(result) -> None:
        if result.epoch not in score_at:
            return
        saved = _bn_buffers(model)
        auc, loss = _score(model, fold_val)
        recalibrate_batchnorm(model, fold_train, torch.device("cpu"), train.batch_size)
        auc_bn, loss_bn = _score(model, fold_val)
        model.load_state_dict(saved, strict=False)
        model.train()
        scores[str(result.epoch)] = {"auc": auc, "val_loss": loss, "auc_bn": auc_bn, "val_loss_bn": loss_bn}

    start = time.perf_counter()
    fitted = fit(model, fold_train, None, optimizer=train.optimizer, lr=train.lr, weight_decay=train.weight_decay,
                 batch_size=train.batch_size, epochs=epochs, device=torch.device("cpu"), seed=seed, amp=amp,
                 on_epoch=on_epoch)
    return {"scores": scores, "train_loss": [e.train_loss for e in fitted.history], "precision": fitted.precision,
            "train_seconds": round(fitted.train_seconds, 2), "wall_seconds": round(time.perf_counter() - start, 2)}


def truth_run(arch: ArchSpec, train: TrainSpec, trainval: Tensors, fresh: Tensors, epochs: int, seed: int,
              amp: bool) -> dict:
    """The spec trained as export trains it, scored on the fresh scans."""
    torch.manual_seed(seed)
    model = build(arch)
    start = time.perf_counter()
    fitted = fit(model, trainval, None, optimizer=train.optimizer, lr=train.lr, weight_decay=train.weight_decay,
                 batch_size=train.batch_size, epochs=epochs, device=torch.device("cpu"), seed=seed, amp=amp)
    recalibrate_batchnorm(model, trainval, torch.device("cpu"), train.batch_size)
    probs = predict_probs(model.eval(), fresh.volumes, torch.device("cpu"), amp=False)
    auc, loss = _score(model, fresh)
    # The probabilities let the analysis pair specs on the same fresh scans (the confirmation's noise model).
    return {"auc": auc, "loss": loss, "probs": [round(float(p), 5) for p in probs], "precision": fitted.precision,
            "train_seconds": round(fitted.train_seconds, 2), "wall_seconds": round(time.perf_counter() - start, 2)}


def _done(path: Path) -> dict[tuple[str, str], dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["spec"], r["run"]): r for r in rows}


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one line to a file opened for appending: shards appending at once never interleave, and a
    # stop loses at most the run in progress.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)


def run_audit(args: argparse.Namespace) -> None:
    amp = device_precision(torch.device("cpu")).amp
    cap = round(CPU_COST_CAP * baseline_gflops(SIZE), 2)
    specs = course_specs()
    drawn, draw_stats = drawn_specs(args.drawn, args.draw_seed, cap)
    # The second convolution per level costs 7.5x the baseline at 32x64x64 (40 GFLOPs): last, so that a stopped
    # audit has every cheaper spec.
    last = {k: specs.pop(k) for k in [k for k in specs if specs[k][0].levels[0].n_convs > 1]}
    specs.update(drawn)
    specs.update(last)
    print(f"machine: {cpu_text()}; bf16 allowed: {amp}", file=sys.stderr)
    print(f"{len(specs)} specs ({len(drawn)} drawn below the cap of {cap} GFLOPs; {draw_stats['above_cap']} of "
          f"{draw_stats['raw_draws']} raw draws were above it)", file=sys.stderr)

    root = resolve_data_root(None, args.studies_dir)
    config = PreprocessConfig(size=SIZE)
    prepared = prepare_data(root, config, seed=args.split_seed, studies_dir=args.studies_dir, progress=False)
    folds = search_folds(prepared, 2, args.studies_dir, args.split_seed)
    trainval = Tensors(*prepared.loaded.select([*prepared.split.train, *prepared.split.val]))
    fresh_root = fresh_set_dir(Path(args.studies_dir) / "fresh", args.fresh_seed, args.fresh_n)
    ensure_fresh_phantoms(fresh_root, args.fresh_n, args.fresh_seed, 256, None)
    found = discover(fresh_root / "phantoms", "course")
    loaded = load_scans(found.records, config, fresh_root / "scans", progress=False)
    fresh = Tensors(loaded.volumes, loaded.labels)
    print(f"data: {len(trainval)} non-test scans (2 folds of {[len(v) for _, _, v in folds]} validation scans); "
          f"fresh: {len(fresh)} scans of seed {args.fresh_seed}", file=sys.stderr)

    done = _done(args.out)
    score_at = set(args.score_epochs) | {args.epochs}
    jobs = []
    for i, (key, (arch, train)) in enumerate(specs.items()):
        for k, (_, fold_train, fold_val) in enumerate(folds):
            jobs.append((key, f"cheap{k}", i, arch, train, ("cheap", k, fold_train, fold_val)))
        for r in range(args.truth_seeds):
            jobs.append((key, f"truth{r}", i, arch, train, ("truth", r)))
    # Second training seeds of the truth, last: how much the truth itself moves with the seed.
    for i, (key, (arch, train)) in enumerate(specs.items()):
        if i < args.second_seed_specs and args.truth_seeds == 1:
            jobs.append((key, "truth1", i, arch, train, ("truth", 1)))
    shard, shards = args.shard
    mine = [j for j in jobs if j[2] % shards == shard][::-1 if args.reverse else 1]
    todo = [j for j in mine if (j[0], j[1]) not in done]
    print(f"shard {shard}/{shards}: {len(mine) - len(todo)} of its {len(mine)} runs already in {args.out}",
          file=sys.stderr)
    start = time.perf_counter()
    for n, (key, run, i, arch, train, what) in enumerate(todo, start=1):
        if (key, run) in _done(args.out):  # another process took it meanwhile (--reverse)
            continue
        c = cost(arch, SIZE)
        base = {"spec": key, "run": run, "index": i, "arch": arch.to_dict(), "train_spec": train.to_dict(),
                "params": c.params, "gflops": c.gflops, "cpu": cpu_text(), "torch": torch.__version__}
        if what[0] == "cheap":
            _, k, fold_train, fold_val = what
            row = base | {"fold": k, "epochs": args.epochs, "n_train": len(fold_train), "n_val": len(fold_val),
                          "seed": fold_seed(0, i, k)} | cheap_run(arch, train, fold_train, fold_val, args.epochs,
                                                                  score_at, fold_seed(0, i, k), amp)
        else:
            seed = i + 1000 * what[1]
            row = base | {"epochs": args.truth_epochs, "n_train": len(trainval), "n_fresh": len(fresh),
                          "seed": seed} | truth_run(arch, train, trainval, fresh, args.truth_epochs, seed, amp)
        _append(args.out, row)
        elapsed = time.perf_counter() - start
        eta = elapsed / n * (len(todo) - n)
        print(f"[{n}/{len(todo)}] {key} {run}: {row['wall_seconds']:.0f} s "
              f"({'auc ' + format(row['auc'], '.3f') if 'auc' in row else 'fold'}); elapsed {elapsed / 60:.1f} min, "
              f"ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- the analysis

@dataclasses.dataclass
class Table:
    """Per spec: the truth and every candidate cheap score (higher = better), with each score's cost."""

    specs: list[str]
    truth: np.ndarray
    truth_runs: np.ndarray  # (specs, seeds)
    scores: dict[str, np.ndarray]
    cost_epochs: dict[str, float]  # full-data epochs a trial spends on the score
    cpu: str


def _rank(v: np.ndarray) -> np.ndarray:
    return stats.rankdata(v)


def build_table(path: Path, epochs_available: list[int]) -> Table:
    rows = list(_done(path).values())
    by_spec: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_spec.setdefault(r["spec"], {})[r["run"]] = r
    seeds = sorted({int(run[5:]) for runs in by_spec.values() for run in runs if run.startswith("truth")})
    complete = [s for s, runs in by_spec.items()
                if {"cheap0", "cheap1"} <= set(runs) and any(f"truth{r}" in runs for r in seeds)]
    specs = sorted(complete, key=lambda s: by_spec[s]["cheap0"]["index"])
    truth_runs = np.array([[by_spec[s][f"truth{r}"]["auc"] if f"truth{r}" in by_spec[s] else np.nan for r in seeds]
                           for s in specs])
    truth = np.nanmean(truth_runs, axis=1)
    scores: dict[str, np.ndarray] = {}
    costs: dict[str, float] = {}
    half = 0.5  # a search fold trains on half the non-test scans
    for e in epochs_available:
        def fold_values(name: str, folds: tuple[int, ...], e: int = e) -> np.ndarray:
            return np.array([np.mean([by_spec[s][f"cheap{k}"]["scores"][str(e)][name] for k in folds]) for s in specs])

        for folds, tag in (((0, 1), ""), ((0,), "_1fold")):
            for name in ("auc", "auc_bn"):
                scores[f"{name}{tag}@{e}"] = fold_values(name, folds)
                costs[f"{name}{tag}@{e}"] = half * e * len(folds)
            for name in ("val_loss", "val_loss_bn"):
                scores[f"-{name}{tag}@{e}"] = -fold_values(name, folds)
                costs[f"-{name}{tag}@{e}"] = half * e * len(folds)
            scores[f"-train_loss_sum{tag}@{e}"] = -np.array(
                [np.mean([sum(by_spec[s][f"cheap{k}"]["train_loss"][:e]) for k in folds]) for s in specs])
            costs[f"-train_loss_sum{tag}@{e}"] = half * e * len(folds)
        # Combinations: the mean of the ranks of two scores of the same runs.
        for a, b in (("auc_bn", "-train_loss_sum"), ("auc_bn", "-val_loss_bn"), ("auc", "-train_loss_sum")):
            scores[f"rank({a}+{b})@{e}"] = _rank(scores[f"{a}@{e}"]) + _rank(scores[f"{b}@{e}"])
            costs[f"rank({a}+{b})@{e}"] = half * e * 2
    gflops = np.array([by_spec[s]["cheap0"]["gflops"] for s in specs])
    params = np.array([by_spec[s]["cheap0"]["params"] for s in specs], dtype=float)
    scores.update({"gflops": gflops, "-gflops": -gflops, "params": params, "-params": -params})
    costs.update({"gflops": 0.0, "-gflops": 0.0, "params": 0.0, "-params": 0.0})
    cpu = by_spec[specs[0]]["cheap0"]["cpu"] if specs else ""
    return Table(specs, truth, truth_runs, scores, costs, cpu)


def _spearman(a, b) -> float:
    with warnings.catch_warnings():  # a constant score has no rank correlation: NaN, said in the table
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a, b).statistic)


def _kendall(a, b) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.kendalltau(a, b).statistic)


def correlation_ci(score: np.ndarray, truth: np.ndarray, fn, seed: int = 0) -> tuple[float, float, float]:
    """The correlation and its 95% bootstrap interval over specs."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    values = []
    for _ in range(BOOTSTRAP):
        rows = rng.integers(0, n, n)
        if len(set(rows.tolist())) < 3:
            continue
        v = fn(score[rows], truth[rows])
        if math.isfinite(v):
            values.append(v)
    if not values:
        return fn(score, truth), math.nan, math.nan
    lo, hi = np.percentile(values, [2.5, 97.5])
    return fn(score, truth), float(lo), float(hi)


def top_k_hit_rate(score: np.ndarray, truth: np.ndarray, k: int, draws: int = SAMPLE_SIZE, samples: int | None = None,
                   seed: int = 0) -> float:
    """How often the truly best of ``draws`` specs drawn from the pool ranks in the top ``k`` of ``score``.

    The pool's specs stand in for the search's draws (sampled with replacement); distinct specs only count
    once in a ranking, and ties in ``score`` count against the best spec.
    """
    rng = np.random.default_rng(seed)
    n, hits = len(truth), 0
    samples = samples or TOP_K_SAMPLES
    for _ in range(samples):
        picked = np.unique(rng.integers(0, n, draws))
        best = picked[np.argmax(truth[picked])]
        above = np.sum(score[picked] >= score[best]) - 1
        hits += above < k
    return hits / samples


def analyse(table: Table) -> list[dict]:
    out = []
    for name, score in table.scores.items():
        rho = correlation_ci(score, table.truth, _spearman)
        tau = correlation_ci(score, table.truth, _kendall)
        out.append({"score": name, "cost_epochs": table.cost_epochs[name], "spearman": rho, "kendall": tau,
                    "top_k": {k: top_k_hit_rate(score, table.truth, k) for k in TOP_K}})
    return sorted(out, key=lambda r: -r["spearman"][0] if math.isfinite(r["spearman"][0]) else math.inf)


def truth_reliability(table: Table) -> str:
    """How repeatable the truth itself is, over the specs trained with two seeds."""
    runs = table.truth_runs
    both = ~np.isnan(runs).any(axis=1) if runs.shape[1] >= 2 else np.zeros(len(runs), dtype=bool)
    if both.sum() < 3:
        return "the truth's own seed noise is not measured (fewer than 3 specs with two truth seeds)"
    a, b = runs[both, 0], runs[both, 1]
    sd = float(np.sqrt(np.mean((a - b) ** 2 / 2)))
    return (f"truth = mean fresh AUC over its seeds; {int(both.sum())} specs trained with two seeds: Spearman between "
            f"the seeds {_spearman(a, b):+.2f}, SD of one run's fresh AUC {sd:.3f}")


def fresh_labels(args: argparse.Namespace) -> np.ndarray:
    """The fresh set's labels under the course task, in the order its scans were scored."""
    root = fresh_set_dir(Path(args.studies_dir) / "fresh", args.fresh_seed, args.fresh_n)
    return np.array([r.label for r in discover(root / "phantoms", "course").records], dtype=int)


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(binary_metrics(labels, probs).auc)


def confirmation_noise(path: Path, labels: np.ndarray, n_val: int, draws: int = 400, seed: int = 0) -> dict:
    """The two noises of one confirmation fold's paired AUC difference (candidate - baseline), from the truth runs.

    - Scan noise: the SD of the paired difference over stratified subsets of ``n_val`` fresh scans (a fold's
      validation part), both models scoring the same scans.
    - Seed noise: the SD of one model's fresh AUC between two training seeds (specs with a second truth seed);
      a difference of two independently trained models carries it twice.
    """
    by_spec: dict[str, dict[str, dict]] = {}
    for r in _done(path).values():
        if r["run"].startswith("truth") and "probs" in r:
            by_spec.setdefault(r["spec"], {})[r["run"]] = r
    base = by_spec.get("course:baseline", {}).get("truth0")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = round(n_val * len(pos) / len(labels))
    sds = []
    if base is not None and len(base["probs"]) == len(labels):
        b = np.asarray(base["probs"])
        for spec, runs in by_spec.items():
            if spec == "course:baseline" or "truth0" not in runs:
                continue
            c = np.asarray(runs["truth0"]["probs"])
            diffs = []
            for _ in range(draws):
                rows = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_val - n_pos,
                                                                                          replace=False)])
                diffs.append(_auc(labels[rows], c[rows]) - _auc(labels[rows], b[rows]))
            sds.append(float(np.std(diffs, ddof=1)))
    pairs = [(runs["truth0"]["auc"], runs["truth1"]["auc"]) for runs in by_spec.values()
             if "truth0" in runs and "truth1" in runs]
    seed_sd = float(np.sqrt(np.mean([(a - b) ** 2 / 2 for a, b in pairs]))) if pairs else math.nan
    return {"scan_sd": float(np.mean(sds)) if sds else math.nan, "seed_sd": seed_sd, "n_seed_pairs": len(pairs),
            "n_val": n_val, "n_specs": len(sds)}


def confirmation_power(noise: dict, delta: float, folds: int, repeats: int, k: int, alpha: float = 0.05,
                       n_scans: int = 130) -> float:
    """P(the confirmation recommends a candidate truly ``delta`` AUC better than the baseline).

    The rule (search.selection.confirm): the one-sided lower bound, at level alpha/k, of the paired difference's mean
    over folds x repeats, from a bootstrap over each fold's validation scans, is above 0.

    Noise model: a fold validates on ``n_scans / folds`` scans, and an AUC's variance goes as one over the
    scans scored, so the mean over the folds of one repeat has the scan variance of all ``n_scans`` scans
    whatever the fold count; repeats score the same scans again, so they do not reduce it (they average
    training-seed noise only). The rule's bootstrap treats every run as independent scans, so its bound
    narrows with repeats though the scan noise does not, and it sees no seed noise at all.
    """
    scan_sd_all = noise["scan_sd"] * math.sqrt(noise["n_val"] / n_scans)  # the whole non-test set, once
    z = stats.norm.ppf(1 - alpha / k)
    se_rule = scan_sd_all / math.sqrt(repeats)
    se_true = math.sqrt(scan_sd_all ** 2 + 2 * noise["seed_sd"] ** 2 / (folds * repeats))
    return float(stats.norm.sf((z * se_rule - delta) / se_true))


def print_power(noise: dict, markdown: bool) -> None:
    print(f"confirmation noise per fold (n_val {noise['n_val']}): scan SD of the paired difference "
          f"{noise['scan_sd']:.4f} over {noise['n_specs']} specs; seed SD of one model {noise['seed_sd']:.4f} over "
          f"{noise['n_seed_pairs']} specs with two truth seeds")
    if not all(math.isfinite(noise[x]) for x in ("scan_sd", "seed_sd")):
        return
    head = ["non-test scans", "folds x repeats", "false recommendation, +0.00, k=2",
            *[f"power, +{d:.2f}, k={k}" for d in (0.03, 0.05) for k in (1, 2, 3)]]
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + " --- |" * len(head))
    for n_scans, folds, repeats in ((130, 3, 1), (130, 5, 1), (130, 10, 1), (130, 3, 2), (260, 3, 1), (520, 3, 1)):
        false = confirmation_power(noise, 0.0, folds, repeats, 2, n_scans=n_scans)
        cells = [str(n_scans), f"{folds} x {repeats}", f"{false:.3f}",
                 *[f"{confirmation_power(noise, d, folds, repeats, k, n_scans=n_scans):.2f}"
                   for d in (0.03, 0.05) for k in (1, 2, 3)]]
        print(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))


def print_analysis(table: Table, rows: list[dict], markdown: bool, best_only: int) -> None:
    print(f"{len(table.specs)} specs; truth = fresh AUC after export-style training; {truth_reliability(table)}")
    print(f"machine: {table.cpu}")
    order = np.argsort(-table.truth)
    print("specs by truth: " + ", ".join(f"{table.specs[i]} {table.truth[i]:.3f}" for i in order))
    head = ["score", "cost (full-data epochs)", "Spearman (95% CI)", "Kendall (95% CI)",
            *[f"best of {SAMPLE_SIZE} in top {k}" for k in TOP_K]]
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + " --- |" * len(head))
    for r in rows[:best_only]:
        rho, tau = r["spearman"], r["kendall"]
        cells = [r["score"], f"{r['cost_epochs']:g}", f"{rho[0]:+.2f} ({rho[1]:+.2f} to {rho[2]:+.2f})",
                 f"{tau[0]:+.2f} ({tau[1]:+.2f} to {tau[2]:+.2f})", *[f"{r['top_k'][k]:.2f}" for k in TOP_K]]
        print(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))


def _shard(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(i), int(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_fidelity.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--studies-dir", type=Path, default=Path("studies"),
                   help="where the default phantom set, its cache and splits live (default: studies)")
    p.add_argument("--split-seed", type=int, default=0, help="split seed of the non-test scans (default: 0)")
    p.add_argument("--drawn", type=int, default=17, help="specs drawn from the default space (default: 17)")
    p.add_argument("--draw-seed", type=int, default=1, help="seed of the random draws (default: 1)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of each cheap run (default: 6)")
    p.add_argument("--score-epochs", type=int, nargs="+", default=[2, 4, 6],
                   help="epochs at which the cheap runs are scored (default: 2 4 6)")
    p.add_argument("--truth-epochs", type=int, default=12, help="epochs of each truth run (default: 12, as export)")
    p.add_argument("--truth-seeds", type=int, default=1, help="truth runs per spec (default: 1)")
    p.add_argument("--second-seed-specs", type=int, default=8,
                   help="with one truth seed, the first K specs get a second one, after every other run, to measure "
                   "the truth's own seed noise (default: 8)")
    p.add_argument("--fresh-n", type=int, default=300, help="fresh phantoms for the truth (default: 300)")
    p.add_argument("--fresh-seed", type=int, default=777, help="their seed; no study uses it (default: 777)")
    p.add_argument("--out", type=Path, default=Path("studies/fidelity/audit.jsonl"),
                   help="runs, one JSON line each (default: studies/fidelity/audit.jsonl)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="run only the specs whose index is I modulo N, so N processes of one thread each "
                   "(--threads 1) share the machine: on 2 busy cores two single-threaded shards train much "
                   "faster than one two-threaded process (default: 0/1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--reverse", action="store_true",
                   help="take the shard's runs last first, so a second process on a shard meets the first in the "
                   "middle (each skips what is already in --out)")
    p.add_argument("--confirm-val", type=int, default=43,
                   help="validation scans of one confirmation fold, for the power estimate (default: 43, a third "
                   "of the default set's 130 non-test scans)")
    p.add_argument("--analyse", action="store_true", help="only analyse the runs already in --out")
    p.add_argument("--markdown", action="store_true", help="print the analysis as a markdown table")
    p.add_argument("--rows", type=int, default=40, help="scores shown, best Spearman first (default: 40)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.analyse:
        run_audit(args)
        if args.shard[0] != 0:
            return 0
    table = build_table(args.out, sorted(set(args.score_epochs) | {args.epochs}))
    if len(table.specs) < 4:
        print(f"only {len(table.specs)} complete specs in {args.out}: nothing to analyse yet", file=sys.stderr)
        return 1
    print_analysis(table, analyse(table), args.markdown, args.rows)
    # A confirmation fold validates on a third of the non-test scans (3 folds by default).
    print_power(confirmation_noise(args.out, fresh_labels(args), n_val=args.confirm_val), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
