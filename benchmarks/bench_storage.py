"""Stress test of the study storages that parallel workers share: trials lost, lock errors, overhead.

    python benchmarks/bench_storage.py [--workers 4] [--trials 40] [--train-s 0.05]
        [--postgres postgresql://...] [--json OUT]

Each of ``--workers`` processes runs ``--trials`` short trials on one study, with the storage traffic of a
real search trial: the TPE sampler over the real search space (``space.sample``), the worker and cost
attrs, one report per fold and a pruning check, around ``--train-s`` seconds of simulated training. Each
trial records which worker and which of its trials it is, so a lost or duplicated trial shows.

Storages: SQLite as ``search.run`` opens it (``search.study.storage.open_storage``: heartbeats, 60 s busy
timeout), Optuna's journal file (no heartbeats), and PostgreSQL when ``--postgres`` is given. Printed
per storage: finished trials against those asked for, trials lost or duplicated, lock or storage errors,
and the overhead per trial (wall seconds of a trial minus its simulated training: storage and sampler).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.study.recovery import record_worker
from search.study.storage import make_pruner, make_sampler, open_storage, schema
from search.training.precision import cpu_model
from space import SpaceBounds, sample

KINDS = ("sqlite", "journal", "postgresql")


def open_kind(kind: str, url: str):
    """The storage a run of ``kind`` would use for ``url``."""
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url))
    return open_storage(url)


def _worker(kind: str, url: str, study_name: str, index: int, trials: int, train_s: float) -> dict:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_kind(kind, url)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=make_sampler("tpe", index),
                              pruner=make_pruner("median", 2))

    def objective(trial: optuna.Trial) -> float:
        record_worker(trial)
        trial.set_user_attr("stress_id", [index, done["trials"]])
        arch, train = sample(trial, SpaceBounds())
        for key, value in ((schema.SPEC, arch.to_dict()), (schema.TRAIN_SPEC, train.to_dict()),
                           (schema.PARAMS, 1000), (schema.GFLOPS, 1.0), (schema.DEVICE, "cpu")):
            trial.set_user_attr(key, value)
        value = (index * 7919 + done["trials"]) % 101 / 100
        time.sleep(train_s / 2)
        trial.report(value, 1)
        trial.should_prune()
        time.sleep(train_s / 2)
        trial.set_user_attr(schema.SCORE, value)
        return value

    errors: list[str] = []
    seconds = []
    done = {"trials": 0}
    for _ in range(trials):
        start = time.perf_counter()
        try:
            study.optimize(objective, n_trials=1, catch=())
        except Exception as e:  # what the stress test counts: any storage error a worker meets
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        seconds.append(time.perf_counter() - start - train_s)
        done["trials"] += 1
    return {"errors": errors, "overhead_s": seconds}


def stress(kind: str, url: str, workers: int, trials: int, train_s: float) -> dict:
    """``workers`` processes x ``trials`` trials on a fresh study in ``url``; the figures as a dict."""
    name = f"stress-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_kind(kind, url), direction="maximize")
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(_worker, [kind] * workers, [url] * workers, [name] * workers, range(workers),
                                [trials] * workers, [train_s] * workers))
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=open_kind(kind, url))
    finished = study.get_trials(deepcopy=False)
    ids = Counter(tuple(t.user_attrs["stress_id"]) for t in finished
                  if t.state == TrialState.COMPLETE and "stress_id" in t.user_attrs)
    expected = {(w, i) for w in range(workers) for i in range(trials)}
    overhead = [s for r in results for s in r["overhead_s"]]
    errors = [e for r in results for e in r["errors"]]
    return {
        "storage": kind, "workers": workers, "trials_per_worker": trials, "asked": workers * trials,
        "complete": sum(ids.values()), "lost": len(expected - set(ids)),
        "duplicated": sum(n - 1 for n in ids.values() if n > 1),
        "states": dict(Counter(t.state.name for t in finished)),
        "errors": len(errors), "error_examples": sorted(set(errors))[:3],
        "overhead_s_median": round(statistics.median(overhead), 4),
        "overhead_s_p95": round(sorted(overhead)[int(0.95 * (len(overhead) - 1))], 4),
        "wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=4, help="worker processes (default: 4)")
    p.add_argument("--trials", type=int, default=40, help="trials per worker (default: 40)")
    p.add_argument("--train-s", type=float, default=0.05, help="simulated training seconds per trial (default: 0.05)")
    p.add_argument("--postgres", metavar="URL", help="also stress this PostgreSQL database (default: not run)")
    p.add_argument("--kinds", default="sqlite,journal", help="storages besides PostgreSQL (default: sqlite,journal)")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"{cpu_model()}, {os.cpu_count()} cores; optuna {optuna.__version__}; {args.workers} workers x "
          f"{args.trials} trials, {args.train_s:g} s simulated training each")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        targets = [(k, f"sqlite:///{tmp}/stress.db" if k == "sqlite" else f"{tmp}/stress.log")
                   for k in args.kinds.split(",") if k]
        if args.postgres:
            targets.append(("postgresql", args.postgres))
        for kind, url in targets:
            row = stress(kind, url, args.workers, args.trials, args.train_s)
            rows.append(row)
            print(f"{kind:>10}: {row['complete']}/{row['asked']} complete, {row['lost']} lost, {row['duplicated']} "
                  f"duplicated, {row['errors']} storage errors, overhead per trial median "
                  f"{row['overhead_s_median']:.3f} s (p95 {row['overhead_s_p95']:.3f}), wall {row['wall_s']:.0f} s"
                  + (f"; e.g. {row['error_examples'][0]}" if row["error_examples"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
