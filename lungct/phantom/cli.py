"""The command line, ``python -m lungct.phantom --out DIR --n N``: its flags, their checks, the one-line
errors and the summary; :func:`~lungct.phantom.writing.generate_phantoms` does the work.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lungct.errors import DataError, printable
from lungct.phantom.categories import CLASS_MIX, class_counts
from lungct.phantom.render import MAX_MATRIX, MIN_MATRIX
from lungct.phantom.writing import REGISTRY_COLUMNS, generate_phantoms
from lungct.signals import run_terminable


def _parser() -> argparse.ArgumentParser:
    mix = ", ".join(f"{c} {round(100 * f)}%" for c, f in CLASS_MIX.items())
    parser = argparse.ArgumentParser(
        prog="python -m lungct.phantom",
        description=(
            "Write synthetic chest-CT phantoms in the MosMedData layout: OUT/studies/CT-0..CT-4/"
            "study_NNNN.nii.gz (int16 HU) and OUT/dataset_registry.csv (UTF-8 with BOM; columns "
            f"{','.join(REGISTRY_COLUMNS)}). Class mix: {mix}. Slices are 8-10 mm apart (30-45 slices) "
            "and the field of view 330-380 mm, as in MosMedData."
        ),
        epilog=(
            "Size trade-off: real scans are 512x512 at ~0.7 mm, but scanner noise does not compress and "
            "200 such phantoms take over a gigabyte. The default --matrix 256 (about 1.3-1.5 mm pixels) "
            "keeps 200 phantoms under 300 MB and loses nothing at the loader's ~128-pixel input; "
            "--matrix 512 gives ~0.7 mm pixels and about 4x the size and time. An existing --out must be "
            "empty or hold an earlier phantom set, which is replaced."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the set into (required)")
    parser.add_argument("--n", type=int, default=200, help="number of phantoms (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set (default: 0)")
    parser.add_argument("--matrix", type=int, default=256,
                        help=f"in-plane voxels per side, {MIN_MATRIX}..{MAX_MATRIX} (default: 256)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes (default: all CPU cores, {os.cpu_count()} here)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    problem = None
    if args.n < 1:
        problem = f"--n must be at least 1, got {args.n}"
    elif not MIN_MATRIX <= args.matrix <= MAX_MATRIX:
        problem = f"--matrix must be in {MIN_MATRIX}..{MAX_MATRIX}, got {args.matrix}"
    elif args.workers is not None and args.workers < 1:
        problem = f"--workers must be at least 1, got {args.workers}"
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    return run_terminable(lambda: _generate(parser.prog, args))


def _generate(prog: str, args: argparse.Namespace) -> int:
    """Write the set; the exit status (SIGTERM arrives here as Ctrl-C does: see lungct.signals)."""
    try:
        infos = generate_phantoms(args.out, args.n, args.seed, matrix=args.matrix, workers=args.workers,
                                  progress=not args.no_progress)
    except DataError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: {printable(str(e.strerror or e))} ({printable(str(e.filename or args.out))})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no registry was written", file=sys.stderr)
        return 130
    counts = ", ".join(f"{c} {k}" for c, k in class_counts(args.n).items() if k)
    print(f"wrote {len(infos)} phantoms to {printable(str(args.out))} ({counts})")
    return 0

