"""Benchmark: time, size and hardness of the default phantom set (run by hand, not a test).

Generates the default set (200 phantoms, seed 0, matrix 256) into a temporary folder with
lungct.phantom.generate_phantoms and prints the wall time, the size on disk, and how hard the course
task (CT-0 against CT-2/CT-3) is for a logistic regression on one global statistic at a time. The
generator is tuned so that none of them reaches AUC 1.0 (mean lung HU should land near 0.75-0.92):
the task must need the lesions' spatial pattern, not a global density shift. Figures are recorded in
benchmarks/RESULTS.md.

Statistics, each computed on the written files as the loader would see them (canonical RAS, HU):
- mean lung HU (true mask): mean HU over the generator's own lung mask (parenchyma, vessels and
  lesions, no trachea or main bronchi), re-rendered from (seed, i); the strongest form of the
  statistic, since it counts consolidations that a threshold would drop. Re-rendering also checks
  that the file holds exactly the rendered voxels.
- mean lung HU (threshold): mean HU of body voxels below -400 HU, the body being each slice's filled
  region above -500 HU; includes trachea, bronchi and stomach gas, drops consolidations.
- mean body HU, std of body HU, fraction of body voxels in [-750, -300] HU.
- all five together.
AUC is out-of-fold, from a standardised logistic regression under stratified 5-fold
cross-validation repeated 10 times; the mean and standard deviation over repeats are printed.

    python benchmarks/bench_phantoms.py                 # the default set
    python benchmarks/bench_phantoms.py --n 60 --matrix 128 --workers 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungct.phantom import generate_phantoms, render_phantom

STATISTICS = ("mean lung HU (true mask)", "mean lung HU (threshold)", "mean body HU", "std of body HU",
              "fraction of body in [-750,-300] HU")
TASK = {"CT-0": 0, "CT-2": 1, "CT-3": 1}


def global_statistics(path: str, seed: int, index: int, category: str, matrix: int) -> list[float]:
    """The five statistics of one written phantom; raises if the file differs from a fresh render."""
    image = nib.as_closest_canonical(nib.load(path))
    volume = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)  # (D, H, W)
    phantom = render_phantom(seed, index, category, matrix=matrix)
    if not np.array_equal(volume, phantom.volume_hu):
        raise AssertionError(f"{path}: voxels differ from render_phantom({seed}, {index})")
    body = np.stack([ndimage.binary_fill_holes(s > -500) for s in volume])
    inside = volume[body]
    return [
        float(volume[phantom.lung_mask].mean()),
        float(volume[body & (volume < -400)].mean()),
        float(inside.mean()),
        float(inside.std()),
        float(np.mean((inside >= -750) & (inside <= -300))),
    ]


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished children: immune to other load."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cv_auc(x: np.ndarray, y: np.ndarray, repeats: int = 10) -> tuple[float, float]:
    """Mean and std over repeats of the out-of-fold ROC AUC of a standardised logistic regression."""
    aucs = []
    for r in range(repeats):
        model = make_pipeline(StandardScaler(), LogisticRegression())
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=r)
        p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
        aucs.append(roc_auc_score(y, p))
    return float(np.mean(aucs)), float(np.std(aucs))


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="phantoms (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set (default: 0)")
    parser.add_argument("--matrix", type=int, default=256, help="in-plane matrix (default: 256)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the set here and keep it (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    out = args.keep or Path(tempfile.mkdtemp(prefix="bench_phantoms_"))
    try:
        load = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), _cpu_s()
        infos = generate_phantoms(out, args.n, args.seed, matrix=args.matrix, workers=args.workers)
        wall_s, cpu_s = time.perf_counter() - start, _cpu_s() - cpu_start
        files = [out / p.study_file for p in infos]
        apparent = sum(f.stat().st_size for f in files)
        on_disk = sum(f.stat().st_blocks * 512 for f in out.rglob("*") if f.is_file())
        slices = [p.shape[2] for p in infos]

        used = [(i, p) for i, p in enumerate(infos) if p.category in TASK]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            rows = list(pool.map(global_statistics, [str(out / p.study_file) for _, p in used],
                                 [args.seed] * len(used), [i for i, _ in used], [p.category for _, p in used],
                                 [args.matrix] * len(used)))
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)
    x = np.array(rows)
    y = np.array([TASK[p.category] for _, p in used])

    machine = platform.processor() or platform.machine()
    print(f"date: {datetime.date.today().isoformat()}; machine: {machine}, {os.cpu_count()} CPU cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"command: python {' '.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}")
    print(f"phantoms: {len(infos)} (seed {args.seed}, matrix {args.matrix}), "
          f"slices {min(slices)}-{max(slices)} (mean {np.mean(slices):.1f})")
    workers = args.workers or os.cpu_count()
    print(f"wall time: {wall_s:.1f} s ({wall_s / len(infos):.2f} s per phantom, {workers} workers); "
          f"CPU time {cpu_s:.1f} s ({cpu_s / len(infos):.2f} s per phantom); load average before {load:.2f}")
    print(f"size: {apparent / 1e6:.1f} MB in files ({apparent / 1e6 / len(infos):.2f} MB per phantom), "
          f"{on_disk / 1e6:.1f} MB on disk")
    print(f"hardness, CT-0 (n={int((y == 0).sum())}) vs CT-2/CT-3 (n={int((y == 1).sum())}), "
          "logistic regression, stratified 5-fold CV x 10:")
    for k, name in enumerate(STATISTICS):
        m, s = cv_auc(x[:, [k]], y)
        print(f"  {name:36s} AUC {m:.3f} +- {s:.3f}   CT-0 {x[y == 0, k].mean():8.3f}   "
              f"CT-2/3 {x[y == 1, k].mean():8.3f}")
    m, s = cv_auc(x, y)
    print(f"  {'all five together':36s} AUC {m:.3f} +- {s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
