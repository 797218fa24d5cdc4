"""``python -m search.predict MODEL_DIR SCAN [SCAN ...]``: per scan, the probability of findings and the routing.

Each NIfTI scan goes through the exported preprocessing (HU window, resize) and the exported model;
the result is the probability of the positive class (CT-2 or CT-3 for the course task), the predicted
class at the model's threshold, and the decision that the course's severity table gives for that class.
A binary model cannot tell CT-2 from CT-3, so a positive scan gets both decisions. A scan that cannot
be read is reported on one line and skipped; the others are still predicted. ``--saliency OUT_DIR``
also writes, per scan, a PNG montage of axial slices with a Grad-CAM++ map of where the evidence for
the positive class sits (``search.model.saliency``).

A severity model (an ordinal task, ``--task severity`` in the search) gives instead the probability of
each grade, the predicted grade (the median of that distribution: the number of k with P(grade >= k) >=
0.5, always one of the grades the model was trained on) and the routing decision for that grade; its
top grade pools CT-3 with CT-4, so it lists both decisions. Its saliency maps the evidence for a higher
grade: the one severity logit that every "grade >= k" shares.

The model folder is untrusted input (``search.model.folder.load_model``): a file that is not a regular file
inside the folder, a field out of range, a task whose classes contradict it, weights that are not the
spec's, a key that misspells a known one, or a network that would need more memory than ``--max-memory-gb``
(default: half this machine's) is refused with one line naming the file and the field, before the network
is built; a ``preprocess.json`` without a threshold is said in one line, and the model predicts at 0.5. A
scan whose decoding would take more than the same cap (its voxels as stored plus float32 working copies,
``lungct.nifti.decoded_bytes``) is refused before its data is read; one too short along the body axis to be
a chest CT is refused, and one that covers less than half a chest is predicted with a warning
(``lungct.nifti.MIN_SLICES``, ``MIN_BODY_AXIS_MM``, ``CHEST_BODY_AXIS_MM``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from lungct.errors import UsageError, printable
from search.cli import EXIT_FAILED, EXIT_OK, command_parser, exit_code
from search.model.folder import MEMORY_SHARE, ModelInfo, OptionalFiles, read_optional
from search.model.prediction import Prediction, predict_all
from search.model.routing import CLINICAL_NOTE, DISCLAIMER
from search.model.saliency import METHOD


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.predict``."""
    p = command_parser("search.predict", __doc__, epilog=f"{DISCLAIMER} Exit code: 0 all scans predicted, 1 some "
                       "scan failed, 2 bad arguments or model folder, 130 interrupted.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by python -m search.export "
                   "(e.g. studies/lungct/model)")
    p.add_argument("scans", metavar="SCAN", nargs="+", help="NIfTI chest CT scans in HU (.nii or .nii.gz)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table (default: table)")
    p.add_argument("--saliency", metavar="OUT_DIR", help="also write per scan OUT_DIR/<scan>.saliency.png: axial "
                   "slices of what the model saw with a Grad-CAM++ map of where the evidence for the positive "
                   "class (a severity model: for a higher grade) sits, the probability and decision in the title "
                   "(created if missing; default: off)")
    p.add_argument("--max-memory-gb", type=float, metavar="GB", help="the most memory (GB) the model may need "
                   "for one scan, weights and activations, as space.cost.memory counts them, and the most decoding "
                   "a scan may take, its voxels as stored plus float32 working copies; a model folder or a scan "
                   f"asking for more is refused (default: {MEMORY_SHARE:g} of this machine's memory)")
    return p


def format_table(predictions: list[Prediction], info: ModelInfo) -> str:
    """A table: scan, P(positive class), predicted class, decision."""
    if info.ordinal:
        return format_grade_table(predictions, info)
    headers = ("scan", f"P({info.classes[1]})", "predicted class", "decision")
    rows = [(p.path, f"{p.probability:.3f}", p.predicted_class, p.decision) for p in predictions]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
    lines = []
    for r in [headers, *rows]:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return "\n".join(lines)


def format_grade_table(predictions: list[Prediction], info: ModelInfo) -> str:
    """A severity model's table: scan, P(grade) for each grade, the median grade, its decision."""
    headers = ("scan", *(f"P({name})" for name in info.classes), "median grade", "decision")
    rows = []
    for p in predictions:
        probs = p.grade_probabilities
        assert probs is not None  # a severity model's predictions have them
        rows.append((p.path, *(f"{probs[name]:.3f}" for name in info.classes), p.predicted_class, p.decision))
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for r in [headers, *rows]:
        cells = [f"{r[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(r[1:-2], widths[1:-1], strict=True)),
                 f"{r[-2]:<{widths[-1]}}", r[-1]]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _header(model_dir: str, info: ModelInfo, optional: OptionalFiles) -> str:
    size = "x".join(map(str, info.preprocess.size))
    if info.ordinal:
        what = (f"task {info.task}: grades {' < '.join(info.classes)}; {size} input; predicted grade: the median "
                "grade, the highest grade k with P(grade >= k) >= 0.5")
    else:
        what = (f"task {info.task}: {info.classes[0]} vs {info.classes[1]}; {size} input; "
                f"predicted class {info.classes[1]} when P >= {info.threshold:g}")
    lines = [DISCLAIMER, f"model: {printable(model_dir)} ({what})"]
    if optional.trained_on_phantoms:
        lines.append("this model was trained on synthetic phantoms: its probabilities on real scans mean nothing")
    lines += [printable(note) for note in optional.notes]
    lines.append(CLINICAL_NOTE)
    return "\n".join(lines)


def print_results(model_dir: str, info: ModelInfo, predictions: list[Prediction], errors: list[dict], *,
                  as_json: bool = False, saliency_dir: str | None = None) -> None:
    """The table (or, ``as_json``, one JSON object) on stdout."""
    optional = read_optional(model_dir)
    if as_json:
        grades = ({"grades": [list(g) for g in info.grades],
                   "grade_rule": "median: the number of k with P(grade >= k) >= 0.5"} if info.ordinal else {})
        print(json.dumps({
            "disclaimer": DISCLAIMER, "routing_note": CLINICAL_NOTE,
            "model_dir": model_dir, "task": info.task, "classes": list(info.classes), **grades,
            "threshold": info.threshold, "trained_on_phantoms": optional.trained_on_phantoms,
            "notes": [f"warning: {w}" for w in info.warnings] + list(optional.notes),
            "results": [p.to_dict() for p in predictions], "errors": errors,
        }, indent=2, allow_nan=False, default=_json_number))
        return
    print(_header(model_dir, info, optional))
    if predictions:
        print()
        print(format_table(predictions, info))
    if saliency_dir and predictions:
        print(f"\nsaliency montages ({METHOD}) in {saliency_dir}: "
              + ", ".join(Path(p.saliency).name for p in predictions if p.saliency))


def main(argv: list[str] | None = None) -> int:
    """Predict each scan. Returns the exit code: 0 all predicted, 1 some scan failed, 2 bad arguments."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.max_memory_gb is not None and not (math.isfinite(args.max_memory_gb) and args.max_memory_gb > 0):
            raise UsageError(f"--max-memory-gb: expected a positive number of GB, got {args.max_memory_gb}")
        cap = None if args.max_memory_gb is None else int(args.max_memory_gb * 1e9)
        info, predictions, errors = predict_all(args.model_dir, args.scans, args.saliency, cap)
        print_results(args.model_dir, info, predictions, errors, as_json=args.json, saliency_dir=args.saliency)
        return EXIT_FAILED if errors else EXIT_OK

    return exit_code(body, interrupted="interrupted: the scans listed above were predicted")


def _json_number(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
