"""Predicting scans with a model folder: the probability of findings (or of each grade) and the routing decision.

:func:`predict_all` loads the folder once (``search.model.folder.load_model``, untrusted input) and predicts
each scan (:func:`predict_scan`): read and validated (``lungct.nifti``), preprocessed as in training, scored,
given the routing table's decision (``search.model.routing``), and with a saliency montage on request
(:class:`Saliency`). A scan that cannot be read is an error entry beside the others' predictions.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lungct.errors import ScanError, UsageError, printable
from lungct.nifti import coverage_warning, preprocess, read_scan
from lungct.records import PreprocessConfig
from search.model.folder import MEMORY_SHARE, ModelInfo, default_memory_cap, load_model
from search.model.routing import decision_text, decisions
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
