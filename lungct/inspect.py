"""``python -m lungct.inspect ROOT_OR_MANIFEST``: what a data set holds, and what would be skipped.

Prints counts per category, the labels under the task, a summary of shapes, spacings and
orientations, and every skipped file with its reason. Reading validates every image in full (a
truncated file only shows there); what it finds is cached, so a second look is instant. The counts
come from the same discovery and the same reader that training uses, so they are what it would use.
Given one NIfTI file, prints its geometry, or why it cannot be used. A scan too short along the body axis
to be a chest CT is skipped with that reason; one covering less than half a chest is listed with a warning
(``lungct.nifti.MIN_SLICES``, ``MIN_BODY_AXIS_MM``, ``CHEST_BODY_AXIS_MM``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from lungct.dataset import read_metas
from lungct.discover import Discovery, discover, is_nifti
from lungct.errors import DataError, ScanError, printable
from lungct.nifti import ScanMeta, coverage_warning, read_scan
from lungct.records import CATEGORIES, TASKS, Skipped, get_task

LAYOUT_NAMES = {"mosmeddata": "MosMedData", "folders": "category folders", "manifest": "CSV manifest"}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m lungct.inspect``."""
    p = argparse.ArgumentParser(prog="python -m lungct.inspect", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("root", metavar="ROOT_OR_MANIFEST",
                   help="data folder (MosMedData or category folders), CSV manifest, or one NIfTI scan")
    p.add_argument("--task", default="course", choices=sorted(TASKS),
                   help="which categories each label holds (lungct.records.TASKS)")
    p.add_argument("--cache-dir", default="studies/cache", help="where what was read is cached")
    p.add_argument("--workers", type=int, default=None, help="processes reading scans (default: all cores)")
    p.add_argument("--no-read", action="store_true", help="list files only; do not read and validate images")
    return p


def _range(values: list[float], fmt: str = "{:g}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}..{fmt.format(hi)}"


def format_report(found: Discovery, metas: dict[str, ScanMeta | str] | None) -> str:
    """The inspection report as text."""
    task = found.task
    bad = {p: m for p, m in (metas or {}).items() if isinstance(m, str)}
    all_records = found.records + found.excluded
    lines = [f"{printable(str(found.root))}  (layout: {LAYOUT_NAMES[found.layout]}; "
             f"task {task.name}: {task.description})", ""]
    lines.append(f"{'category':<10}{'scans':>7}{'unreadable':>12}  under the task")
    by_cat = Counter(r.category or f"label {r.label}" for r in all_records)
    bad_by_cat = Counter(r.category or f"label {r.label}" for r in all_records if r.path in bad)
    known = (*CATEGORIES, "CT-23")
    order = [c for c in known if c in by_cat] + sorted(c for c in by_cat if c not in known)
    for cat in order:
        if cat.startswith("CT-"):
            label = task.label(cat)
            role = "excluded" if label is None else f"label {label}"
        else:
            role = "given by the manifest"
        lines.append(f"{cat:<10}{by_cat[cat]:>7}{bad_by_cat[cat]:>12}  {role}")
    used = [r for r in found.records if r.path not in bad]
    per_label = ", ".join(f"label {k}: {sum(r.label == k for r in used)}" for k in range(task.n_grades))
    lines.append(f"{'total':<10}{len(all_records):>7}{len(bad):>12}")
    lines += ["", f"usable under the task: {len(used)} ({per_label}); "
              f"excluded by the task: {len(found.excluded)}; skipped: {len(found.skipped) + len(bad)}"]
    good = [m for m in (metas or {}).values() if isinstance(m, ScanMeta)]
    if good:
        shapes = Counter("x".join(map(str, m.shape)) for m in good)
        orient = Counter(m.orientation for m in good)
        lines += [
            "", f"geometry of {len(good)} readable scans (file axis order i x j x k):",
            f"  shape: {', '.join(f'{s} ({n})' for s, n in shapes.most_common(4))}"
            + (f", {len(shapes) - 4} other shapes" if len(shapes) > 4 else ""),
            f"  spacing (mm): i {_range([m.spacing[0] for m in good], '{:.3g}')}, "
            f"j {_range([m.spacing[1] for m in good], '{:.3g}')}, k {_range([m.spacing[2] for m in good], '{:.3g}')}",
            f"  orientation: {', '.join(f'{o} ({n})' for o, n in orient.most_common())}",
            f"  stored dtype: {', '.join(f'{d} ({n})' for d, n in Counter(m.dtype for m in good).most_common())}",
            f"  HU range: {min(m.hu_min for m in good):g} .. {max(m.hu_max for m in good):g}",
            f"  body axis (mm): {_range([m.body_axis_mm for m in good])}",
        ]
    short = {p: w for p, m in (metas or {}).items() if isinstance(m, ScanMeta) and (w := coverage_warning(m))}
    if short:
        lines += ["", f"used, with a warning ({len(short)}):"]
        lines += [f"  {printable(p)}: {w}" for p, w in sorted(short.items())]
    skipped = found.skipped + [Skipped(p, r) for p, r in sorted(bad.items())]
    if skipped:
        lines += ["", f"skipped ({len(skipped)}):"] + [f"  {s}" for s in skipped]
    return "\n".join(lines)


def format_scan(path: Path, meta: ScanMeta) -> str:
    """What one readable scan holds, as text."""
    return "\n".join([
        printable(str(path)),
        f"  shape: {'x'.join(map(str, meta.shape))} (file axis order i x j x k)",
        f"  spacing (mm): {' x '.join(f'{s:.3g}' for s in meta.spacing)}",
        f"  orientation: {meta.orientation}; stored dtype: {meta.dtype}",
        f"  HU range: {meta.hu_min:g} .. {meta.hu_max:g}",
        f"  body axis: {meta.body_axis_slices} slices, {meta.body_axis_mm:g} mm",
        *([f"  warning: {coverage_warning(meta)}"] if coverage_warning(meta) else []),
    ])


def _inspect_scan(path: Path) -> int:
    """Inspect one scan given on its own: its geometry, or a one-line error naming it."""
    try:
        meta = read_scan(str(path))[1]
    except ScanError as e:
        print(f"error: {printable(str(path))}: {e}", file=sys.stderr)
        return 2
    print(format_scan(path, meta))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Inspect a data set, or one scan; print the report. Returns the exit code."""
    args = build_parser().parse_args(argv)
    if is_nifti(Path(args.root)) and Path(args.root).is_file():
        return _inspect_scan(Path(args.root))
    try:
        found = discover(Path(args.root), get_task(args.task))
        metas = None if args.no_read else read_metas(found.records + found.excluded, args.cache_dir,
                                                       workers=args.workers, progress=sys.stderr.isatty())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(found, metas))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
