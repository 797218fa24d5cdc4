"""The exported model folder: what ``search.export`` writes and ``search.predict`` reads.

A model folder holds plain data only, so loading it never unpickles anything:

- ``spec.json``: the ArchSpec; ``space.build`` turns it back into the network.
- ``train_spec.json``: the optimiser settings it was trained with (provenance only).
- ``weights.safetensors``: the state dict, BatchNorm running statistics included.
- ``ensemble.json`` (only for an ensemble): how many members of the spec the weights hold (names
  ``members.<i>.<layer>``) and how their outputs combine (:class:`Ensemble`).
- ``preprocess.json``: the HU window and input size, the task, the class names and the threshold; for an
  ordinal task (severity grades), the categories and name of each grade, and the network outputs K-1
  cumulative logits of "grade >= k" in place of one logit.
- ``model.onnx``: the same network for deployment without this package (see :func:`export_onnx`).
- ``metrics.json`` and ``MODEL_CARD.md``: the locked-test evaluation and the model card.

Loading is ``build(spec, grades=K)`` (or an :class:`Ensemble` of it) then ``load_state_dict(strict=True)`` from
safetensors, never ``torch.load``.

Model folders are shared (handed in, passed on), so :func:`load_model` reads one as untrusted input and
checks it whole before it builds the network: each file it reads must be a regular file inside the
folder (not a link out of it, a device or a FIFO) under a size cap; JSON may not nest deeper than
:data:`MAX_JSON_DEPTH` or repeat a key, and a key it does not know is ignored (a later version may add one)
unless it nearly spells one it knows (``"Threshold"``, ``"treshold"``: :func:`check_spelling`), which is
refused, since ignoring it would silently drop what it says; every field is typed and range-checked, the
task, categories and class names agree (``search.model.routing.check_classes``; for an ordinal task every
grade's categories and name, ``check_grades``); the network's memory at its input size (``space.cost.memory``)
must fit a cap (half this machine's memory unless raised); and the weights' header must list exactly the spec's
tensor names, shapes and dtypes (an ordinal model's cutpoints included) before a tensor is read. A
refusal is a :class:`ModelDirError` whose message starts with the file's path and the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import json
import logging
import math
import os
import reprlib
import stat
import struct
import sys
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from lungct.errors import OneLineError, printable
from lungct.records import PreprocessConfig, Task, get_task
from search.model.routing import check_classes, check_grades, class_names
from space import ArchSpec, SpecInputError, SpecNet, TrainSpec, build, check_input_size, memory

FORMAT_VERSION = 1
SPEC = "spec.json"
TRAIN_SPEC = "train_spec.json"
WEIGHTS = "weights.safetensors"
PREPROCESS = "preprocess.json"
ONNX = "model.onnx"
METRICS = "metrics.json"
CARD = "MODEL_CARD.md"
ENSEMBLE = "ensemble.json"
MAX_MEMBERS = 50  # more is a corrupt or hostile ensemble.json (confirmation keeps at most 10 folds x repeats)
REQUIRED = (SPEC, WEIGHTS, PREPROCESS)
# The keys of preprocess.json (ModelInfo.to_dict) and of its "preprocess" entry (PreprocessConfig.to_dict).
PREPROCESS_KEYS = ("format_version", "preprocess", "task", "task_description", "negative", "positive", "classes",
                   "grades", "threshold", "input", "output")
PREPROCESS_CONFIG_KEYS = ("size", "hu_min", "hu_max")

# The ONNX graph's names; the batch axis is dynamic, the volume size is fixed by preprocess.json.
ONNX_INPUT = "volume"
ONNX_OUTPUT = "logit"
ONNX_STACK_TRACE = "pkg.torch.onnx.stack_trace"  # node metadata that torch's exporter writes
# Exported and reloaded models must agree this closely on the same input (float32 logits).
TOLERANCE = 1e-4
# The largest input size a model folder may ask for: 16x the seed's 64x128x128 (256 MiB of float32 per
# scan, about 4 GiB per 64-channel feature map). A larger size is a corrupt or hostile preprocess.json,
# on which predict would try to allocate tens of GB.
MAX_INPUT_VOXELS = 256**3
# Size caps of the files a model folder holds, as read; export writes a few kB of each JSON file (metrics.json
# holds the test ROC curves and calibration bins: tens of kB), so these leave room and bound what parsing costs.
MAX_JSON_BYTES = 1 << 20
MAX_METRICS_BYTES = 4 << 20
MAX_CARD_BYTES = 4 << 20
MAX_JSON_DEPTH = 32  # export's files nest 5 deep
# A safetensors header lists each tensor in about 100 bytes; 16 MiB is 160,000 tensors, 50 ensemble members of
# a net with 3,000 (safetensors itself allows 100 MB).
MAX_SAFETENSORS_HEADER = 16 << 20
SAFETENSORS_DTYPES = {torch.float32: ("F32", 4), torch.int64: ("I64", 8)}  # the dtypes a state dict here holds
# HU windows outside this range are no CT window (CT stores about -1024..3071, metal up to ~30,000).
HU_RANGE = (-4096.0, 32767.0)
# How close (difflib's ratio, after lower-casing) an unknown key must be to a known one to be taken for a misspelling
# of it and refused: one or two letters off in a word of six or more ("treshold", "threshhold"), or another case
# ("Threshold"); difflib's default of 0.6 would also take a new key such as "version" for "format_version".
NEAR_MISS_CUTOFF = 0.8
# The keys export writes in metrics.json, and in its "data" entry (search.export, search.shipping.metrics.data_entry).
METRICS_KEYS = ("format_version", "created", "study", "task", "test", "selection", "model", "baseline", "data",
                "training", "test_predictions", "export_check", "versions")
METRICS_DATA_KEYS = ("root", "layout", "task", "task_description", "size", "hu_window", "split_file", "split_seed",
                     "n_train", "n_val", "n_test", "loaded", "excluded", "skipped", "phantoms", "test_ids")
ENSEMBLE_KEYS = ("members", "combine")
# The default cap on a model's memory (weights plus activations of one scan, space.cost.memory): this share
# of the machine's memory, so that a hostile spec is refused instead of meeting the out-of-memory killer.
MEMORY_SHARE = 0.5


class Ensemble(torch.nn.Module):
    """Several trained copies of one spec whose P(label 1) is averaged; it outputs the logit of that mean.

    For an ordinal spec each member outputs (B, K-1) cumulative logits; the mean is taken elementwise,
    per "grade >= k", and an average of probabilities that fall with k falls with k too, so the
    ensemble's grade probabilities stay a proper distribution.

    The cross-validation fold models of the confirmation stage, shipped together (as nnU-Net ships its
    five fold models), so the exported model is the one whose out-of-fold score the confirmation
    measured. The logit of the mean probability is computed in log space,
    ``logsumexp(logsigmoid(z)) - logsumexp(logsigmoid(-z))``, exact where some probabilities round to 0
    or 1 in float32, and exported to ONNX from ops that onnxruntime computes to full relative precision
    (:func:`_log_sigmoid`); one output per scan (K-1 for an ordinal spec), so predict, the ONNX file and
    every metric treat it like a single model.
    """

    def __init__(self, members: Sequence[torch.nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("ensemble: needs at least one member")
        self.members = torch.nn.ModuleList(members)
        self.spec = getattr(members[0], "spec", None)  # every member is built from it
        self.grades = getattr(members[0], "grades", 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([m(x) for m in self.members]).float()  # (M, B), or (M, B, K-1) for an ordinal spec
        return _logsumexp0(_log_sigmoid(z)) - _logsumexp0(_log_sigmoid(-z))


def _log_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(z)) from exp and log alone, exact to float32 at any z.

    Not ``F.logsigmoid``: the ONNX exporter writes it as Log(Sigmoid(z)), and onnxruntime's fast sigmoid
    is exact only to about 1e-7 in absolute terms, so log(sigmoid(-24)) came out 0.5 off and an exported
    ensemble of three confident members disagreed with torch by 0.48 in the logit.
    """
    return torch.clamp(z, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(z)))


def _logsumexp0(v: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(v))) over dim 0, with the maximum taken out (plain ops, for the same reason)."""
    top = v.amax(dim=0)
    return top + torch.log(torch.exp(v - top).sum(dim=0))


def members_of(model: torch.nn.Module) -> int:
    """How many trained copies a model is: an :class:`Ensemble`'s members, else 1."""
    return len(model.members) if isinstance(model, Ensemble) else 1


class ModelDirError(OneLineError, ValueError):
    """A model folder is missing, incomplete, or does not match its own spec; the message says which file.

    Its text is one printable line (a tensor name or key from the folder cannot put control characters on the
    user's terminal)."""


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


def misspelt(key: str, known: Collection[str]) -> str | None:
    """The known key that ``key`` nearly spells (in another case, or :data:`NEAR_MISS_CUTOFF` close), else None."""
    if key in known:
        return None
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(key.lower(), lowered, n=1, cutoff=NEAR_MISS_CUTOFF)
    return lowered[close[0]] if close else None


def check_spelling(data: dict, known: Collection[str], where: str = "") -> None:
    """Refuse a key of ``data`` that misspells one of ``known``; any other unknown key is left to be ignored.

    An unknown key is ignored, so that a file a later version writes still reads; but one that nearly spells a
    known key (``"Threshold"``, ``"treshold"``) was meant as that key, and ignoring it would silently fall back to
    a default (a threshold of 0.5). ``where`` prefixes the key in the message (``"preprocess."``).

    Raises:
        ValueError: A key misspells a known one; the message names both.
    """
    for key in data:
        meant = misspelt(key, known)
        if meant is not None:
            raise ValueError(f"{where}{printable(key[:60])}: unknown key; did you mean {meant!r}? (an unknown key is "
                             "ignored, one this close to a known key is refused rather than silently dropped)")


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


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an exported model (its required files)."""
    return all((Path(path) / name).is_file() for name in REQUIRED)


def write_json(path: Path, data: dict) -> None:
    """Indented JSON with a trailing newline (the folder is renamed into place whole, so no temp file)."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_model(directory: str | Path, model: torch.nn.Module, spec: ArchSpec, train_spec: TrainSpec,
               info: ModelInfo) -> None:
    """Write the spec, training spec, weights and preprocessing of a model into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC).write_text(spec.to_json() + "\n")
    (directory / TRAIN_SPEC).write_text(train_spec.to_json() + "\n")
    # Training leaves tensors in channels-last layout; safetensors stores contiguous ones.
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "lungct-nas", "spec": spec.to_json(None)})
    write_json(directory / PREPROCESS, info.to_dict())
    if isinstance(model, Ensemble):
        combine = ("mean of sigmoid probabilities; the model outputs its logit" if model.grades <= 2 else
                   "mean of each sigmoid probability P(grade >= k) over the members; the model outputs their logits")
        write_json(directory / ENSEMBLE, {"members": members_of(model), "combine": combine})


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a file in a model folder, read as untrusted input.

    The file must resolve to a regular file inside its folder (a symbolic link may point within the folder,
    never out of it), hold at most ``max_bytes``, and is opened without following a link and without
    blocking, then checked again on the open descriptor, so a FIFO, a device such as /dev/zero or a file
    swapped in meanwhile is refused instead of read.

    Raises:
        ModelDirError: The file is missing, not a regular file inside the folder, too big, or unreadable;
            the message starts with its path.
    """
    folder = os.path.realpath(path.parent)
    target = os.path.realpath(path)
    if not os.path.lexists(path):
        raise ModelDirError(f"{path}: missing")
    if os.path.dirname(target) != folder and not target.startswith(folder + os.sep):
        raise ModelDirError(f"{path}: a symbolic link to {target}, outside the model folder; refused")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ModelDirError(f"{path}: unreadable ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
            raise ModelDirError(f"{path}: {kind}, not a regular file; refused")
        if st.st_size > max_bytes:
            raise ModelDirError(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} such a file may hold")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(st.st_size + 1)  # read(n) allocates n bytes first; a byte more shows a file that grew
    except OSError as e:
        raise ModelDirError(f"{path}: unreadable ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise ModelDirError(f"{path}: changed size while it was read ({st.st_size:,} bytes, then {len(data):,}); "
                            "refused")
    return data


class _RepeatedKey(ValueError):
    """A JSON object holds a key twice."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a repeated key (readers disagree on which copy wins)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _RepeatedKey(f"{k}: the key appears more than once")
            seen.add(k)
    return data


def _depth(value: object) -> int:
    """How deep containers nest in parsed JSON (1 for a flat object), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES, known: Collection[str] | None = None) -> dict:
    """A JSON object from a model folder, read as untrusted input (:func:`read_file`, UTF-8, bounded depth).

    Args:
        path: The file.
        max_bytes: The most it may hold.
        known: Its keys: a top-level key that misspells one of them is refused (:func:`check_spelling`).

    Raises:
        ModelDirError: The file is unsafe or unreadable, not UTF-8, not JSON, nested deeper than
            :data:`MAX_JSON_DEPTH`, repeats a key, misspells a ``known`` key, or is not an object; the message
            starts with its path.
    """
    raw = read_file(path, max_bytes)
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as e:
        raise ModelDirError(f"{path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    except RecursionError:
        raise ModelDirError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels; refused") from None
    except _RepeatedKey as e:
        raise ModelDirError(f"{path}: {e}") from None
    except ValueError as e:  # JSONDecodeError, a repeated key, an integer of more than 4,300 digits
        raise ModelDirError(f"{path}: unreadable ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise ModelDirError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels; refused")
    if known is not None:
        _spelled(path, data, known)
    return data


def _spelled(path: Path, data: dict, known: Collection[str], where: str = "") -> None:
    """:func:`check_spelling`, its refusal a :class:`ModelDirError` naming ``path``."""
    try:
        check_spelling(data, known, where)
    except ValueError as e:
        raise ModelDirError(f"{path}: {e}") from None


def _reason(error: Exception) -> str:
    """A field error as one line: a ValueError already names its field; a missing key is named here."""
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error) if isinstance(error, ValueError) else f"invalid ({type(error).__name__}: {error})"


def _mismatch(expected: dict[str, tuple], stored: dict[str, tuple]) -> str | None:
    """How a state dict's names, shapes and dtypes differ from the spec's, in a few words, or None.

    Both map a tensor's name to (shape, safetensors dtype).
    """
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        return "; ".join(parts)
    for key, (shape, dtype) in expected.items():
        if stored[key][0] != shape:
            return f"{key} has shape {list(stored[key][0])}, the spec's is {list(shape)}"
        if stored[key][1] != dtype:
            return f"{key} has dtype {stored[key][1]}, the spec's is {dtype}"
    return None


def _read_members(directory: Path) -> int:
    """Members in ``ensemble.json`` (1 without the file)."""
    if not os.path.lexists(directory / ENSEMBLE):
        return 1
    value = read_json(directory / ENSEMBLE, known=ENSEMBLE_KEYS).get("members")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEMBERS:
        raise ModelDirError(f"{directory / ENSEMBLE}: members: expected an integer from 1 to {MAX_MEMBERS}, "
                            f"got {value!r}")
    return value


def build_model(spec: ArchSpec, members: int = 1, grades: int = 2) -> SpecNet | Ensemble:
    """The spec's network for a task of ``grades`` labels, or an :class:`Ensemble` of ``members`` copies (untrained)."""
    if members == 1:
        return build(spec, grades=grades)
    return Ensemble([build(spec, grades=grades) for _ in range(members)])


def machine_memory_bytes() -> int | None:
    """This machine's memory, or the lowest limit on this process's (cgroup v2 or v1, RLIMIT_AS); None if unknown."""
    try:
        found = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    except (ValueError, OSError, AttributeError):
        found = []
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource  # POSIX only

        found.append(resource.getrlimit(resource.RLIMIT_AS)[0])  # RLIM_INFINITY is -1, dropped below
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            found.append(int(Path(limit).read_text().strip()))  # "max" (no limit) is a ValueError
    found = [n for n in found if 0 < n < 1 << 62]
    return min(found) if found else None


def default_memory_cap() -> int:
    """:data:`MEMORY_SHARE` of :func:`machine_memory_bytes` (8 GiB where the machine's memory is unknown)."""
    total = machine_memory_bytes()
    return int(MEMORY_SHARE * total) if total else 8 << 30


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def check_memory(directory: Path, spec: ArchSpec, size: tuple[int, int, int], members: int,
                 max_memory_bytes: int | None = None, gradients: bool = False) -> int:
    """The bytes the folder's network needs for one scan (``space.cost.memory`` times its members), up to a cap.

    Args:
        directory: The model folder, for the message.
        spec: Its spec; ``size`` its input size; ``members`` its ensemble members.
        max_memory_bytes: The cap; None: :func:`default_memory_cap`.
        gradients: Count a backward pass too (a saliency map needs one).

    Raises:
        ModelDirError: The network needs more than the cap (the message says how much, and the flag).
    """
    cap = default_memory_cap() if max_memory_bytes is None else max_memory_bytes
    need = members * memory(spec, size).total(gradients)
    if need > cap:
        share = "" if max_memory_bytes is not None else f", {MEMORY_SHARE:g} of the memory this machine gives it"
        raise ModelDirError(
            f"{directory / SPEC}: levels: the network needs about {_gb(need)} for one scan at "
            f"{'x'.join(map(str, size))} ({PREPROCESS}){' with a saliency map' if gradients else ''}, above the cap "
            f"of {_gb(cap)}{share}; a corrupt or hostile spec, or pass --max-memory-gb to raise the cap")
    return need


def _safetensors_header(path: Path, data: bytes) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's (shape, dtype) from a safetensors file's header, checking that the header describes the file.

    The header is an 8-byte little-endian length, then that much JSON: per tensor its dtype, shape and
    byte range. Every range must hold exactly its shape's bytes, and the ranges must tile the data that
    follows the header, so no tensor reads past the file or overlaps another.

    Raises:
        ModelDirError: The header is missing, claims more than the file holds, is not JSON, or its ranges do
            not tile the data.
    """
    if len(data) < 8:
        raise ModelDirError(f"{path}: header: {len(data)} bytes, too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_SAFETENSORS_HEADER or 8 + n > len(data):
        raise ModelDirError(f"{path}: header: claims {n:,} bytes, the file holds {len(data) - 8:,} after the length "
                            f"(at most {MAX_SAFETENSORS_HEADER:,} allowed): truncated, or not a safetensors file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        raise ModelDirError(f"{path}: header: not JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise ModelDirError(f"{path}: header: expected a JSON object, got {type(header).__name__}")
    header.pop("__metadata__", None)
    sizes = {code: size for code, size in SAFETENSORS_DTYPES.values()}
    found, ranges = {}, []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ModelDirError(f"{path}: {name}: expected dtype, shape and data_offsets, got {str(entry)[:100]}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 8 or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
            raise ModelDirError(f"{path}: {name}: shape: expected non-negative integers, got {str(shape)[:100]}")
        if not isinstance(offsets, list) or len(offsets) != 2 or any(
                isinstance(o, bool) or not isinstance(o, int) for o in offsets):
            raise ModelDirError(f"{path}: {name}: data_offsets: expected two integers, got {str(offsets)[:100]}")
        if not isinstance(dtype, str) or dtype not in sizes:
            raise ModelDirError(f"{path}: {name}: dtype: {str(dtype)[:20]!r}; the spec's tensors are "
                                f"{' or '.join(sizes)}")
        if offsets[1] - offsets[0] != math.prod(shape) * sizes[dtype]:
            raise ModelDirError(f"{path}: {name}: data_offsets: {offsets} do not hold a {dtype} tensor of shape "
                                f"{shape}")
        found[name] = (tuple(shape), dtype)
        ranges.append(offsets)
    end = 0
    for begin, stop in sorted(ranges):
        if begin != end:
            raise ModelDirError(f"{path}: data_offsets: tensors overlap or leave a gap at byte {min(begin, end):,}")
        end = stop
    if 8 + n + end != len(data):
        raise ModelDirError(f"{path}: data_offsets: the tensors end at byte {8 + n + end:,}, the file at "
                            f"{len(data):,}: truncated or padded")
    return found


def _metadata_spec(path: Path, data: bytes) -> ArchSpec | None:
    """The spec that save_model stores in the weights' metadata, or None where the file has none."""
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n].decode("utf-8")).get("__metadata__")
    if not isinstance(meta, dict) or "spec" not in meta:
        return None
    try:
        return ArchSpec.from_json(meta["spec"])
    except (TypeError, ValueError, KeyError, RecursionError) as e:
        raise ModelDirError(f"{path}: __metadata__.spec: not a spec ({_reason(e)})") from None


def _read_state(directory: Path, spec: ArchSpec, members: int, grades: int = 2) -> dict[str, torch.Tensor]:
    """The weights as a state dict, after their header is checked against the spec's names, shapes and dtypes.

    An ordinal model's (``grades`` > 2) also hold its cutpoints, ``head.cuts.first`` and ``head.cuts.gaps``.
    """
    path = directory / WEIGHTS
    with torch.device("meta"):  # the spec's tensors, without allocating them
        expected = {k: (tuple(v.shape), SAFETENSORS_DTYPES[v.dtype][0])
                    for k, v in build_model(spec, members, grades).state_dict().items()}
    payload = sum(math.prod(shape) * dict(SAFETENSORS_DTYPES.values())[dtype] for shape, dtype in expected.values())
    data = read_file(path, 8 + MAX_SAFETENSORS_HEADER + payload)
    mismatch = _mismatch(expected, _safetensors_header(path, data))
    if mismatch:
        raise ModelDirError(f"{path}: does not match {SPEC} ({mismatch})")
    stored = _metadata_spec(path, data)
    if stored is not None and stored != spec:
        raise ModelDirError(f"{path}: does not match {SPEC} (its metadata holds another spec: {stored.describe()})")
    try:
        return load_safetensors(data)
    except SafetensorError as e:
        raise ModelDirError(f"{path}: unreadable ({e})") from None


def load_model(directory: str | Path, max_memory_bytes: int | None = None, gradients: bool = False
               ) -> tuple[SpecNet | Ensemble, PreprocessConfig, ModelInfo]:
    """The exported model (CPU, eval mode, float32), its preprocessing, and what it predicts.

    Everything is checked before a tensor is allocated, as untrusted input (see the module docstring):
    each file read is a regular file inside the folder under a size cap; each field of ``preprocess.json``
    (format version, task, categories and classes consistent, the HU window, an input size of at most
    :data:`MAX_INPUT_VOXELS`, a threshold in (0, 1)); the spec, within ``space.spec``'s limits and able to
    run at that size; the member count of ``ensemble.json`` if there is one; the memory the network needs
    for one scan against ``max_memory_bytes``; and that the weights' header lists the spec's names, shapes
    and dtypes (each member's; an ordinal task's model holds its cutpoints too).

    An ordinal task's model (``info.ordinal``) is built with ``grades=K`` and outputs (B, K-1) cumulative
    logits of "grade >= k"; a binary one, (B,) logits.

    What the folder left to a default is not refused but said: ``info.warnings`` holds one line each (a
    ``preprocess.json`` without a threshold predicts at 0.5), starting with the file's path.

    Args:
        directory: The model folder.
        max_memory_bytes: The most memory the network may need for one scan (None: half this machine's).
        gradients: The caller will run a backward pass (a saliency map), so count its memory too.

    Raises:
        ModelDirError: The folder or one of its files is missing or invalid, or the weights do not fit
            the spec; the message names the file and the field.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: no such folder")
    missing = [name for name in REQUIRED if not os.path.lexists(directory / name)]
    if missing:
        raise ModelDirError(f"{directory}: missing {', '.join(missing)} (not a folder written by "
                            f"python -m search.export)")
    try:
        spec = ArchSpec.from_dict(read_json(directory / SPEC))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ModelDirError):
            raise
        raise ModelDirError(f"{directory / SPEC}: {_reason(e)}") from None
    try:
        info = ModelInfo.from_dict(read_json(directory / PREPROCESS))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, ModelDirError):
            raise
        raise ModelDirError(f"{directory / PREPROCESS}: {_reason(e)}") from None
    info = replace(info, warnings=tuple(f"{directory / PREPROCESS}: {w}" for w in info.warnings))
    try:
        check_input_size(spec, info.preprocess.size)
    except SpecInputError as e:
        raise ModelDirError(f"{directory / SPEC}: cannot run at its input size "
                            f"{'x'.join(map(str, info.preprocess.size))} ({PREPROCESS}): {e}") from None
    members = _read_members(directory)
    check_memory(directory, spec, info.preprocess.size, members, max_memory_bytes, gradients)
    state = _read_state(directory, spec, members, info.n_grades)
    model = build_model(spec, members, info.n_grades)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ModelDirError(f"{directory / WEIGHTS}: does not match {SPEC} ({first})") from None
    return model.eval(), info.preprocess, info


@dataclass(frozen=True)
class OptionalFiles:
    """What a model folder's optional files say, or why they say nothing.

    Attributes:
        trained_on_phantoms: ``metrics.json``'s ``data.phantoms``; None when the file is absent or unreadable.
        notes: One line per optional file that is absent or unreadable, saying what that leaves unknown.
    """

    trained_on_phantoms: bool | None
    notes: tuple[str, ...]


def read_optional(directory: str | Path) -> OptionalFiles:
    """Read ``metrics.json`` and check ``MODEL_CARD.md`` as untrusted input; never raises for their sake."""
    directory = Path(directory)
    notes, phantoms = [], None
    path = directory / METRICS
    if not os.path.lexists(path):
        notes.append(f"note: no {METRICS} in {directory}: its training data and test figures are unknown; "
                     "python -m search.export writes one")
    else:
        try:
            data = read_json(path, MAX_METRICS_BYTES, known=METRICS_KEYS).get("data")
            if isinstance(data, dict):
                _spelled(path, data, METRICS_DATA_KEYS, "data.")
            phantoms = data.get("phantoms") if isinstance(data, dict) else None
            if not isinstance(phantoms, bool):
                raise ModelDirError(f"{path}: data.phantoms: expected true or false, got {str(phantoms)[:40]}")
        except ModelDirError as e:
            phantoms = None
            notes.append(f"warning: {e}: so whether this model was trained on the synthetic phantoms is unknown; "
                         "if it was, its probabilities on real scans mean nothing")
    card = directory / CARD
    if not os.path.lexists(card):
        notes.append(f"note: no {CARD} in {directory}: the model card (intended use, test figures) is missing")
    else:
        try:
            read_file(card, MAX_CARD_BYTES).decode("utf-8")
        except ModelDirError as e:
            notes.append(f"note: {e}: the model card is unreadable")
        except UnicodeDecodeError:
            notes.append(f"note: {card}: not UTF-8 text: the model card is unreadable")
    return OptionalFiles(phantoms, tuple(notes))


def fixed_input(size: tuple[int, int, int], n: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded (n, 1, D, H, W) float32 input in [0, 1], for comparing a model with its exported copies."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, *size), generator=generator)


@torch.inference_mode()
def logits(model: torch.nn.Module, volumes: torch.Tensor) -> np.ndarray:
    """Float32 logits of ``model`` in eval mode on the CPU: (N,), or (N, K-1) for an ordinal model."""
    model = model.to("cpu").eval()
    return model(volumes.float()).numpy()


def export_onnx(model: torch.nn.Module, size: tuple[int, int, int], path: str | Path) -> None:
    """Write ``model`` as one self-contained ONNX file with a dynamic batch axis.

    ONNX rather than TorchScript: both ``torch.jit`` and the TorchScript-based ONNX exporter are
    deprecated in torch 2.9+, and an ONNX file runs without torch or this package (onnxruntime,
    OpenVINO, TensorRT, browsers). This uses torch's current ``torch.export``-based exporter
    (``dynamo=True``), which needs ``onnxscript``. Its console chatter goes to a buffer, and is
    shown only if the export fails.

    Raises:
        RuntimeError: The export failed; the message holds the exporter's last lines.
    """
    model = model.to("cpu").eval()
    example = fixed_input(size)  # batch 2, so the exporter does not specialise the batch axis to 1
    chatter = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except ImportError as e:
        raise RuntimeError(f"ONNX export needs onnxscript ({e}); pip install onnxscript") from None
    except Exception as e:  # the exporter raises many types; any of them means no ONNX file
        tail = " | ".join(chatter.getvalue().strip().splitlines()[-3:])
        raise RuntimeError(f"ONNX export failed: {type(e).__name__}: {str(e)[:300]} {tail}".strip()) from e
    finally:
        quiet.setLevel(level)
    _strip_stack_traces(path)


def _strip_stack_traces(path: str | Path) -> None:
    """Drop the Python stack trace the exporter stores on every node: it holds this machine's absolute paths."""
    import onnx  # installed with onnxscript, which the export needs

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        kept = [prop for prop in node.metadata_props if prop.key != ONNX_STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path))


def onnx_logits(path: str | Path, volumes: torch.Tensor) -> np.ndarray | None:
    """Logits of an ONNX file under onnxruntime on the CPU ((N,) or (N, K-1)), or None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: volumes.float().numpy()})[0]
