"""Benchmark: which sampler finds the best spec in a 50-trial study? (run by hand, not a test)

A real default study costs 20-45 minutes on a 2-core CPU, so ten paired seeds of several designs are out
of reach there. This script follows NAS-Bench-301 (Siems et al. 2020): a table of real trials recorded from
studies, a surrogate fitted to it, and the designs' samplers and pruner run over the real space against
that surrogate at many seeds.

- ``record DB ...`` appends every trial of the given studies that trained a fold (complete or pruned)
  to the table (default ``benchmarks/results/search_trials.jsonl``): its parameters, fold AUCs, wall
  seconds, epochs, GFLOPs, and where it came from (sampler, split seed, seed, CPU). Phantom studies only:
  a table from real scans is derived data and must not be committed.
- ``simulate`` fits two random forests to the table (scikit-learn): the fold score from a trial's
  parameters (each fold one observation) and the log seconds per epoch. It prints how well the score's
  surrogate predicts trials it did not see (Spearman, leave-one-study-out) before anything else: where
  that is low, the space's score is mostly noise at this fidelity, and no sampler can do much better than
  random. Then each design runs ``--seeds`` studies of ``--trials`` trials (trial 0 the seed baseline, as
  in ``search.run``): a trial's parameters come from ``space.sample`` under the study's bounds, each
  fold's score is the surrogate plus normal noise of the SD the recorded folds disagree by, the median
  pruner sees fold 1.
  The noise stream of seed ``s`` is the same for every design, so designs are compared on paired seeds.
- What is reported, per design, over the seeds with 95% intervals (t over seeds; paired against the
  first design, random search): the surrogate's value (the "true" mean fold score) of the trial with the
  best observed score after 10, 20, 30 and all trials, and of the best of the top 2 observed distinct
  trunks (what the confirmation looks at), and the simulated search time from the cost forest.

    python benchmarks/bench_search.py record studies/lungct.db --label AMX-split3-seed2-tpe
    python benchmarks/bench_search.py simulate --seeds 20 --json benchmarks/results/search_sim.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from search.selection.candidates import trunk_key
from search.study import schema
from space import (
    SpaceBounds,
    baseline_params,
    baseline_train,
    bounds_for_size,
    fit_sampled,
    params_for,
    sample,
    variants,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fidelity import cpu_text

TABLE = Path(__file__).parent / "results" / "search_trials.jsonl"
SIZE = (32, 64, 64)
EPOCHS = 4
FOLDS = 2
DESIGNS = {
    "random": "plain random search (the reference)",
    "qmc": "scrambled Sobol quasi-random search",
    "tpe": "TPE as search.run builds it (Optuna 5 defaults: multivariate, 10 startup trials)",
    "tpe-indep": "TPE with multivariate=False (every parameter modelled on its own)",
    "tpe-startup5": "TPE with 5 startup trials",
    "tpe-startup20": "TPE with 20 startup trials",
    "tpe-nopruner": "TPE without the median pruner",
    "tpe-course": "TPE, the course's modifications enqueued as trials 1-5 (sigmoid is outside the space)",
    "gp": "GPSampler (complete trials only, 10 startup trials)",
}


# --- record ------------------------------------------------------------------------------------------

def _storage_url(path: str) -> str:
    return path if "://" in path else f"sqlite:///{Path(path).resolve()}"


def record(dbs: Sequence[str], table: Path, study_name: str, label: str | None, sampler: str, pruner: str) -> int:
    """Append the studies' trained trials to ``table``; a (source, trial) already there is skipped."""
    seen: set[tuple[str, int]] = set()
    if table.exists():
        for line in table.read_text().splitlines():
            row = json.loads(line)
            seen.add((row["source"], row["number"]))
    rows = []
    for db in dbs:
        study = optuna.load_study(study_name=study_name, storage=_storage_url(db))
        settings = study.user_attrs.get(schema.STUDY_SETTINGS, {})
        source = label or f"{Path(db).resolve()}:{study_name}"
        for t in study.get_trials(deepcopy=False):
            aucs = t.user_attrs.get(schema.FOLD_AUCS)
            if not aucs or (source, t.number) in seen:
                continue
            rows.append({
                "source": source, "number": t.number, "state": t.state.name, "params": t.params,
                "fold_aucs": aucs, "baseline": bool(t.user_attrs.get(schema.BASELINE)),
                "gflops": t.user_attrs.get(schema.GFLOPS), "epochs_run": t.user_attrs.get(schema.EPOCHS_RUN),
                "train_seconds": t.user_attrs.get(schema.TRAIN_SECONDS),
                "wall_seconds": t.user_attrs.get(schema.WALL_SECONDS),
                "sampler": sampler, "pruner": pruner,
                "seed": settings.get("seed"), "split_seed": settings.get("split_seed"),
                "size": settings.get("size"), "epochs": settings.get("epochs"), "cpu": cpu_text(),
            })
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


# --- surrogate ---------------------------------------------------------------------------------------

def _encode_value(name: str, value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        if name in ("lr",):
            return math.log10(float(value))
        if name == "weight_decay":
            return math.log10(float(value) + 1e-6)
        if name.endswith("_units") or name == "base_filters":
            return math.log2(float(value))
        return float(value)
    raise TypeError(value)


class Encoder:
    """Trial parameters -> a feature row: numbers as numbers (log for rates and widths), names one-hot."""

    def __init__(self, param_rows: Sequence[dict]):
        names = sorted({k for p in param_rows for k in p})
        self.columns: list[tuple[str, object]] = []
        for name in names:
            values = {p[name] for p in param_rows if name in p}
            if all(isinstance(v, str) for v in values):
                self.columns += [(name, v) for v in sorted(values)]
            else:
                self.columns.append((name, None))

    def row(self, params: dict) -> list[float]:
        out = []
        for name, level in self.columns:
            value = params.get(name)
            if level is not None:
                out.append(1.0 if value == level else 0.0)
            else:
                out.append(_encode_value(name, value) if value is not None else 0.0)
        return out

    def matrix(self, param_rows: Sequence[dict]) -> np.ndarray:
        return np.array([self.row(p) for p in param_rows], dtype=float)


@dataclass
class Surrogate:
    encoder: Encoder
    score: object  # RandomForestRegressor: fold AUC
    seconds: object  # RandomForestRegressor: log seconds per epoch
    fold_sd: float
    quality: dict

    def mean(self, params: dict) -> float:
        return float(self.score.predict(self.encoder.matrix([params]))[0])  # type: ignore[attr-defined]

    def epoch_seconds(self, params: dict) -> float:
        return float(math.exp(self.seconds.predict(self.encoder.matrix([params]))[0]))  # type: ignore[attr-defined]


def _forest(seed: int):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=100, min_samples_leaf=3, max_features=0.5, random_state=seed, n_jobs=1)


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def fit_surrogate(rows: Sequence[dict], seed: int = 0) -> Surrogate:
    """Fit the score and cost forests; measure the score forest on studies it did not see."""
    encoder = Encoder([r["params"] for r in rows])
    obs_params, obs_auc, obs_source = [], [], []
    for r in rows:
        for auc in r["fold_aucs"]:
            obs_params.append(r["params"])
            obs_auc.append(float(auc))
            obs_source.append(r["source"])
    x, y = encoder.matrix(obs_params), np.array(obs_auc)
    pairs = [r["fold_aucs"] for r in rows if len(r["fold_aucs"]) >= 2]
    fold_sd = float(math.sqrt(np.mean([(a[0] - a[1]) ** 2 for a in pairs]) / 2)) if pairs else 0.05
    # Leave one study out: predict each complete trial's mean score from the other studies' trials.
    quality: dict = {"trials": len(rows), "observations": len(y), "fold_sd": round(fold_sd, 4)}
    sources = sorted({r["source"] for r in rows})
    predicted, observed = [], []
    if len(sources) >= 2:
        for held in sources:
            keep = np.array([s != held for s in obs_source])
            model = _forest(seed).fit(x[keep], y[keep])
            for r in rows:
                if r["source"] == held and len(r["fold_aucs"]) == FOLDS:
                    predicted.append(float(model.predict(encoder.matrix([r["params"]]))[0]))
                    observed.append(float(np.mean(r["fold_aucs"])))
        quality["loso_spearman"] = round(_spearman(predicted, observed), 3)
        quality["loso_n"] = len(observed)
        # The best a perfect model of the spec could do: two folds' means of the same spec disagree by the
        # fold noise, so observed means carry half its variance.
        var_obs = float(np.var(observed))
        quality["reliability"] = round(max(0.0, 1 - fold_sd ** 2 / FOLDS / var_obs), 3) if var_obs > 0 else None
    score = _forest(seed).fit(x, y)
    timed = [r for r in rows if r.get("train_seconds") and r.get("epochs_run")]
    tx = encoder.matrix([r["params"] for r in timed])
    ty = np.log([r["wall_seconds"] / r["epochs_run"] for r in timed])
    seconds = _forest(seed).fit(tx, ty)
    return Surrogate(encoder, score, seconds, fold_sd, quality)


# --- simulate ----------------------------------------------------------------------------------------

def make_sampler(design: str, seed: int) -> optuna.samplers.BaseSampler:
    if design == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if design == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    if design in ("tpe", "tpe-nopruner", "tpe-course"):
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if design == "tpe-indep":
        return optuna.samplers.TPESampler(seed=seed, multivariate=False)
    if design.startswith("tpe-startup"):
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=int(design[11:]))
    if design == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    raise SystemExit(f"bench_search: unknown design {design!r} (choose from {', '.join(DESIGNS)})")


@dataclass
class StudyOutcome:
    best_at: dict[int, float]  # trials run -> true value of the best observed trial
    top2_trunks: float  # best true value among the 2 best observed distinct trunks, after all trials
    seconds: float
    pruned: int


class _Specs:
    """The trunk a trial's parameters train at the size (``space.fit_sampled``), cached by parameters.

    The cost cap's narrowing (``space.fit_cost``) is left out: it needs a model's FLOP count per spec (0.2 s),
    and the surrogate already maps the sampled parameters to the score the narrowed spec recorded.
    """

    def __init__(self, bounds: SpaceBounds):
        self.bounds, self.cache = bounds, {}

    def trunk(self, params: dict) -> str:
        key = json.dumps(params, sort_keys=True)
        if key not in self.cache:
            arch, _ = sample(optuna.trial.FixedTrial(params), self.bounds)
            arch, _ = fit_sampled(arch, SIZE)
            self.cache[key] = trunk_key(arch.to_dict())
        return self.cache[key]


def run_study(design: str, seed: int, surrogate: Surrogate, specs: _Specs, n_trials: int) -> StudyOutcome:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (optuna.pruners.NopPruner() if design in ("random", "qmc", "tpe-nopruner")
              else optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    study = optuna.create_study(direction="maximize", sampler=make_sampler(design, seed), pruner=pruner)
    study.enqueue_trial(baseline_params(specs.bounds))
    if design == "tpe-course":
        for name, arch in variants().items():
            with contextlib.suppress(ValueError):  # a modification outside the space (sigmoid)
                if name != "baseline":
                    study.enqueue_trial(params_for(arch, baseline_train(), specs.bounds))
    noise = np.random.default_rng(10_000 + seed)  # the same stream for every design at this seed
    observed: list[tuple[float, float, str]] = []  # (observed score, true mean, trunk) of complete trials
    best_at: dict[int, float] = {}
    seconds, pruned = 0.0, 0
    for n in range(1, n_trials + 1):
        trial = study.ask()
        sample(trial, specs.bounds)
        params = trial.params
        trunk = specs.trunk(params)
        eps = noise.normal(0.0, surrogate.fold_sd, FOLDS)
        mu = surrogate.mean(params)
        per_fold = surrogate.epoch_seconds(params) * EPOCHS
        folds = []
        for k in range(FOLDS):
            folds.append(mu + eps[k])
            seconds += per_fold
            if k < FOLDS - 1:
                trial.report(float(np.mean(folds)), k + 1)
                if trial.should_prune():
                    break
        if len(folds) < FOLDS:
            pruned += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            value = float(np.mean(folds))
            study.tell(trial, value)
            observed.append((value, mu, trunk))
        if observed:
            best_at[n] = max(observed)[1]
    ranked = sorted(observed, reverse=True)
    trunks: list[tuple[float, float, str]] = []
    for row in ranked:
        if row[2] not in {t[2] for t in trunks}:
            trunks.append(row)
        if len(trunks) == 2:
            break
    return StudyOutcome(best_at, max(t[1] for t in trunks), seconds, pruned)


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    from scipy.stats import t as student

    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, math.nan, math.nan
    half = float(student.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def simulate(rows: Sequence[dict], designs: Sequence[str], seeds: int, n_trials: int, seed0: int) -> dict:
    start = time.perf_counter()
    surrogate = fit_surrogate(rows)
    print(f"surrogate: {json.dumps(surrogate.quality)}", file=sys.stderr, flush=True)
    bounds = bounds_for_size(SpaceBounds(), SIZE)
    specs = _Specs(bounds)
    base = surrogate.mean(baseline_params(bounds))
    checkpoints = [c for c in (10, 20, 30, n_trials) if c <= n_trials]
    outcomes: dict[str, list[StudyOutcome]] = {}
    for design in designs:
        outcomes[design] = []
        for s in range(seed0, seed0 + seeds):
            outcomes[design].append(run_study(design, s, surrogate, specs, n_trials))
        print(f"  {design}: {seeds} studies, {time.perf_counter() - start:.0f} s so far", file=sys.stderr,
              flush=True)
    ref = designs[0]
    result: dict = {"surrogate": surrogate.quality, "baseline_true": round(base, 4), "seeds": seeds,
                    "seed0": seed0, "trials": n_trials, "size": list(SIZE), "cpu": cpu_text(), "designs": {}}
    for design in designs:
        rows_out: dict = {"what": DESIGNS[design]}
        for c in checkpoints:
            vals = [o.best_at.get(c, math.nan) for o in outcomes[design]]
            diffs = [v - r.best_at.get(c, math.nan) for v, r in zip(vals, outcomes[ref], strict=True)]
            rows_out[f"best@{c}"] = [round(v, 4) for v in _interval(vals)]
            rows_out[f"vs_{ref}@{c}"] = [round(v, 4) for v in _interval(diffs)]
        top2 = [o.top2_trunks for o in outcomes[design]]
        rows_out["top2_trunks"] = [round(v, 4) for v in _interval(top2)]
        rows_out[f"top2_vs_{ref}"] = [round(v, 4) for v in _interval(
            [a - b.top2_trunks for a, b in zip(top2, outcomes[ref], strict=True)])]
        rows_out["search_minutes"] = [round(v / 60, 1) for v in _interval([o.seconds for o in outcomes[design]])]
        rows_out["pruned"] = round(float(np.mean([o.pruned for o in outcomes[design]])), 1)
        result["designs"][design] = rows_out
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def markdown(result: dict) -> str:
    designs = result["designs"]
    ref = next(iter(designs))
    n = result["trials"]
    lines = [f"| design | best@10 | best@20 | best@{n} | vs {ref} @{n} | top-2 trunks | top-2 vs {ref} | "
             "search min | pruned |", "| --- " * 9 + "|"]

    def cell(v):
        return f"{v[0]:.3f} ({v[1]:+.3f} to {v[2]:+.3f})" if len(v) == 3 and not math.isnan(v[1]) else f"{v[0]:.3f}"

    def plain(v):
        return f"{v[0]:.3f}"

    for name, d in designs.items():
        lines.append(f"| {name} | {plain(d['best@10'])} | {plain(d['best@20'])} | {plain(d[f'best@{n}'])} | "
                     f"{cell(d[f'vs_{ref}@{n}'])} | {plain(d['top2_trunks'])} | {cell(d[f'top2_vs_{ref}'])} | "
                     f"{d['search_minutes'][0]:.1f} | {d['pruned']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="append studies' trials to the table")
    rec.add_argument("dbs", nargs="+", metavar="DB", help="SQLite file or SQLAlchemy URL of a study")
    rec.add_argument("--study", default="lungct", help="study name")
    rec.add_argument("--label", default=None, help="source label (default: the file and study name)")
    rec.add_argument("--table", type=Path, default=TABLE, help="the trial table (JSON lines)")
    rec.add_argument("--sampler", default="tpe", help="the sampler the study ran with (not stored on it)")
    rec.add_argument("--pruner", default="median", help="the pruner the study ran with (not stored on it)")
    sim = sub.add_parser("simulate", help="run the designs against the table's surrogate")
    sim.add_argument("--table", type=Path, default=TABLE, help="the trial table (JSON lines)")
    sim.add_argument("--designs", default=",".join(DESIGNS),
                     help=f"comma-separated, the first is the reference ({', '.join(DESIGNS)})")
    sim.add_argument("--seeds", type=int, default=20, help="paired seeds per design")
    sim.add_argument("--seed0", type=int, default=0, help="first seed")
    sim.add_argument("--trials", type=int, default=50, help="trials per simulated study")
    sim.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args(argv)
    if args.command == "record":
        added = record(args.dbs, args.table, args.study, args.label, args.sampler, args.pruner)
        print(f"{added} trials added to {args.table}")
        return 0
    rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
    torch_threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"{len(rows)} recorded trials from {len({r['source'] for r in rows})} studies; "
          f"{cpu_text()}, OMP_NUM_THREADS {torch_threads}", file=sys.stderr)
    result = simulate(rows, [d.strip() for d in args.designs.split(",") if d.strip()], args.seeds, args.trials,
                      args.seed0)
    print(markdown(result))
    print(f"baseline (surrogate): {result['baseline_true']:.3f}; surrogate: {json.dumps(result['surrogate'])}; "
          f"{result['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
