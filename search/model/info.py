"""``preprocess.json``: what a model folder says about its input and output (:class:`ModelInfo`), field by field.

Reading it checks every field that predict relies on: the format version, the task with its categories and
class names (``search.model.routing``), the HU window, the input size and the threshold. Writing it also
describes the network's input and output for runtimes other than this package.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import sys
from dataclasses import dataclass

from lungct.records import PreprocessConfig, Task, get_task
from search.model.onnx_export import ONNX_INPUT, ONNX_OUTPUT
from search.model.routing import check_classes, check_grades, class_names
from search.model.untrusted import check_spelling

FORMAT_VERSION = 1
# The keys of preprocess.json (ModelInfo.to_dict) and of its "preprocess" entry (PreprocessConfig.to_dict).
PREPROCESS_KEYS = ("format_version", "preprocess", "task", "task_description", "negative", "positive", "classes",
                   "grades", "threshold", "input", "output")
PREPROCESS_CONFIG_KEYS = ("size", "hu_min", "hu_max")
# The largest input size a model folder may ask for: 16x the seed's 64x128x128 (256 MiB of float32 per
# scan, about 4 GiB per 64-channel feature map). A larger size is a corrupt or hostile preprocess.json,
# on which predict would try to allocate tens of GB.
MAX_INPUT_VOXELS = 256**3
# HU windows outside this range are no CT window (CT stores about -1024..3071, metal up to ~30,000).
HU_RANGE = (-4096.0, 32767.0)


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder says about its input and output (``preprocess.json``).

    Attributes:
        preprocess: HU window and input size (D, H, W) the model was trained at.
        task: Task name (``lungct.records.TASKS``).
        task_description: The task in words.
        negative: Categories of label 0.
        positive: Categories of label 1 (every grade above 0 for an ordinal task).
        classes: Names of label 0 and label 1, e.g. ``("CT-0", "CT-2 or CT-3")``; for an ordinal task the
            names of grades 0..K-1 (``("CT-0", "CT-1", "CT-2", "CT-3 or CT-4")``).
        threshold: P(label 1) at or above which label 1 is predicted; for an ordinal task, P(grade >= k) at
            or above which grade k is reached (0.5: the median grade, ``search.stats.metrics.predicted_grade``).
        grades: The categories of each label in order (``Task.grades``); empty means ``(negative, positive)``.
        warnings: One line each about what the file left to a default (no threshold: 0.5); not compared.
    """

    preprocess: PreprocessConfig
    task: str
    task_description: str
    negative: tuple[str, ...]
    positive: tuple[str, ...]
    classes: tuple[str, ...]
    threshold: float = 0.5
    grades: tuple[tuple[str, ...], ...] = ()
    warnings: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.grades:
            object.__setattr__(self, "grades", (tuple(self.negative), tuple(self.positive)))

    @property
    def n_grades(self) -> int:
        """K, the labels the model tells apart (2 for a binary model)."""
        return len(self.grades)

    @property
    def ordinal(self) -> bool:
        """Whether the model grades K > 2 ordered grades: it outputs K-1 cumulative logits."""
        return self.n_grades > 2

    @classmethod
    def for_task(cls, task: Task, preprocess: PreprocessConfig, threshold: float = 0.5) -> ModelInfo:
        """The info of a model trained on ``task`` with ``preprocess``."""
        return cls(preprocess, task.name, task.description, tuple(task.negative), tuple(task.positive),
                   class_names(task), threshold, task.grades)

    def to_dict(self) -> dict:
        """JSON-ready dict, with a description of the model's input and output for other runtimes.

        A binary model's dict is the one this format always had; an ordinal model's lists its grades (the
        categories and the name of each) in place of negative and positive, and describes its K-1 outputs.
        """
        d, h, w = self.preprocess.size
        head = {"format_version": FORMAT_VERSION, "preprocess": self.preprocess.to_dict(), "task": self.task,
                "task_description": self.task_description}
        if self.ordinal:
            head |= {"grades": [list(g) for g in self.grades], "classes": list(self.classes)}
            cuts = self.n_grades - 1
            output = {"name": ONNX_OUTPUT, "shape": ["batch", cuts],
                      "meaning": f"cumulative logits of grade >= k, k = 1..{cuts} (one severity score plus "
                                 "decreasing cutpoints); P(grade >= k) = sigmoid(logit[k-1]), P(grade = k) = "
                                 "P(grade >= k) - P(grade >= k+1); predicted grade: the median, the number of k "
                                 f"with P(grade >= k) >= {self.threshold:g}"}
        else:
            head |= {"negative": list(self.negative), "positive": list(self.positive), "classes": list(self.classes)}
            output = {"name": ONNX_OUTPUT, "shape": ["batch"],
                      "meaning": "logit of label 1; P(label 1) = sigmoid(logit)"}
        return head | {
            "threshold": self.threshold,
            "input": {
                "name": ONNX_INPUT, "shape": ["batch", 1, d, h, w], "dtype": "float32",
                "steps": "read NIfTI; reorient to RAS (nibabel as_closest_canonical); transpose (x, y, z) to "
                         "(z, y, x) = (D, H, W); clip to [hu_min, hu_max] and scale to [0, 1]; resize to size "
                         "(area averaging along axes that shrink, then trilinear along axes that grow)",
            },
            "output": output,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        """Inverse of :meth:`to_dict`, checking every field that predict relies on.

        The format version must be :data:`FORMAT_VERSION`; the task must be known, and its categories,
        class names and description must be the task's own (:func:`search.model.routing.check_classes`; for an
        ordinal task every grade's categories, in order, and name: :func:`search.model.routing.check_grades`),
        so a folder cannot relabel CT-0 as the positive class or reorder the grades; the threshold lies
        strictly inside (0, 1), since at 0 or 1 every scan gets the same class, and is 0.5 for an ordinal
        task, whose predicted grade is the median. A key it does not know is ignored, unless it misspells one
        it knows (:func:`check_spelling`). Without a threshold the model predicts at 0.5, and ``warnings``
        says so.

        Raises:
            KeyError, TypeError, ValueError: A field is missing or invalid, or a key misspells a field; a
                ValueError names the field.
        """
        check_spelling(data, PREPROCESS_KEYS)
        version = data.get("format_version")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise ValueError(f"format_version: {'missing' if version is None else f'unknown {version!r}'}; this "
                             f"version of search.predict reads format {FORMAT_VERSION} (export the model again, "
                             "or use the version of this package that wrote it)")
        pre = data["preprocess"]
        if isinstance(pre, dict):
            check_spelling(pre, PREPROCESS_CONFIG_KEYS, "preprocess.")
        if not isinstance(pre, dict) or set(pre) != set(PREPROCESS_CONFIG_KEYS):
            raise ValueError(f"preprocess: expected an object with exactly size, hu_min and hu_max, got "
                             f"{sorted(pre) if isinstance(pre, dict) else pre!r}")
        size = _input_size(pre["size"])
        hu_min, hu_max = (_number(f"preprocess.{k}", pre[k], *HU_RANGE) for k in ("hu_min", "hu_max"))
        if not hu_min < hu_max:
            raise ValueError(f"preprocess.hu_min: the HU window must run upwards, got [{hu_min:g}, {hu_max:g}]")
        if not isinstance(data["task"], str):
            raise ValueError(f"task: expected a task name, got {data['task']!r}")
        task = get_task(data["task"])
        classes = data["classes"]
        if task.ordinal:
            grades, classes = _ordinal_classes(task, data)
        else:
            if not isinstance(classes, list) or len(classes) != 2 or not all(isinstance(c, str) for c in classes):
                raise ValueError(f"classes: expected the names of label 0 and label 1, got {classes!r}")
            negative, positive = _names("negative", data["negative"]), _names("positive", data["positive"])
            check_classes(task, negative, positive, (classes[0], classes[1]))
            grades, classes = (negative, positive), (classes[0], classes[1])
        description = data.get("task_description", task.description)
        if description != task.description:
            raise ValueError(f"task_description: {description!r} is not task {task.name!r}'s "
                             f"({task.description!r})")
        threshold = _number("threshold", data.get("threshold", 0.5), 0.0, 1.0)
        defaulted = () if "threshold" in data or task.ordinal else (  # an ordinal model's is 0.5 by its rule
            "threshold: missing (python -m search.export writes one); predicting at the default of 0.5, which "
            "may not be the threshold this model was chosen at",)
        if threshold in (0.0, 1.0):
            raise ValueError(f"threshold: expected a number strictly between 0 and 1, got {threshold:g} "
                             "(every scan would get the same class)")
        if task.ordinal and threshold != 0.5:
            raise ValueError(f"threshold: an ordinal model predicts the median grade (P(grade >= k) >= 0.5), got "
                             f"{threshold:g}")
        return cls(PreprocessConfig(size, hu_min, hu_max), task.name, task.description, grades[0],
                   tuple(c for g in grades[1:] for c in g), classes, threshold, grades, defaulted)


def _ordinal_classes(task: Task, data: dict) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """An ordinal folder's grades and grade names, checked against ``task`` (and its negative/positive, if given).

    Raises:
        KeyError, ValueError: A field is missing, malformed or contradicts the task; the message names it.
    """
    k = task.n_grades
    raw, classes = data["grades"], data["classes"]
    if not isinstance(raw, list) or len(raw) != k:
        raise ValueError(f"grades: expected the categories of each of task {task.name!r}'s {k} grades, got "
                         f"{str(raw)[:200]}")
    grades = tuple(_names(f"grades[{i}]", g) for i, g in enumerate(raw))
    if not isinstance(classes, list) or len(classes) != k or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes: expected the names of task {task.name!r}'s {k} grades, got {str(classes)[:200]}")
    check_grades(task, grades, tuple(classes))
    for field in ("negative", "positive"):  # not written for an ordinal task; refused if present and wrong
        if field in data and _names(field, data[field]) != getattr(task, field):
            raise ValueError(f"{field}: {data[field]} contradicts task {task.name!r}, whose {field} categories are "
                             f"{list(getattr(task, field))}")
    return grades, tuple(classes)


def _number(field: str, value: object, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a float if it is a finite number in [low, high]; else a ValueError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > sys.float_info.max \
            or not math.isfinite(value) or not low <= value <= high:
        where = f" in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else ""
        raise ValueError(f"{field}: expected a finite number{where}, got {reprlib.repr(value)}")
    return float(value)


def _input_size(value: object) -> tuple[int, int, int]:
    """A model's input (D, H, W): three positive integers, at most :data:`MAX_INPUT_VOXELS` voxels."""
    if not isinstance(value, list) or len(value) != 3 \
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"preprocess.size: expected three positive integers (D, H, W), got {value!r}")
    if math.prod(value) > MAX_INPUT_VOXELS:
        raise ValueError(f"preprocess.size: {'x'.join(map(str, value))} is {math.prod(value):,} voxels, above the "
                         f"cap of {MAX_INPUT_VOXELS:,} (search.model.folder.MAX_INPUT_VOXELS)")
    return value[0], value[1], value[2]


def _names(field: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field}: expected a list of category names, got {value!r}")
    return tuple(value)
