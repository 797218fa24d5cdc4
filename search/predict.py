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
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lungct.errors import ScanError, UsageError, printable
from lungct.nifti import coverage_warning, preprocess, read_scan
from lungct.records import PreprocessConfig
from search.cli import EXIT_FAILED, EXIT_OK, command_parser, exit_code
from search.model.folder import (
    MEMORY_SHARE,
    ModelInfo,
    OptionalFiles,
    default_memory_cap,
    load_model,
    read_optional,
)
from search.model.routing import CLINICAL_NOTE, DISCLAIMER, decision_text, decisions
from search.model.saliency import (
    METHOD,
    ORDINAL_TARGET,
    SaliencyMapper,
    grade_text,
    montage_name,
    plot_montage,
    save_figure,
)
from search.stats.metrics import grade_distribution, predicted_grade, severity_score
from search.training.loop import predict_probs

CPU = torch.device("cpu")


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


@dataclass(frozen=True)
class Prediction:
    """What the model says about one scan.

    Attributes:
        path: The scan as given.
        probability: P(label 1), e.g. of CT-2 or CT-3 findings for the course task; for a severity model, the
            probability of the predicted grade.
        label: 1 when ``probability`` reaches the model's threshold, else 0; for a severity model, the
            predicted grade 0..K-1 (the median grade).
        predicted_class: The class name of ``label`` (``CT-0``, ``CT-2 or CT-3``; ``CT-3 or CT-4``).
        decision: The routing table's decision(s) for that class, as one line.
        decisions: Category -> decision, for the categories of the class that the table defines.
        shape: The scan's shape as stored (i, j, k).
        spacing_mm: Its voxel spacing as stored.
        orientation: Its stored axis codes (the model sees it reoriented to RAS).
        saliency: The saliency montage written for it (``--saliency``), else None.
        body_axis_mm: How far the scan reaches along the body axis (``lungct.nifti.ScanMeta``).
        warnings: One line each about what makes this prediction doubtful (a scan shorter than a chest).
        grade_probabilities: A severity model's P(grade) for each grade, by name; None for a binary model.
        at_least: A severity model's P(grade >= k), k = 1..K-1, by the name of grade k.
        expected_grade: A severity model's expected grade (0..K-1), the score that ranks scans.
    """

    path: str
    probability: float
    label: int
    predicted_class: str
    decision: str
    decisions: dict[str, str]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    saliency: str | None = None
    body_axis_mm: float | None = None
    warnings: tuple[str, ...] = ()
    grade_probabilities: dict[str, float] | None = None
    at_least: dict[str, float] | None = None
    expected_grade: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        if self.grade_probabilities is not None:
            return {"path": self.path, "grade_probabilities": self.grade_probabilities,
                    "probability_at_least": self.at_least, "expected_grade": self.expected_grade,
                    "predicted_grade": self.predicted_class, "grade": self.label,
                    "grade_rule": "median: the number of k with P(grade >= k) >= 0.5",
                    "probability": self.probability, "decision": self.decision, "decisions": self.decisions,
                    "scan": {"shape": list(self.shape), "spacing_mm": list(self.spacing_mm),
                             "orientation": self.orientation, "body_axis_mm": self.body_axis_mm},
                    "saliency": self.saliency, "warnings": list(self.warnings)}
        return {"path": self.path, "probability": self.probability, "predicted_class": self.predicted_class,
                "label": self.label, "decision": self.decision, "decisions": self.decisions,
                "scan": {"shape": list(self.shape), "spacing_mm": list(self.spacing_mm),
                         "orientation": self.orientation, "body_axis_mm": self.body_axis_mm},
                "saliency": self.saliency, "warnings": list(self.warnings)}


def predict_scan(model: torch.nn.Module, config: PreprocessConfig, info: ModelInfo, path: str,
                 saliency: Saliency | None = None, max_scan_bytes: int | None = None, cap_note: str = "") -> Prediction:
    """Read, preprocess and classify one scan; with ``saliency``, also write its saliency montage.

    Args:
        max_scan_bytes: The most memory decoding the scan may take (``lungct.nifti.decoded_bytes``); None: no cap
            but ``lungct.nifti.MAX_VOXELS``.
        cap_note: Where that cap comes from, for the refusal.

    Raises:
        ScanError: The file is not a usable 3D CT volume in HU, or decoding it would take more than
            ``max_scan_bytes``; the message is the reason.
    """
    volume_hu, meta = read_scan(path, max_scan_bytes, cap_note)
    warning = coverage_warning(meta)
    volume = torch.from_numpy(preprocess(volume_hu, config))[None, None]  # (1, 1, D, H, W) float16, as in training
    probs = predict_probs(model, volume, CPU, batch_size=1, amp=False)  # (1,), or (1, K-1) P(grade >= k)
    if info.ordinal:
        if not np.all(np.isfinite(probs)):
            raise ScanError(f"the model's outputs are not finite numbers ({probs.ravel().tolist()}) for this scan")
        prediction = _graded(path, probs, info, meta, warning)
    else:
        probability = float(probs[0])
        if not math.isfinite(probability):
            raise ScanError(f"the model's output is not a finite number ({probability}) for this scan")
        label = int(probability >= info.threshold)
        categories = info.positive if label else info.negative
        prediction = Prediction(path, probability, label, info.classes[label], decision_text(categories),
                                decisions(categories), meta.shape, meta.spacing, meta.orientation,
                                body_axis_mm=meta.body_axis_mm, warnings=(warning,) if warning else ())
    if saliency is None:
        return prediction
    return replace(prediction, saliency=str(saliency.write(path, volume, prediction, info)))


def _graded(path: str, cumulative: np.ndarray, info: ModelInfo, meta, warning: str | None) -> Prediction:
    """A severity model's prediction from its (1, K-1) P(grade >= k): the grade distribution and the median grade.

    The grade is :func:`search.stats.metrics.predicted_grade`, a count of thresholds in 0..K-1, so it is always
    one of the model's grades; its decision lists each category's of a pooled grade (CT-3 or CT-4).
    """
    cumulative = np.asarray(cumulative, dtype=np.float64).reshape(1, -1)
    if cumulative.shape[1] != info.n_grades - 1:
        raise ScanError(f"the model gives {cumulative.shape[1]} outputs per scan, its task {info.task!r} "
                        f"{info.n_grades - 1}")
    shares = grade_distribution(cumulative)[0]
    grade = int(predicted_grade(cumulative)[0])
    categories = info.grades[grade]
    return Prediction(
        path, round(float(shares[grade]), 6), grade, info.classes[grade], decision_text(categories),
        decisions(categories), meta.shape, meta.spacing, meta.orientation, body_axis_mm=meta.body_axis_mm,
        warnings=(warning,) if warning else (),
        grade_probabilities={name: float(p) for name, p in zip(info.classes, shares, strict=True)},
        at_least={name: float(p) for name, p in zip(info.classes[1:], cumulative[0], strict=True)},
        expected_grade=float(severity_score(cumulative)[0]))


class Saliency:
    """Writes saliency montages of one model into one folder, each scan under its own name."""

    def __init__(self, model: torch.nn.Module, out_dir: Path):
        self.mapper = SaliencyMapper(model)
        self.out_dir = out_dir
        self.taken: set[str] = set()

    def write(self, path: str, volume: torch.Tensor, prediction: Prediction, info: ModelInfo) -> Path:
        """Compute the map of ``volume`` (1, 1, D, H, W), draw the montage, write it; the file written."""
        saliency = self.mapper(volume)
        if info.ordinal:
            assert prediction.at_least is not None  # an ordinal model's predictions have it
            at_least = np.array(list(prediction.at_least.values()))
            subtitle = (f"{grade_text(info.classes, at_least)}: median grade {prediction.predicted_class} -> "
                        f"{prediction.decision}. {METHOD} of {ORDINAL_TARGET} at {self.mapper.layer}.")
        else:
            subtitle = (f"P({info.classes[1]}) = {prediction.probability:.3f}: predicted {prediction.predicted_class} "
                        f"(threshold {info.threshold:g}) -> {prediction.decision}. {METHOD} of the "
                        f"{info.classes[1]} logit at {self.mapper.layer}.")
        fig = plot_montage(volume[0, 0].float().numpy(), saliency, Path(path).name, subtitle)
        out = self.out_dir / montage_name(path, self.taken)
        save_figure(fig, out)
        return out


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


def predict_all(model_dir: str, scans: list[str], saliency_dir: str | None = None,
                max_memory_bytes: int | None = None) -> tuple[ModelInfo, list[Prediction], list[dict]]:
    """Load the model once and predict every scan; a scan that cannot be read is an error entry, not an exception.

    The same cap, ``max_memory_bytes`` (None: half this machine's memory), bounds the network's memory for one scan
    and the memory decoding each scan takes; a scan above it is an error entry, refused before its data is read.
    What the model folder left to a default (``info.warnings``: no threshold) is said on stderr, one line each.

    Returns:
        What the model predicts (its info), the predictions, and ``{"path", "error"}`` per scan that failed.

    Raises:
        ModelDirError: The model folder is unusable, or its network needs more than ``max_memory_bytes``
            for one scan.
        UsageError: ``saliency_dir`` cannot be created.
    """
    model, config, info = load_model(model_dir, max_memory_bytes, gradients=bool(saliency_dir))
    for warning in info.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr, flush=True)
    scan_cap, cap_note = ((max_memory_bytes, "--max-memory-gb") if max_memory_bytes is not None else
                          (default_memory_cap(), f"{MEMORY_SHARE:g} of this machine's memory; --max-memory-gb "
                                                 "raises it"))
    saliency = None
    if saliency_dir:
        try:
            Path(saliency_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--saliency: cannot create {saliency_dir}: {e.strerror or e}") from None
        saliency = Saliency(model, Path(saliency_dir))
    predictions: list[Prediction] = []
    errors: list[dict] = []
    for path in scans:
        try:
            predictions.append(predict_scan(model, config, info, path, saliency, scan_cap, cap_note))
            for warning in predictions[-1].warnings:
                print(f"warning: {printable(path)}: {warning}", file=sys.stderr, flush=True)
        except ScanError as e:
            errors.append({"path": path, "error": str(e)})
            print(f"error: {path}: {e}", file=sys.stderr, flush=True)
    return info, predictions, errors


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
