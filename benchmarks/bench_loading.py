"""Benchmark: cold preprocessing and cached loading of MosMedData-sized scans (run by hand).

Generates phantoms at MosMedData's own size (512x512 in-plane at about 0.7 mm, 30-45 slices,
int16 .nii.gz) into a temporary folder, then times lungct.dataset.load_scans twice at the seed's
64x128x128: once on an empty cache (decode, reorient, window, resize, write the cache) and once
from the cache (no NIfTI decoded). Figures are recorded in benchmarks/RESULTS.md.

    python benchmarks/bench_loading.py            # 24 scans, all cores
    python benchmarks/bench_loading.py --n 40 --workers 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lungct.dataset import load_scans
from lungct.discover import discover
from lungct.phantom import generate_phantoms
from lungct.records import PreprocessConfig, get_task


def main(argv: list[str] | None = None) -> int:
    """Print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=24, help="scans (default: 24)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--size", type=int, nargs=3, default=(64, 128, 128), help="output D H W (default: 64 128 128)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate_phantoms(root, n=args.n, seed=0, matrix=512, progress=False)
        # Every category, so all n scans are loaded (the course task would exclude CT-1 and CT-4).
        task = get_task("any")
        found = discover(root, task)
        records = found.records
        size_mb = sum(f.stat().st_size for f in root.rglob("*.nii.gz")) / 1e6
        config = PreprocessConfig(size=tuple(args.size))
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        cold = load_scans(records, config, cache, workers=args.workers, progress=False)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = load_scans(records, config, cache, workers=args.workers, progress=False)
        warm_s = time.perf_counter() - start
    n = len(records)
    print(f"{n} scans, 512x512 in-plane int16 .nii.gz, {size_mb / n:.1f} MB each, to {'x'.join(map(str, args.size))}")
    print(f"cold (decode + preprocess + cache write): {cold_s:.1f} s, {n / cold_s:.2f} scans/s "
          f"(decoded {cold.stats.decoded})")
    print(f"cached: {warm_s:.2f} s, {n / warm_s:.0f} scans/s "
          f"(decoded {warm.stats.decoded}, cached {warm.stats.cached})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
